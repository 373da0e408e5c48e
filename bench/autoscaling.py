"""Benchmark: a job whose middle step is 10x slower, autoscaled against fixed splits.

    .venv/bin/python bench/autoscaling.py [--tasks 120] [--slots 2] [--max-workers 4] [--runs 2]

The job is `FanOut(--tasks) -> Sleep(0.05 s) -> Sleep(0.5 s) -> Sleep(0.05 s)` (four steps,
unfused; the stages are bench/fairness.py's, sent by value), run on three embedded services on this
machine (real NATS, Ray and worker processes), each a fresh one, `--runs` times:

- **autoscaled**: `--min-workers 1 --max-workers M` (M = `--max-workers`, `--slots` each): the
  pool starts at one worker and the coordinator's policy grows it; the time includes the new
  workers' start-up;
- **even split**: M workers from the start, each of the job's four steps an equal part of the
  M x slots, fixed for the job's life (`GRISTMILL_STEP_SPLIT=even`: the static split one
  deployment per stage gives; 4 workers of 2 slots make it 2 slots a step);
- **shared, fixed**: M workers from the start, every step on every slot (the work-conserving
  default, without autoscaling): the best a fixed pool of that maximum can do.

Each time is submit -> final state, as the client sees it. Reported: the median of each, the
ratio autoscaled / even split (the issue's "faster than a fixed even split": below 1), and the
ratio autoscaled / shared (what growing from one worker costs).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fairness import FanOut, Sleep  # noqa: E402  (the same stages, by value from there)

from gristmill.bus import JobOptions, JobSpec  # noqa: E402
from gristmill.client import ServiceClient, new_request_id  # noqa: E402
from gristmill.embedded import EmbeddedService  # noqa: E402
from gristmill.pipeline.portable import portable_spec  # noqa: E402


async def run_job(service: EmbeddedService, tasks: int) -> float:
    """Submit the slow-middle job and wait for it; its wall time."""
    client = await ServiceClient.connect(service.url)
    try:
        stages = [FanOut(tasks), Sleep(0.05), Sleep(0.5), Sleep(0.05)]
        spec, blobs = portable_spec("slow-middle", stages)
        store = await client.store()
        for sha, blob in blobs.items():
            store.put_code(client.team, sha, blob.to_bytes())
        job = JobSpec(
            team=client.team,
            request_id=new_request_id(),
            pipeline=spec,
            code=sorted(blobs),
            options=JobOptions(fuse=False),
        )
        started = time.perf_counter()
        name = await client.submit(job)
        state = await client.wait(name, timeout_s=600)
        took = time.perf_counter() - started
        if state.state != "completed" or state.steps[-1].done != tasks:
            raise RuntimeError(f"job {name} ended as {state}")
        return took
    finally:
        await client.close()


def one(setting: str, args: argparse.Namespace, base: Path) -> float:
    """One fresh service of `setting`, one job."""
    options: dict[str, object] = {"slots": args.slots}
    if setting == "autoscaled":
        options["bounds"] = {"cpu": (1, args.max_workers)}
    else:
        options["workers"] = args.max_workers
    if setting == "even split":
        options["child_env"] = {"GRISTMILL_STEP_SPLIT": "even"}
    state = Path(tempfile.mkdtemp(dir=base))
    with EmbeddedService(state, **options) as service:  # type: ignore[arg-type]
        return asyncio.run(run_job(service, args.tasks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=120)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--max-workers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    settings = ("autoscaled", "even split", "shared, fixed")
    times: dict[str, list[float]] = {s: [] for s in settings}
    with tempfile.TemporaryDirectory() as base:
        for run in range(args.runs):
            for setting in settings:
                took = one(setting, args, Path(base))
                times[setting].append(took)
                print(f"run {run + 1}: {setting:<14} {took:6.1f} s", flush=True)
    median = {s: statistics.median(t) for s, t in times.items()}
    print()
    print(f"{'setting':<14} {'median s':>9}  runs")
    for setting in settings:
        runs = ", ".join(f"{t:.1f}" for t in times[setting])
        print(f"{setting:<14} {median[setting]:>9.1f}  {runs}")
    print(f"autoscaled / even split: {median['autoscaled'] / median['even split']:.2f}")
    print(f"autoscaled / shared, fixed: {median['autoscaled'] / median['shared, fixed']:.2f}")


if __name__ == "__main__":
    main()

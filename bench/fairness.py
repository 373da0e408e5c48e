"""Benchmark: how the service shares worker slots between two teams, on this machine.

    .venv/bin/python bench/fairness.py [--slots 4] [--task-s 0.25] [--ramp-s 40] [--window-s 60]

Two embedded services (NATS, planner, coordinator, one CPU worker of `--slots` slots on one
local Ray), teams alpha and beta, both trusted; every job is `FanOut(n) -> Sleep(--task-s)`
(n tasks of that many seconds each, by value from this file):

1. small job next to a big one, equal weights: on one service, beta's 20-task job alone, three
   times (after the same warm-up jobs of each team as below, so its actors exist); on a fresh
   one, the warm-up jobs, then alpha's 400-task job and, a moment later (once alpha's tasks
   run), beta's 20-task job, three times one after the other while alpha's job runs. Each time
   is submit -> final state as beta's client sees it. A single time varies by up to two of
   alpha's tasks (beta's fan-out, then its first child, each waits for one of alpha's runs to
   end: slots are not pre-empted), so the figure is the median of three, with the worst beside
   it. Target (the teams issue): contended <= 1.5x idle.
2. weights 3:1: both teams submit a job far longer than the window at once; after a
   `--ramp-s` ramp (the fan-outs, the actors' starts, and the fair share paying back whatever
   team took the first free slots: a few of its half-lives), each team's slot-seconds over
   `--window-s` seconds, from its runs' `slot` spans (the time each run held a slot, cut to the
   window). Target: alpha's / beta's within 10% of 3.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

HERE = Path(__file__).resolve().parent
RUNS = 3  # beta's small job, idle and contended: the median of these
sys.path.insert(0, str(HERE))

from gristmill import DocumentBatch, EmptyTask, ProcessingStage  # noqa: E402
from gristmill.bus import JobSpec  # noqa: E402
from gristmill.client import ServiceClient, new_request_id  # noqa: E402
from gristmill.embedded import EmbeddedService  # noqa: E402
from gristmill.pipeline.portable import portable_spec  # noqa: E402
from gristmill.teams import TeamPolicy, TeamsConfig  # noqa: E402


class FanOut(ProcessingStage[EmptyTask, DocumentBatch]):
    """`count` one-row tasks."""

    def __init__(self, count: int = 10):
        self.count = count

    def process(self, task: EmptyTask) -> list[DocumentBatch]:
        return [DocumentBatch(data=pa.table({"n": [i]})) for i in range(self.count)]


class Sleep(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Holds its slot `seconds` per task (work that is not this machine's CPU)."""

    def __init__(self, seconds: float = 0.25):
        self.seconds = seconds

    def process(self, task: DocumentBatch) -> DocumentBatch:
        time.sleep(self.seconds)  # simulated work, not synchronisation
        return task


class Team:
    """One team's client and a maker of its jobs."""

    def __init__(self, client: ServiceClient, task_s: float):
        self.client = client
        self.task_s = task_s

    async def submit(self, tasks: int) -> str:
        spec, blobs = portable_spec(f"fair-{tasks}", [FanOut(tasks), Sleep(self.task_s)])
        store = await self.client.store()
        for sha, blob in blobs.items():
            store.put_code(self.client.team, sha, blob.to_bytes())
        job = JobSpec(
            team=self.client.team, request_id=new_request_id(), pipeline=spec, code=sorted(blobs)
        )
        return await self.client.submit(job)

    async def run(self, tasks: int) -> float:
        started = time.perf_counter()
        job = await self.submit(tasks)
        state = await self.client.wait(job)
        if state.state != "completed" or state.tasks_done != tasks + 1:
            raise RuntimeError(f"job {job} of team {self.client.team} ended as {state}")
        return time.perf_counter() - started


async def _teams(service: EmbeddedService, task_s: float) -> dict[str, Team]:
    return {
        name: Team(
            await ServiceClient.connect(service.url, credentials=service.credentials(name)),
            task_s,
        )
        for name in ("alpha", "beta")
    }


def _service(state: Path, weights: dict[str, float], slots: int) -> EmbeddedService:
    config = TeamsConfig(
        teams={name: TeamPolicy(weight=w) for name, w in weights.items()},
        trusted_teams=tuple(weights),
    )
    return EmbeddedService(state, workers=1, slots=slots, teams_config=config)


async def _warm_up(teams: dict[str, Team], slots: int) -> None:
    for team in teams.values():  # each team's actors start
        await team.run(slots)
        await team.run(20)


async def small_alone(service: EmbeddedService, args: argparse.Namespace) -> list[float]:
    teams = await _teams(service, args.task_s)
    try:
        await _warm_up(teams, args.slots)
        return [await teams["beta"].run(20) for _ in range(RUNS)]
    finally:
        for team in teams.values():
            await team.client.close()


async def small_next_to_big(service: EmbeddedService, args: argparse.Namespace) -> list[float]:
    teams = await _teams(service, args.task_s)
    alpha, beta = teams["alpha"], teams["beta"]
    try:
        await _warm_up(teams, args.slots)
        big = await alpha.submit(400)
        while True:  # "a moment later": alpha's tasks hold the slots
            [state] = await alpha.client.status(big)
            if len(state.steps) > 1 and state.steps[1].done >= args.slots:
                break
            await asyncio.sleep(0.05)
        contended = [await beta.run(20) for _ in range(RUNS)]
        [state] = await alpha.client.status(big)
        if state.state != "running":
            raise RuntimeError(f"alpha's job ended before beta's runs did ({state.state})")
        await alpha.client.wait(big)
        return contended
    finally:
        for team in teams.values():
            await team.client.close()


async def weighted_shares(service: EmbeddedService, args: argparse.Namespace) -> dict[str, Any]:
    teams = await _teams(service, args.task_s)
    try:
        await _warm_up(teams, args.slots)
        enough = int(2 * args.slots * (args.ramp_s + args.window_s) / args.task_s)
        jobs = {name: await team.submit(enough) for name, team in teams.items()}
        start = time.time() + args.ramp_s
        end = start + args.window_s
        await asyncio.sleep(end - time.time() + 3.0)  # the window, and its spans exported
        held: dict[str, float] = {}
        for name, team in teams.items():
            spans = (await team.client.trace(jobs[name]))["spans"]
            held[name] = sum(
                max(0.0, min(s["end_ns"] / 1e9, end) - max(s["start_ns"] / 1e9, start))
                for s in spans
                if s["name"] == "slot" and s.get("end_ns")
            )
        total = args.slots * args.window_s
        return {
            "alpha_slot_s": held["alpha"],
            "beta_slot_s": held["beta"],
            "busy": (held["alpha"] + held["beta"]) / total,
            "ratio": held["alpha"] / held["beta"],
        }
    finally:
        for team in teams.values():
            await team.client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--task-s", type=float, default=0.25)
    parser.add_argument("--ramp-s", type=float, default=40.0)
    parser.add_argument("--window-s", type=float, default=60.0)
    args = parser.parse_args()
    results: dict[str, Any] = {"slots": args.slots, "task_s": args.task_s}
    with tempfile.TemporaryDirectory(prefix="gm-fair-") as state:
        with _service(Path(state) / "idle", {"alpha": 1, "beta": 1}, args.slots) as service:
            idle = asyncio.run(small_alone(service, args))
        with _service(Path(state) / "equal", {"alpha": 1, "beta": 1}, args.slots) as service:
            contended = asyncio.run(small_next_to_big(service, args))
        results["small_next_to_big"] = {
            "idle_s": statistics.median(idle),
            "contended_s": statistics.median(contended),
            "ratio": statistics.median(contended) / statistics.median(idle),
            "worst_ratio": max(contended) / statistics.median(idle),
            "idle_runs_s": idle,
            "contended_runs_s": contended,
        }
        print(json.dumps(results["small_next_to_big"]), flush=True)
        with _service(Path(state) / "weighted", {"alpha": 3, "beta": 1}, args.slots) as service:
            results["weights_3_to_1"] = asyncio.run(weighted_shares(service, args))
    results["targets_met"] = {
        "small_job_within_1.5x": results["small_next_to_big"]["ratio"] <= 1.5,
        "shares_within_10pct_of_3": abs(results["weights_3_to_1"]["ratio"] / 3 - 1) <= 0.10,
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

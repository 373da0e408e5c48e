"""Benchmark: the gristmill service against LocalExecutor, on this machine.

    .venv/bin/python bench/service.py [--docs 100000] [--files 16] [--noop-tasks 5000]
                                      [--latency-jobs 200] [--workers 2] [--slots 1]

With the embedded service already up (NATS, planner, coordinator, `--workers` workers on one
local Ray), in this order:

1. text pipeline: `bench/text_quality.py`'s filters (JsonlReader -> 3 ScoreFilters ->
   ParquetWriter) over its corpus, best of two runs each on LocalExecutor and on the service
   (after one warm-up run on the service, so its actors exist, as on a service that is up);
2. dispatch rate: a job whose first step fans out into `--noop-tasks` tasks of a no-op stage;
   manifests/s = tasks announced after the first `TasksDone` / (first -> last `TasksDone`), and
   end to end (submit -> done); run twice: "cold" (the pipeline's actors start during the run,
   and the no-op step was never measured, so its manifests hold 8 tasks) and "warm" (they exist,
   and manifests hold up to 64 tasks);
3. latency: `--latency-jobs` one-task jobs submitted one after the other on the idle service,
   submit -> final state as the client sees it; p50 and p99;
4. memory: the largest PSS (proportional set size) of every process the service runs — NATS,
   planner, coordinator, workers and all of Ray's — sampled each second during a run of (1).

Targets (issue 9): (1) wall <= 0.8x LocalExecutor's; (2) >= 5,000 manifests/s; (3) p99 < 100 ms
(issue 5); (4) <= 1.5 GB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import text_quality  # noqa: E402
from executors import TreeMemory  # noqa: E402

from gristmill import DocumentBatch, EmptyTask, LocalExecutor, Pipeline, ProcessingStage  # noqa: E402
from gristmill.bus import JobSpec  # noqa: E402
from gristmill.client import ServiceClient, new_request_id  # noqa: E402
from gristmill.embedded import EmbeddedService  # noqa: E402
from gristmill.executors.service import ServiceExecutor  # noqa: E402
from gristmill.pipeline.portable import portable_spec  # noqa: E402
from gristmill.stages.text.io import JsonlReader, ParquetWriter  # noqa: E402


class FanOut(ProcessingStage[EmptyTask, DocumentBatch]):
    """`count` one-row tasks."""

    def __init__(self, count: int = 1000):
        self.count = count

    def process(self, task: EmptyTask) -> list[DocumentBatch]:
        return [DocumentBatch(data=pa.table({"n": [i]})) for i in range(self.count)]


class NoOp(ProcessingStage[Any, Any]):
    """Returns its task."""

    def process(self, task: Any) -> Any:
        return task


def _text_pipeline(corpus: Path, out: Path) -> Pipeline:
    shutil.rmtree(out, ignore_errors=True)
    stages = [JsonlReader(str(corpus)), *text_quality._filters(), ParquetWriter(str(out))]
    return Pipeline("bench-service", stages)


def _timed(pipeline: Pipeline, executor: Any) -> float:
    started = time.perf_counter()
    pipeline.run(executor)
    return time.perf_counter() - started


def text_run(service: EmbeddedService, corpus: Path, out: Path) -> dict[str, float]:
    local = min(_timed(_text_pipeline(corpus, out / "local"), LocalExecutor()) for _ in range(2))
    _timed(_text_pipeline(corpus, out / "warm"), ServiceExecutor(service.url))
    remote = min(
        _timed(_text_pipeline(corpus, out / "service"), ServiceExecutor(service.url))
        for _ in range(2)
    )
    # The driver (this process) also runs LocalExecutor's rounds: only the service is counted.
    with TreeMemory(include_root=False) as memory:
        _timed(_text_pipeline(corpus, out / "memory"), ServiceExecutor(service.url))
    return {"local_s": local, "service_s": remote, "peak_mb": memory.peak / 1e6}


async def _submitter(client: ServiceClient, name: str, stages: list[Any]) -> Callable[[], JobSpec]:
    """Store the stages' code once; returns a maker of fresh submissions of them."""
    spec, blobs = portable_spec(name, stages)
    store = await client.store()
    for sha, blob in blobs.items():
        store.put_code(client.team, sha, blob.to_bytes())
    return lambda: JobSpec(
        team=client.team, request_id=new_request_id(), pipeline=spec, code=sorted(blobs)
    )


async def dispatch(service: EmbeddedService, tasks: int) -> dict[str, float]:
    client = await ServiceClient.connect(service.url)
    try:
        submit = await _submitter(client, "noop", [FanOut(tasks), NoOp()])
        started = time.perf_counter()
        job = await client.submit(submit())
        state = await client.wait(job)
        wall = time.perf_counter() - started
        if state.state != "completed" or state.tasks_done != tasks + 1:
            raise RuntimeError(f"the dispatch job did not complete as expected: {state}")
        done = [r for d in await client.done_events(job) if d.step == 1 for r in d.results]
        stamps = await _done_times(client, job)
        noop_span = stamps[-1][0] - stamps[0][0]
        return {
            "tasks": len(done),
            "messages": len(stamps),
            "end_to_end_s": wall,
            "per_s_end_to_end": len(done) / wall,
            "noop_span_s": noop_span,
            # the tasks announced after the first announcement, over the time they took
            "per_s_noop_step": (len(done) - stamps[0][1]) / noop_span,
        }
    finally:
        await client.close()


async def _done_times(client: ServiceClient, job: str) -> list[tuple[float, int]]:
    """When each no-op manifest's TasksDone reached the events stream (server timestamps), and
    how many tasks it announced, in stream order (a re-announcement is left out)."""
    from gristmill.bus.client import replay
    from gristmill.bus.subjects import event_subject

    stamps = []
    seen = set()
    async for msg in replay(client.js, event_subject(client.team, job, "task_done")):
        done = json.loads(msg.data)
        if done["step"] == 1 and done["key"] not in seen:
            seen.add(done["key"])
            stamps.append((msg.metadata.timestamp.timestamp(), len(done["results"])))
    return stamps


async def latency(service: EmbeddedService, jobs: int) -> dict[str, float]:
    client = await ServiceClient.connect(service.url)
    try:
        submit = await _submitter(client, "one", [NoOp()])
        seconds = []
        for index in range(jobs + 5):
            started = time.perf_counter()
            job = await client.submit(submit())
            state = await client.wait(job)
            elapsed = time.perf_counter() - started
            if state.state != "completed":
                raise RuntimeError(f"a latency job did not complete: {state}")
            if index >= 5:  # the first jobs start the actor
                seconds.append(elapsed)
        seconds.sort()
        return {
            "jobs": jobs,
            "p50_ms": 1000 * statistics.median(seconds),
            "p99_ms": 1000 * seconds[max(0, round(0.99 * len(seconds)) - 1)],
            "max_ms": 1000 * seconds[-1],
        }
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--noop-tasks", type=int, default=5000)
    parser.add_argument("--latency-jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slots", type=int, default=1)
    parser.add_argument("--only", choices=("text", "dispatch", "latency"), help="one part only")
    args = parser.parse_args()

    parts = [args.only] if args.only else ["text", "dispatch", "latency"]
    corpus = text_quality.generate(args.docs, args.files) if "text" in parts else None
    cache = text_quality.CACHE
    shutil.rmtree(cache / "service-state", ignore_errors=True)
    out = cache / "service-out"
    results: dict[str, Any] = {}
    started = time.perf_counter()
    with EmbeddedService(
        cache / "service-state",
        workers=args.workers,
        slots=args.slots,
        output_root=str(cache),
        input_roots=(str(cache),),
    ) as service:
        results["start_s"] = time.perf_counter() - started
        if corpus is not None:
            results["text"] = text_run(service, corpus, out)
            results["text"]["ratio"] = results["text"]["service_s"] / results["text"]["local_s"]
            print(json.dumps(results["text"]), flush=True)
        if "dispatch" in parts:
            for kind in ("cold", "warm"):
                results[f"dispatch_{kind}"] = asyncio.run(dispatch(service, args.noop_tasks))
                print(json.dumps(results[f"dispatch_{kind}"]), flush=True)
        if "latency" in parts:
            results["latency"] = asyncio.run(latency(service, args.latency_jobs))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Benchmarks of the SDK core: the task codec and LocalExecutor's per-call overhead.

    .venv/bin/python bench/core.py            # prints a Markdown table for bench/RESULTS.md

The codec matters because the service moves every task through it; the per-call overhead
bounds how small a task can be before bookkeeping (ids, lineage, perf stats) dominates.
"""

from __future__ import annotations

import platform
import resource
import time
from collections.abc import Callable

import pyarrow as pa

from gristmill import DocumentBatch, LocalExecutor, Pipeline, ProcessingStage, Task


class PassThrough(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Does nothing, so what is measured is the executor's own work per call."""

    def process(self, task: DocumentBatch) -> DocumentBatch:
        return task


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    """The fastest of `repeats` timings of `fn()`, in seconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def bench_codec(docs: int = 20_000, words: int = 300) -> list[tuple[str, str]]:
    text = " ".join(["curation"] * words)
    table = pa.table({"id": [f"doc-{i}" for i in range(docs)], "text": [text] * docs})
    task = DocumentBatch(task_id="bench", data=table)
    payload = task.to_bytes()
    megabytes = len(payload) / 1e6
    size = f"{megabytes:.0f} MB"
    encode = best_of(5, task.to_bytes)
    decode = best_of(5, lambda: Task.from_bytes(payload))
    frame_task = DocumentBatch(task_id="bench", data=table.to_pandas())
    encode_pandas = best_of(3, frame_task.to_bytes)
    return [
        (f"encode DocumentBatch (Arrow, {size})", f"{megabytes / encode:,.0f} MB/s"),
        (f"decode DocumentBatch (Arrow, {size})", f"{decode * 1e3:.2f} ms (zero-copy view)"),
        (f"encode DocumentBatch (pandas, {size})", f"{megabytes / encode_pandas:,.0f} MB/s"),
    ]


def bench_overhead(tasks: int = 20_000, stages: int = 4) -> list[tuple[str, str]]:
    table = pa.table({"text": ["x"]})

    def initial() -> list[Task[object]]:
        return [DocumentBatch(task_id=f"t{i}", data=table) for i in range(tasks)]

    stage_list = [PassThrough().with_(name=f"s{i}") for i in range(stages)]
    calls = tasks * stages
    bare_tasks = initial()
    bare = best_of(3, lambda: [s.process(t) for t in bare_tasks for s in stage_list])
    rows = [("bare `process` call", f"{bare / calls * 1e6:.2f} µs per task per stage")]
    pipeline = Pipeline("overhead", stage_list)
    for fuse in (False, True):
        seconds = best_of(3, lambda f=fuse: pipeline.run(LocalExecutor(), initial(), fuse=f))
        label = "LocalExecutor, fused" if fuse else "LocalExecutor, unfused"
        rows.append((label, f"{seconds / calls * 1e6:.2f} µs per task per stage"))
    return rows


def main() -> None:
    rows = bench_codec() + bench_overhead()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {platform.machine()}, Python {platform.python_version()}, "
          f"pyarrow {pa.__version__}; peak RSS {peak_mb:.0f} MB\n")  # fmt: skip
    print("| measurement | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()

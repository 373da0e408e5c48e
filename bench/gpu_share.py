"""GPU check for a lent GPU machine: fractional-GPU stages on both Ray executors.

    python bench/gpu_share.py        # prints a Markdown table for bench/RESULTS.md

Runs a stage asking for `Resources(gpus=0.25)` over 64 tasks on XennaExecutor (streaming) and
RayDataExecutor, and reports per executor: wall time, how many processes (actors) did the work,
and which GPU(s) they saw. Four actors sharing one GPU is the expected picture. Run it with
`make test-gpu` for the assertions; this script is for the figures.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from gristmill import DocumentBatch, Pipeline, ProcessingStage, Resources
from gristmill.executors.ray_cluster import ray_session
from gristmill.executors.ray_data import RayDataExecutor
from gristmill.executors.xenna import XennaExecutor

from ray_stages import MakeBatches


class QuarterGpuWork(ProcessingStage[DocumentBatch, DocumentBatch]):
    """A quarter of a GPU each; notes its process and the GPU it sees; works ~50 ms a task."""

    resources = Resources(cpus=0.5, gpus=0.25)

    def process(self, task: DocumentBatch) -> DocumentBatch:
        time.sleep(0.05)  # stands in for a model call: the point is placement, not compute
        table = task.to_pyarrow()
        rows = table.num_rows
        table = table.append_column("pid", pa.array([os.getpid()] * rows))
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        return DocumentBatch(data=table.append_column("gpu", pa.array([gpu] * rows)))


def main() -> None:
    pipeline = Pipeline("gpu-share", [MakeBatches(num_tasks=64, rows=4), QuarterGpuWork()])
    print("| executor | wall s | actors | GPUs seen |\n| --- | ---: | ---: | --- |")
    with ray_session(dashboard=True) as session:
        import ray

        gpus = ray.cluster_resources().get("GPU", 0)
        for name, executor in (
            ("xenna-streaming", XennaExecutor()),
            ("ray-data", RayDataExecutor()),
        ):
            started = time.perf_counter()
            outputs = pipeline.run(executor)
            wall = time.perf_counter() - started
            pids = {p for t in outputs for p in t.to_pyarrow()["pid"].to_pylist()}
            seen = sorted({g for t in outputs for g in t.to_pyarrow()["gpu"].to_pylist()})
            print(f"| {name} | {wall:.1f} | {len(pids)} | {', '.join(seen) or '-'} |")
    print(f"\ncluster GPUs: {gpus:g}; Ray start {session.start_seconds:.1f} s")


if __name__ == "__main__":
    main()

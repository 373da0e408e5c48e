"""Stages the executor integration tests run on Ray (importable by Ray's worker processes)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from gristmill import DocumentBatch, EmptyTask, ProcessingStage, Resources
from gristmill.stages import WorkerMetadata


class MakeBatches(ProcessingStage[EmptyTask, DocumentBatch]):
    """`num_tasks` batches of `rows` numbered documents."""

    def __init__(self, num_tasks: int = 8, rows: int = 5):
        self.num_tasks = num_tasks
        self.rows = rows

    def process(self, task: EmptyTask) -> list[DocumentBatch]:
        return [
            DocumentBatch(data=pa.table({"n": list(range(t * self.rows, (t + 1) * self.rows))}))
            for t in range(self.num_tasks)
        ]


class AddOne(ProcessingStage[DocumentBatch, DocumentBatch]):
    """n -> n + 1 (a cheap map stage; many of them make a long pipeline)."""

    def process(self, task: DocumentBatch) -> DocumentBatch:
        table = task.to_pyarrow()
        column = pa.array([v + 1 for v in table["n"].to_pylist()])
        return DocumentBatch(data=table.set_column(0, "n", column))


class CountingSetup(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Appends a line to `log_path` in every setup(), and tags rows with its process and the
    number of setups that process had done when it processed them."""

    batch_size = 2

    def __init__(self, log_path: str):
        self.log_path = log_path
        self.setups = 0

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        self.setups += 1
        with open(self.log_path, "a") as log:
            log.write(f"{os.getpid()}\n")

    def process(self, task: DocumentBatch) -> DocumentBatch:
        return self.process_batch([task])[0]

    def process_batch(self, tasks: list[DocumentBatch]) -> list[DocumentBatch]:
        out = []
        for task in tasks:
            table = task.to_pyarrow()
            rows = table.num_rows
            table = table.append_column("pid", pa.array([os.getpid()] * rows))
            out.append(
                DocumentBatch(data=table.append_column("setups", pa.array([self.setups] * rows)))
            )
        return out


class FailsOnce(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Fails the first attempt at each task (remembered in `marker_dir`), then passes it on."""

    def __init__(self, marker_dir: str):
        self.marker_dir = marker_dir

    def process(self, task: DocumentBatch) -> DocumentBatch:
        marker = Path(self.marker_dir) / task.task_id
        if not marker.exists():
            marker.touch()
            raise RuntimeError(f"first attempt at {task.task_id}")
        return task


class AlwaysFails(ProcessingStage[DocumentBatch, DocumentBatch]):
    def process(self, task: DocumentBatch) -> DocumentBatch:
        raise ValueError("this stage never works")


class QuarterGpu(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Asks for a quarter of a GPU; records which GPU its process saw."""

    resources = Resources(cpus=0.5, gpus=0.25)

    def process(self, task: DocumentBatch) -> DocumentBatch:
        table = task.to_pyarrow()
        seen = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        return DocumentBatch(data=table.append_column("gpu", pa.array([seen] * table.num_rows)))


class FixedId(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Names every output 'same', whatever its input: two inputs make one id."""

    def process(self, task: DocumentBatch) -> DocumentBatch:
        return DocumentBatch(task_id="same", data=task.data)

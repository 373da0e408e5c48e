"""Stages the service tests submit. None is installed: the service gets them by value."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from gristmill import DocumentBatch, EmptyTask, ProcessingStage
from gristmill.stages import WorkerMetadata


class RecordCalls(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Appends `<task_id>` to `log_path` for every task it processes (how often it ran)."""

    def __init__(self, log_path: str):
        self.log_path = log_path

    def process(self, task: DocumentBatch) -> DocumentBatch:
        with open(self.log_path, "a") as log:
            log.write(task.task_id + "\n")
        return task


class PoisonOn(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Raises for a batch holding a document whose text contains `marker`."""

    def __init__(self, marker: str = "POISON"):
        self.marker = marker

    def inputs(self) -> tuple[list[str], list[str]]:
        return [], ["text"]

    def process(self, task: DocumentBatch) -> DocumentBatch:
        texts = task.to_pyarrow()["text"]
        if pc.any(pc.match_substring(texts, self.marker)).as_py():
            raise ValueError(f"poisoned batch {task.task_id}")
        return task


class StallOnce(ProcessingStage[DocumentBatch, DocumentBatch]):
    """On its first call for a batch holding `doc_id`, says which worker runs it (writes the
    worker id to the FIFO `started`) and then blocks forever (opening the FIFO `never` for
    reading, which nobody writes). Every later call for it (a redelivery) passes through:
    `attempted` records the first."""

    def __init__(self, doc_id: str, fifo_dir: str):
        self.doc_id = doc_id
        self.fifo_dir = fifo_dir
        self.worker = ""

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        self.worker = worker_metadata.worker_id if worker_metadata else ""

    def process(self, task: DocumentBatch) -> DocumentBatch:
        ids = task.to_pyarrow()["id"].to_pylist()
        if self.doc_id not in ids:
            return task
        directory = Path(self.fifo_dir)
        try:
            (directory / "attempted").open("x").close()
        except FileExistsError:
            return task
        with (directory / "started").open("w") as started:
            started.write(self.worker + "\n")
        with (directory / "never").open():  # blocks: no writer ever comes
            pass
        raise AssertionError("unreachable")


class GateOn(ProcessingStage[DocumentBatch, DocumentBatch]):
    """For a batch holding `doc_id`: writes the worker id to the FIFO `started`, then waits
    until something is written to the FIFO `release` (the test decides when it goes on)."""

    def __init__(self, doc_id: str, fifo_dir: str):
        self.doc_id = doc_id
        self.fifo_dir = fifo_dir
        self.worker = ""

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        self.worker = worker_metadata.worker_id if worker_metadata else ""

    def process(self, task: DocumentBatch) -> DocumentBatch:
        if self.doc_id in task.to_pyarrow()["id"].to_pylist():
            directory = Path(self.fifo_dir)
            with (directory / "started").open("w") as started:
                started.write(self.worker + "\n")
            with (directory / "release").open() as release:
                release.read()
        return task


class SleepEach(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Works `seconds` on every batch (a stand-in for a slow stage)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def process(self, task: DocumentBatch) -> DocumentBatch:
        import time

        time.sleep(self.seconds)  # simulated work, not synchronisation
        return task


class HangOn(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Hangs on every attempt at a batch holding `doc_id` (opens the FIFO `fifo` for reading,
    which nobody writes); its own task timeout is `task_timeout_s`."""

    task_timeout_s = 2.0

    def __init__(self, doc_id: str, fifo: str):
        self.doc_id = doc_id
        self.fifo = fifo

    def process(self, task: DocumentBatch) -> DocumentBatch:
        if self.doc_id in task.to_pyarrow()["id"].to_pylist():
            with open(self.fifo):  # blocks: no writer ever comes
                pass
        return task


class SameId(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Gives every task it returns the id "same" (a stage that breaks the id contract)."""

    def process(self, task: DocumentBatch) -> DocumentBatch:
        return DocumentBatch(task_id="same", dataset_name=task.dataset_name, data=task.data)


class FailWhile(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Raises for a batch holding a document whose text contains `marker` while the file
    `flag` exists (delete it and a retry succeeds)."""

    def __init__(self, marker: str, flag: str):
        self.marker = marker
        self.flag = flag

    def process(self, task: DocumentBatch) -> DocumentBatch:
        texts = task.to_pyarrow()["text"]
        if Path(self.flag).exists() and pc.any(pc.match_substring(texts, self.marker)).as_py():
            raise ValueError(f"failing while {self.flag} exists")
        return task


class FanOutRows(ProcessingStage[EmptyTask, DocumentBatch]):
    """`count` one-row tasks (tiny: their bytes travel inline, in groups)."""

    def __init__(self, count: int):
        self.count = count

    def process(self, task: EmptyTask) -> list[DocumentBatch]:
        return [DocumentBatch(data=pa.table({"n": [i]})) for i in range(self.count)]


class AddOneToN(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Adds 1 to column `n`."""

    def process(self, task: DocumentBatch) -> DocumentBatch:
        table = task.to_pyarrow()
        return DocumentBatch(data=table.set_column(0, "n", pc.add(table["n"], 1)))


class SplitRows(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Fans each batch out into one task per document."""

    def process(self, task: DocumentBatch) -> list[DocumentBatch]:
        table = task.to_pyarrow()
        return [DocumentBatch(data=table.slice(row, 1)) for row in range(table.num_rows)]

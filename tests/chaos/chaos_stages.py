"""Stages the fault suite runs on the service (sent by value: none is installed)."""

from __future__ import annotations

import math

import pyarrow.compute as pc

from gristmill import DocumentBatch, ProcessingStage


class SplitBatch(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Splits a batch into `parts` batches of consecutive documents (a fan-out)."""

    def __init__(self, parts: int = 4):
        self.parts = parts

    def process(self, task: DocumentBatch) -> list[DocumentBatch]:
        table = task.to_pyarrow()
        size = max(1, math.ceil(table.num_rows / self.parts))
        return [
            DocumentBatch(dataset_name=task.dataset_name, data=table.slice(start, size))
            for start in range(0, table.num_rows, size)
        ]


class Shout(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Upper-cases the text (so outputs differ from inputs, and from a skipped step)."""

    def inputs(self) -> tuple[list[str], list[str]]:
        return [], ["text"]

    def process(self, task: DocumentBatch) -> DocumentBatch:
        table = task.to_pyarrow()
        index = table.column_names.index("text")
        return DocumentBatch(
            dataset_name=task.dataset_name,
            data=table.set_column(index, "text", pc.utf8_upper(table["text"])),
        )


class HangOnIds(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Hangs (opens the FIFO `fifo`, which nobody writes) on every batch holding one of
    `ids`; its own task timeout stops it."""

    task_timeout_s = 1.5

    def __init__(self, ids: list[str], fifo: str):
        self.ids = ids
        self.fifo = fifo

    def process(self, task: DocumentBatch) -> DocumentBatch:
        if set(self.ids) & set(task.to_pyarrow()["id"].to_pylist()):
            with open(self.fifo):
                pass
        return task

"""Writers: one output file per task, named from the task id, written atomically.

Because the name comes from the task id and ids are deterministic, a rerun of the same pipeline
overwrites the same files instead of adding new ones, and a task retried after a crash can never
leave a half-written file behind (the file appears whole, by rename, or not at all).
"""

from __future__ import annotations

import json
from typing import IO, ClassVar, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from gristmill import fs
from gristmill.errors import GristmillError
from gristmill.stages.base import ProcessingStage
from gristmill.tasks import (
    WRITTEN_KEY,
    DocumentBatch,
    FileGroupTask,
    check_task_id,
    drop_groups,
    iter_drops,
)

__all__ = ["DROPS_FILE_KEY", "BaseWriter", "JsonlWriter", "ParquetWriter", "WriteMode"]

WriteMode = Literal["overwrite", "ignore", "error"]
# A writer's output notes the file its drop records went to (when it wrote one).
DROPS_FILE_KEY = "drops_file"


class BaseWriter(ProcessingStage[DocumentBatch, FileGroupTask]):
    """Writes each `DocumentBatch` to `path/<task_id><extension>` and returns the written path
    as a `FileGroupTask`.

    `fields` writes only those columns (each must exist). `mode` decides what happens when the
    task's file already exists: "overwrite" replaces it, "ignore" keeps it (resuming an
    interrupted run), "error" stops. It applies per file, never to the whole directory: a
    retried task must not delete what other tasks wrote. A batch with no documents writes no
    data file. With `drops_path`, the drop records a batch carries (which documents earlier
    stages removed, and why) are written to `drops_path/<task_id>.jsonl`, one line each.
    The returned task also notes which documents (their `id` column, when the batch has one)
    went into which file (metadata `WRITTEN_KEY`), so that the service can say where a kept
    document is.
    """

    extension: ClassVar[str] = ""

    def __init__(
        self,
        path: str,
        fields: list[str] | None = None,
        mode: WriteMode = "overwrite",
        drops_path: str | None = None,
    ):
        if mode not in ("overwrite", "ignore", "error"):
            raise ValueError(f"mode must be 'overwrite', 'ignore' or 'error', got {mode!r}")
        self.path = path
        self.fields = fields
        self.mode = mode
        self.drops_path = drops_path

    def inputs(self) -> tuple[list[str], list[str]]:
        """The requested fields, if any."""
        return [], list(self.fields or [])

    def write_table(self, table: pa.Table, handle: IO[bytes]) -> None:
        """Write `table` to an open binary file in this writer's format."""
        raise NotImplementedError

    def process(self, task: DocumentBatch) -> FileGroupTask:
        """Write the batch (and its drop records); return the data file written."""
        # Executors check ids when tasks are made; a writer that is handed a task directly
        # must still never let an id such as "../x" choose where a file goes.
        check_task_id(task.task_id, where=f"stage '{self.name}' was given a task whose")
        written: list[str] = []
        kept: list[dict[str, object]] = []
        if task.num_items:
            table = task.to_pyarrow()
            target = fs.join(self.path, f"{task.task_id}{self.extension}")
            if "id" in table.column_names:
                kept.append({"file": target, "ids": [str(i) for i in table["id"].to_pylist()]})
            if self.fields:
                table = table.select(self.fields)
            written.append(target)
            if fs.exists(target) and self.mode != "overwrite":
                if self.mode == "error":
                    raise GristmillError(f"{self.name}: {target} already exists (mode='error')")
            else:
                with fs.atomic_write(target) as handle:
                    self.write_table(table, handle)
        groups = drop_groups(task)
        drops_file = ""
        if groups and self.drops_path:
            lines = (json.dumps(r, ensure_ascii=False) + "\n" for r in iter_drops(groups))
            drops_file = fs.join(self.drops_path, f"{task.task_id}.jsonl")
            with fs.atomic_write(drops_file) as handle:
                handle.write("".join(lines).encode())
        out = FileGroupTask(dataset_name=task.dataset_name, data=written)
        if kept:
            out._metadata[WRITTEN_KEY] = kept
        if drops_file:
            out._metadata[DROPS_FILE_KEY] = drops_file
        return out


class JsonlWriter(BaseWriter):
    """Writes JSON Lines (UTF-8, one document per line); see `BaseWriter`."""

    name = "jsonl_writer"
    extension = ".jsonl"

    def write_table(self, table: pa.Table, handle: IO[bytes]) -> None:
        """One JSON object per row."""
        text = table.to_pandas().to_json(orient="records", lines=True, force_ascii=False)
        if text and not text.endswith("\n"):
            text += "\n"
        handle.write(text.encode())


class ParquetWriter(BaseWriter):
    """Writes Parquet (snappy-compressed); see `BaseWriter`."""

    name = "parquet_writer"
    extension = ".parquet"

    def write_table(self, table: pa.Table, handle: IO[bytes]) -> None:
        """The table as one Parquet file."""
        pq.write_table(table, handle, compression="snappy")

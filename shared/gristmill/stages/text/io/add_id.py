"""`AddId`: stable document ids from the task id and the row, so reruns give the same ids."""

from __future__ import annotations

import pyarrow as pa

from gristmill.errors import GristmillError
from gristmill.stages.base import ProcessingStage
from gristmill.tasks import DocumentBatch

__all__ = ["AddId"]


class AddId(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Adds `id_field` = `<id_prefix>_<task_id>_<row>` (without the prefix part when None).

    Task ids are deterministic, so the same input gets the same document ids on every run and
    executor. An existing `id_field` column is an error unless `overwrite`.
    """

    name = "add_id"

    def __init__(self, id_field: str = "id", id_prefix: str | None = None, overwrite: bool = False):
        self.id_field = id_field
        self.id_prefix = id_prefix
        self.overwrite = overwrite

    def outputs(self) -> tuple[list[str], list[str]]:
        """The id column."""
        return [], [self.id_field]

    def process(self, task: DocumentBatch) -> DocumentBatch:
        """The batch with its id column."""
        table = task.to_pyarrow()
        if self.id_field in table.column_names:
            if not self.overwrite:
                raise GristmillError(
                    f"{self.name}: task {task.task_id} already has a column '{self.id_field}' "
                    f"(pass overwrite=True to replace it)"
                )
            table = table.drop_columns([self.id_field])
        stem = f"{self.id_prefix}_{task.task_id}" if self.id_prefix else task.task_id
        ids = pa.array([f"{stem}_{row}" for row in range(table.num_rows)], pa.string())
        return DocumentBatch(data=table.append_column(self.id_field, ids))

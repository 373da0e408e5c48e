"""Tasks: the batches of data that flow between stages.

`Task` is the base; `DocumentBatch`, `FileGroupTask` and `EmptyTask` are the built-in kinds. Every
task round-trips through `to_bytes()` / `Task.from_bytes()` (JSON header + Arrow IPC, no pickle).
"""

from gristmill.tasks.base import Task
from gristmill.tasks.document import DocumentBatch
from gristmill.tasks.drops import (
    DROPS_KEY,
    WRITTEN_KEY,
    drop_count,
    drop_groups,
    drops_by_stage,
    iter_drops,
    record_drops,
)
from gristmill.tasks.empty import EmptyTask
from gristmill.tasks.file_group import FileGroupTask
from gristmill.tasks.ids import ROOT_TASK_ID, check_task_id, content_task_id, derive_task_id
from gristmill.tasks.perf import StagePerfStats

__all__ = [
    "DROPS_KEY",
    "ROOT_TASK_ID",
    "WRITTEN_KEY",
    "DocumentBatch",
    "EmptyTask",
    "FileGroupTask",
    "StagePerfStats",
    "Task",
    "check_task_id",
    "content_task_id",
    "derive_task_id",
    "drop_count",
    "drop_groups",
    "drops_by_stage",
    "iter_drops",
    "record_drops",
]

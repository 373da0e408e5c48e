"""`EmptyTask`: the start signal of a pipeline that makes its own data."""

from __future__ import annotations

from dataclasses import dataclass

from gristmill.tasks.base import Task
from gristmill.tasks.ids import ROOT_TASK_ID

__all__ = ["EmptyTask"]


@dataclass(kw_only=True)
class EmptyTask(Task[None]):
    """No data: what the first stage receives when a pipeline runs without initial tasks."""

    task_id: str = ROOT_TASK_ID
    data: None = None

    @property
    def num_items(self) -> int:
        """Always 0."""
        return 0

    def validate(self) -> bool:
        """Always True: the start signal is valid by definition."""
        return True

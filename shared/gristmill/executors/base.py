"""`BaseExecutor`: what every backend offers, and the start-up rules they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from gristmill.errors import GristmillError, TaskIdCollisionError
from gristmill.stages import ProcessingStage
from gristmill.tasks import EmptyTask, Task, check_task_id, content_task_id, drop_count

__all__ = ["BaseExecutor", "StageTotals", "TaskIdLedger", "prepare_initial_tasks"]

AnyStage = ProcessingStage[Any, Any]
AnyTask = Task[Any]


class BaseExecutor(ABC):
    """Runs built stages (one per physical step) over initial tasks and returns the outputs.

    `config` holds backend-specific settings; each executor documents the keys it reads and
    rejects the ones it does not know.
    """

    config_keys: frozenset[str] = frozenset()

    def __init__(self, config: dict[str, Any] | None = None):
        self.config: dict[str, Any] = dict(config or {})
        unknown = sorted(set(self.config) - self.config_keys)
        if unknown:
            known = ", ".join(sorted(self.config_keys)) or "none"
            raise GristmillError(
                f"{type(self).__name__}: unknown config key(s) {', '.join(unknown)} "
                f"(known: {known})"
            )
        self.totals: list[StageTotals] = []

    @abstractmethod
    def execute(
        self, stages: list[AnyStage], initial_tasks: list[AnyTask] | None = None
    ) -> list[AnyTask]:
        """Run `stages` in order; without `initial_tasks`, start from one `EmptyTask`."""


@dataclass
class StageTotals:
    """What one stage did over a whole run, summed over its calls."""

    stage_name: str
    calls: int = 0
    tasks_in: int = 0
    tasks_out: int = 0
    items_in: int = 0
    items_out: int = 0
    items_dropped: int = 0
    wall_time_s: float = 0.0

    def add_call(
        self,
        inputs: list[AnyTask],
        outputs: list[AnyTask],
        wall_time_s: float,
        items_in: int,
        drops_in: int,
    ) -> None:
        """Count one call; `items_in` and `drops_in` are read before the call (it may change its
        inputs in place)."""
        self.calls += 1
        self.tasks_in += len(inputs)
        self.tasks_out += len(outputs)
        self.items_in += items_in
        self.items_out += sum(t.num_items for t in outputs)
        self.items_dropped += sum(drop_count(t) for t in outputs) - drops_in
        self.wall_time_s += wall_time_s


class TaskIdLedger:
    """Which input made each output id of each step, over one run, so that two inputs making the
    same id fail loudly instead of merging two tasks' data under one id.

    One stage call cannot return an id twice (`run_stage` refuses it); this catches the same id
    made by two calls. The Ray executors keep one ledger per run in a Ray actor that every worker
    reports to (`gristmill.executors.ray_ledger`), so both inputs are known there too. It holds
    one entry per output task of the run.
    """

    def __init__(self) -> None:
        self._made_from: dict[tuple[int, str], str] = {}

    def record(
        self, step: int, stage_name: str, made: list[tuple[str, str]]
    ) -> TaskIdCollisionError | None:
        """Remember the (input id, output id) pairs of one call of step `step` (0-based);
        returns, rather than raises, the error for an output id another input made first (so
        that it crosses back from a Ray actor as a value)."""
        for parent, task_id in made:
            first = self._made_from.setdefault((step, task_id), parent)
            if first != parent:
                return TaskIdCollisionError(task_id, step, stage_name, first, parent)
        return None


def prepare_initial_tasks(initial_tasks: list[AnyTask] | None) -> list[AnyTask]:
    """The tasks a run starts from: one `EmptyTask` by default; tasks given without an id get
    one from their content, so the same inputs always start the same lineage. A given id must
    be safe as a file name (`check_task_id`), and unique."""
    if initial_tasks is None:
        return [EmptyTask()]
    tasks = list(initial_tasks)
    seen: set[str] = set()
    for task in tasks:
        if not isinstance(task, Task):
            raise GristmillError(f"initial tasks must be Tasks, got {type(task).__name__}")
        if task.task_id:
            check_task_id(task.task_id, where="initial task")
        else:
            task.task_id = content_task_id(type(task).__qualname__, task.to_bytes().hex())
        if task.task_id in seen:
            raise GristmillError(f"two initial tasks share task_id {task.task_id!r}")
        seen.add(task.task_id)
    return tasks

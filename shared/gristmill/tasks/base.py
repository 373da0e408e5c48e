"""`Task`: a batch of data flowing through a pipeline, with its lineage and measurements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Self

from gristmill.errors import TaskSerializationError
from gristmill.tasks import codec
from gristmill.tasks.perf import StagePerfStats
from gristmill.tasks.registry import register_task_type

__all__ = ["Task"]


@dataclass(kw_only=True)
class Task[T](ABC):
    """A batch of data of type `T`, the unit every stage consumes and produces.

    Fields are keyword-only. `task_id` may be left empty by a stage that makes a task: the executor
    then assigns the id derived from the parent task, the stage and the output's position.
    `_stage_perf` and `_metadata` carry lineage; an executor copies them from the parent onto a new
    task that left them empty.
    """

    task_id: str = ""
    dataset_name: str = ""
    data: T
    _stage_perf: list[StagePerfStats] = field(default_factory=list)
    _metadata: dict[str, Any] = field(default_factory=dict)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register_task_type(cls)

    @property
    @abstractmethod
    def num_items(self) -> int:
        """How many items (documents, files, ...) the task holds."""

    @abstractmethod
    def validate(self) -> bool:
        """Whether the task holds data worth passing on; executors drop tasks that are not."""

    def add_stage_perf(self, stats: StagePerfStats) -> None:
        """Record what a stage did to make this task."""
        self._stage_perf.append(stats)

    def to_bytes(self) -> bytes:
        """This task as bytes: JSON header + Arrow IPC; see `gristmill.tasks.codec`."""
        return codec.encode_task(self)

    @classmethod
    def from_bytes(cls, payload: bytes | memoryview) -> Self:
        """Rebuild a task from `to_bytes()`; on a subclass, insists the bytes hold that class."""
        task = codec.decode_task(payload)
        if not isinstance(task, cls):
            raise TaskSerializationError(
                f"bytes hold a {type(task).__name__}, not a {cls.__name__}"
            )
        return task

"""Per-stage measurements that travel with a task."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["StagePerfStats"]


@dataclass
class StagePerfStats:
    """What one stage call did to produce a task.

    A call may take several tasks (a batch) and make several (fan-out); siblings then share the
    call's figures, so sum `wall_time_s` over distinct calls, not over output tasks.
    `items_dropped` counts the documents the call recorded as dropped (see `tasks.drops`).
    """

    stage_name: str
    wall_time_s: float = 0.0
    items_in: int = 0
    items_out: int = 0
    items_dropped: int = 0
    tasks_in: int = 1
    custom_metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of the fields."""
        return {
            "stage_name": self.stage_name,
            "wall_time_s": self.wall_time_s,
            "items_in": self.items_in,
            "items_out": self.items_out,
            "items_dropped": self.items_dropped,
            "tasks_in": self.tasks_in,
            "custom_metrics": dict(self.custom_metrics),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> StagePerfStats:
        """The inverse of `to_dict`."""
        return cls(**raw)

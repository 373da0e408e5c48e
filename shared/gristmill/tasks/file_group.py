"""`FileGroupTask`: a group of input paths for a reading stage."""

from __future__ import annotations

from dataclasses import dataclass

from gristmill.tasks.base import Task

__all__ = ["FileGroupTask"]


@dataclass(kw_only=True)
class FileGroupTask(Task[list[str]]):
    """A list of paths or fsspec URLs that one reading stage call reads."""

    @property
    def num_items(self) -> int:
        """The number of paths."""
        return len(self.data)

    def validate(self) -> bool:
        """True when the group names at least one path and every entry is a non-empty string."""
        return bool(self.data) and all(isinstance(p, str) and p for p in self.data)

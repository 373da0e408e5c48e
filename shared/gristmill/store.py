"""The store: task payloads at deterministic paths under an fsspec root.

A task is written once to `<root>/<team>/<job>/<step>/<task_id>.task` (its `to_bytes()`),
through a temporary name and a rename, and described by a `DataRef` with its size and SHA-256.
Writing the same task again writes the same bytes to the same place, so a retried step never
leaves a second copy; reading checks the SHA-256, so a damaged or half-copied file is an error,
not wrong data.
"""

from __future__ import annotations

import hashlib
from typing import Any

from gristmill import fs
from gristmill.bus.messages import DataRef
from gristmill.bus.subjects import check_token
from gristmill.errors import GristmillError
from gristmill.tasks import Task

__all__ = ["StoreError", "TaskStore"]


class StoreError(GristmillError):
    """A stored task that is missing or does not match its DataRef."""


class TaskStore:
    """Reads and writes task payloads under `root` (a path or fsspec URL)."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")

    def path_for(self, team: str, job: str, step: int, task_id: str) -> str:
        """Where a task of a step of a job lives."""
        check_token("team", team)
        check_token("job", job)
        if not task_id or "/" in task_id or task_id.startswith("."):
            raise StoreError(f"task id {task_id!r} cannot name a file")
        return fs.join(self.root, f"{team}/{job}/{step}/{task_id}.task")

    def put(self, team: str, job: str, step: int, task: Task[Any]) -> DataRef:
        """Write `task` (atomically) and describe it."""
        payload = task.to_bytes()
        uri = self.path_for(team, job, step, task.task_id)
        with fs.atomic_write(uri) as handle:
            handle.write(payload)
        return DataRef(
            uri=uri,
            rows=task.num_items,
            bytes=len(payload),
            sha256=hashlib.sha256(payload).hexdigest(),
        )

    def get(self, ref: DataRef) -> Task[Any]:
        """Read the task `ref` points at, refusing bytes that do not match it."""
        try:
            payload = fs.read_bytes(ref.uri)
        except FileNotFoundError as exc:
            raise StoreError(f"stored task missing: {ref.uri}") from exc
        if len(payload) != ref.bytes or hashlib.sha256(payload).hexdigest() != ref.sha256:
            raise StoreError(
                f"stored task {ref.uri} does not match its reference "
                f"({len(payload)} bytes, expected {ref.bytes}; checksum differs)"
            )
        return Task.from_bytes(payload)

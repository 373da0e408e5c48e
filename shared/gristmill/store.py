"""The store: task payloads at deterministic paths under an fsspec root.

A task is written once to `<root>/<team>/<job>/<step>/<task_id>.task` (its `to_bytes()`), and
code sent by value to `<root>/<team>/_code/<sha256>.json`, through a temporary name, and is
described by a `DataRef` with its size and SHA-256. Writing a task again keeps the bytes written
first (the first writer wins), so a retried step never leaves a second copy nor invalidates a
reference handed out; reading checks the SHA-256, so a damaged or half-copied file is an error,
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

    def path_for(self, team: str, job: str, step: int | str, task_id: str) -> str:
        """Where a task of a step of a job lives."""
        check_token("team", team)
        check_token("job", job)
        if not task_id or "/" in task_id or task_id.startswith("."):
            raise StoreError(f"task id {task_id!r} cannot name a file")
        return fs.join(self.root, f"{team}/{job}/{step}/{task_id}.task")

    def put(self, team: str, job: str, step: int | str, task: Task[Any]) -> DataRef:
        """Write `task` and describe it. A task stored already keeps its first bytes (its perf
        stats differ from run to run), so every reference ever handed out stays valid."""
        uri = self.path_for(team, job, step, task.task_id)
        payload = fs.write_once(uri, task.to_bytes())
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

    def code_path(self, team: str, sha256: str) -> str:
        """Where a team's code blob `sha256` lives."""
        check_token("team", team)
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise StoreError(f"{sha256!r} is not a SHA-256")
        return fs.join(self.root, f"{team}/_code/{sha256}.json")

    def put_code(self, team: str, sha256: str, payload: bytes) -> None:
        """Store a code blob (content-addressed: storing it again changes nothing)."""
        if hashlib.sha256(payload).hexdigest() != sha256:
            raise StoreError(f"code blob does not match its SHA-256 {sha256[:12]}")
        uri = self.code_path(team, sha256)
        if not fs.exists(uri):
            with fs.atomic_write(uri) as handle:
                handle.write(payload)

    def get_code(self, team: str, sha256: str) -> bytes:
        """A code blob's bytes (checked by whoever parses them)."""
        try:
            return fs.read_bytes(self.code_path(team, sha256))
        except FileNotFoundError as exc:
            raise StoreError(f"code {sha256[:12]} is not in the store of team {team}") from exc

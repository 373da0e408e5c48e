"""The store: task payloads under an fsspec root, one directory per team.

The tasks one manifest's step made are written together, as one object,
`<root>/<team>/<job>/<step>/<key>.<sha256[:16]>.tasks` (their `to_bytes()` one after another),
and each is described by a `DataRef` to its slice: offset, length and SHA-256. A task of at most
`INLINE_MAX_BYTES` is not written at all: its bytes travel inside its `DataRef`. Object names
are content-addressed, so two attempts of one task never overwrite each other's bytes, a
reference handed out stays valid, and two writers racing to one name write the same bytes.

Reading checks the SHA-256 (a damaged or half-copied object is an error, not wrong data) and
refuses a reference outside the reading team's directory: a `DataRef` from a message is never
used unchecked. Code sent by value lives at `<root>/<team>/_code/<sha256>.json`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import posixpath
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa

from gristmill import faults, fs
from gristmill.bus.messages import INLINE_MAX_BYTES, DataRef
from gristmill.bus.subjects import check_token
from gristmill.errors import GristmillError
from gristmill.tasks import Task, check_task_id
from gristmill.tasks.codec import TaskPayload, encode_tasks

__all__ = ["StoreError", "StoreWriteError", "TaskStore", "within"]


def _small(task: Task[Any]) -> bool:
    """Whether a task is small enough to share a payload with others."""
    data = task.data
    if isinstance(data, pa.Table):
        return bool(data.nbytes <= INLINE_MAX_BYTES)
    if data is None:
        return True
    return isinstance(data, list | dict | str) and len(repr(data)) <= INLINE_MAX_BYTES


class StoreError(GristmillError):
    """A stored payload that is missing, damaged, or not where a reference may point."""


class StoreWriteError(StoreError):
    """A write to the store failed (an I/O error: trying again may succeed)."""


def within(path: str, root: str) -> bool:
    """Whether `path` is `root` or below it, both normalised (`..` and `.` resolved, doubled
    slashes removed); a URL is below a root only of the same scheme and host."""
    target, base = urlparse(path), urlparse(root)
    if (target.scheme or "file") != (base.scheme or "file") or target.netloc != base.netloc:
        return False
    resolved = posixpath.normpath("/" + target.path) if target.scheme else _local_path(path)
    anchor = posixpath.normpath("/" + base.path) if base.scheme else _local_path(root)
    return resolved == anchor or resolved.startswith(anchor.rstrip("/") + "/")


def _local_path(path: str) -> str:
    import os

    return os.path.realpath(path[len("file://") :] if path.startswith("file://") else path)


class TaskStore:
    """Reads and writes task payloads under `root` (a path or fsspec URL)."""

    def __init__(self, root: str, cached_payloads: int = 16, write_attempts: int = 1):
        self.root = root.rstrip("/")
        # A write failing with an I/O error is tried again, backing off (up to ~3.5 s for 8).
        self.write_attempts = write_attempts
        # Shared payloads read lately, decoded: a group's tasks read theirs once, not each.
        self._payloads: OrderedDict[tuple[str, str], TaskPayload] = OrderedDict()
        self._cached = cached_payloads

    def team_root(self, team: str) -> str:
        """Where everything of `team` lives."""
        return fs.join(self.root, check_token("team", team))

    def job_root(self, team: str, job: str) -> str:
        """Where a job's payloads live (removed by `delete_job`)."""
        return fs.join(self.team_root(team), check_token("job", job))

    def put_tasks(
        self,
        team: str,
        job: str,
        step: int | str,
        key: str,
        tasks: Sequence[Task[Any]],
        inline: bool = True,
    ) -> list[DataRef]:
        """Store `tasks` (outputs of the manifest `key` at `step`); one ref each, in order.
        Small tasks go inline when `inline`; the others into one object."""
        check_task_id(key, "manifest key")
        if inline and len(tasks) > 1 and all(_small(task) for task in tasks):
            shared = encode_tasks(tasks)
            if shared is not None:
                return self._put_shared(team, job, step, key, tasks, shared)
        payloads = [task.to_bytes() for task in tasks]
        stored = [i for i, p in enumerate(payloads) if not (inline and len(p) <= INLINE_MAX_BYTES)]
        uri = ""
        offsets: dict[int, int] = {}
        if stored:
            blob = b"".join(payloads[i] for i in stored)
            position = 0
            for i in stored:
                offsets[i] = position
                position += len(payloads[i])
            uri = self._write(team, job, step, key, blob)
        refs = []
        for i, (task, payload) in enumerate(zip(tasks, payloads, strict=True)):
            where: dict[str, Any] = (
                {"uri": uri, "offset": offsets[i]}
                if i in offsets
                else {"inline": base64.b64encode(payload).decode("ascii")}
            )
            digest = hashlib.sha256(payload).hexdigest()
            refs.append(DataRef(**where, rows=task.num_items, bytes=len(payload), sha256=digest))
        return refs

    def _write(self, team: str, job: str, step: int | str, key: str, blob: bytes) -> str:
        digest = hashlib.sha256(blob).hexdigest()[:16]
        uri = fs.join(self.job_root(team, job), f"{step}/{key}.{digest}.tasks")
        where = f"store.write {uri}"
        for attempt in range(self.write_attempts):
            try:
                fs.write_once(uri, blob, fail_half_way=faults.write_fails(where))
                return uri
            except OSError as exc:
                if attempt == self.write_attempts - 1:
                    raise StoreWriteError(f"writing {uri} failed: {exc}") from exc
                time.sleep(min(1.0, 0.05 * 2**attempt))  # back off: the store may be busy
        return uri

    def _put_shared(
        self,
        team: str,
        job: str,
        step: int | str,
        key: str,
        tasks: Sequence[Task[Any]],
        payload: bytes,
    ) -> list[DataRef]:
        uri = self._write(team, job, step, key, payload)
        digest = hashlib.sha256(payload).hexdigest()
        return [
            DataRef(uri=uri, part=k, rows=t.num_items, bytes=len(payload), sha256=digest)
            for k, t in enumerate(tasks)
        ]

    def put(self, team: str, job: str, step: int | str, task: Task[Any]) -> DataRef:
        """Store one task as an object of its own (never inline), keyed by its id."""
        [ref] = self.put_tasks(team, job, step, task.task_id, [task], inline=False)
        return ref

    def get(self, ref: DataRef, team: str) -> Task[Any]:
        """Read the task `ref` points at for `team`, refusing bytes that do not match it."""
        if ref.part < 0:
            return Task.from_bytes(self.get_bytes(ref, team))
        key = (ref.uri, ref.sha256)
        shared = self._payloads.get(key)
        if shared is None:
            shared = TaskPayload(self.get_bytes(ref, team))
            self._payloads[key] = shared
            while len(self._payloads) > self._cached:
                self._payloads.popitem(last=False)
        self._payloads.move_to_end(key)
        if ref.part >= len(shared):
            raise StoreError(
                f"stored payload {ref.uri} has no task {ref.part} ({len(shared)} tasks)"
            )
        return shared.task(ref.part)

    def get_bytes(self, ref: DataRef, team: str) -> bytes:
        """The verified bytes `ref` stands for (see `get`)."""
        if ref.inline:
            try:
                payload = base64.b64decode(ref.inline, validate=True)
            except ValueError as exc:
                raise StoreError(f"an inline task payload is not base64: {exc}") from exc
            payload = faults.damaged(payload, "store.read inline")
            where = "an inline task payload"
        else:
            if not within(ref.uri, self.team_root(team)):
                raise StoreError(
                    f"reference {ref.uri!r} is outside team {team}'s store "
                    f"{self.team_root(team)}; refused"
                )
            try:
                payload = fs.read_range(ref.uri, ref.offset, ref.bytes)
            except FileNotFoundError as exc:
                raise StoreError(f"stored task missing: {ref.uri}") from exc
            payload = faults.damaged(payload, f"store.read {ref.uri}")
            where = f"stored task {ref.uri} (offset {ref.offset})"
        if len(payload) != ref.bytes or hashlib.sha256(payload).hexdigest() != ref.sha256:
            raise StoreError(
                f"{where} does not match its reference "
                f"({len(payload)} bytes, expected {ref.bytes}; checksum differs)"
            )
        return payload

    def put_plan(self, team: str, job: str, payload: bytes) -> DataRef:
        """Store a job's first manifests (newline-separated JSON) until they are published."""
        digest = hashlib.sha256(payload).hexdigest()
        uri = fs.join(self.job_root(team, job), f"plan.{digest[:16]}.jsonl")
        fs.write_once(uri, payload)
        return DataRef(uri=uri, format="gristmill-plan", rows=0, bytes=len(payload), sha256=digest)

    def put_fates(
        self, team: str, job: str, step: int, key: str, records: Sequence[dict[str, Any]]
    ) -> None:
        """Store what manifest `key` of `step` did with its documents (drop records, and which
        file each kept document went into), for `gristmill why`; a rerun writes the same."""
        check_task_id(key, "manifest key")
        uri = fs.join(self.job_root(team, job), f"fates/{step}/{key}.jsonl")
        lines = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
        with fs.atomic_write(uri) as handle:
            handle.write(lines.encode())

    def fates(self, team: str, job: str) -> Iterator[dict[str, Any]]:
        """Every record `put_fates` stored for the job, step by step."""
        root = fs.join(self.job_root(team, job), "fates")
        if not fs.exists(root):
            return
        paths = fs.expand_paths(root, [".jsonl"], "the fates of a job")
        for path in sorted(paths, key=lambda p: (int(p.rsplit("/", 2)[-2]), p)):
            for line in fs.read_bytes(path).decode().splitlines():
                if line:
                    yield json.loads(line)

    def delete_job(self, team: str, job: str) -> bool:
        """Remove every payload of a job; False when it had none."""
        return fs.remove_tree(self.job_root(team, job))

    def code_path(self, team: str, sha256: str) -> str:
        """Where a team's code blob `sha256` lives."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise StoreError(f"{sha256!r} is not a SHA-256")
        return fs.join(self.team_root(team), f"_code/{sha256}.json")

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

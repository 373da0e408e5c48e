"""Continuous jobs in the planner: watch each job's input, take each new file once, stop.

A file is taken when two listings in a row (`poll_s` apart) see it with the same size and
modification time (or etag): a file still being written is left until it stops changing. Names
starting with "." or "_" are never taken, so a writer that writes `.name.tmp` and renames it
into place is always safe. A notified path (`gm.<team>.ingest.<job>`) is taken at once; it must
be under the job's inputs, and a path seen before is ignored. A file that changes after it was
taken is reported (the job's state lists it), never processed again.

Taking a file is safe to stop at any instruction and repeat: its task goes inline into its
manifest (no store write), then the seen-file record is *created* (the first creator takes the
file; another planner, or a repeated notification, finds it and stops), then the `files` event,
then the manifest (both with `Nats-Msg-Id`s), then the record is marked published. A planner
that starts, or a stop, first publishes every record not marked published.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gristmill import fs
from gristmill.bus import (
    FilesIngested,
    IngestedFile,
    InputClosed,
    InputWatch,
    MessageError,
    SeenFile,
    TaskEntry,
    TaskManifest,
)
from gristmill.bus.client import Publisher, kv_values
from gristmill.bus.jobs import JobRecord, msg_id, seen_key, watch_key
from gristmill.bus.streams import TeamLayout
from gristmill.bus.subjects import event_subject, task_subject
from gristmill.store import TaskStore, within
from gristmill.tasks import FileGroupTask, content_task_id

__all__ = ["InputLook", "Look", "Watcher", "notified_path_problem"]

log = logging.getLogger("gristmill.planner")

Signature = tuple[int, float, str]  # size, modification time, etag
_GLOB = set("*?[")
_CHANGED_KEPT = 20  # changed files named in the job's state


@dataclass
class Look:
    """What one listing says: files to take now (path, signature, first seen), files still
    changing, and files that changed after they were taken (newly)."""

    take: list[tuple[str, Signature, float]] = field(default_factory=list)
    waiting: int = 0
    changed: list[str] = field(default_factory=list)


class InputLook:
    """The stable-size rule over successive listings (pure; `taken` are the files taken)."""

    def __init__(self, taken: dict[str, Signature] | None = None):
        self.taken: dict[str, Signature] = dict(taken or {})
        self._previous: dict[str, Signature] = {}
        self._first_seen: dict[str, float] = {}
        self._reported: dict[str, Signature] = {}

    def look(self, listing: dict[str, Signature], now: float) -> Look:
        """The files of `listing` to take now, by the rule in the module docstring."""
        found = Look()
        for path, signature in sorted(listing.items()):
            if path in self.taken:
                if signature != self.taken[path] and self._reported.get(path) != signature:
                    self._reported[path] = signature
                    found.changed.append(path)
                continue
            first = self._first_seen.setdefault(path, now)
            if self._previous.get(path) == signature:
                found.take.append((path, signature, first))
            else:
                found.waiting += 1
        self._previous = {p: s for p, s in listing.items() if p not in self.taken}
        self._first_seen = {p: t for p, t in self._first_seen.items() if p in self._previous}
        return found

    def took(self, path: str, signature: Signature) -> None:
        """`path` was taken (by a listing or a notification)."""
        self.taken[path] = signature
        self._previous.pop(path, None)
        self._first_seen.pop(path, None)


def notified_path_problem(path: str, inputs: list[str], extensions: list[str]) -> str:
    """Why a notified path may not be taken for a job reading `inputs` ("" when it may)."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if name[:1] in "._":
        return f"{path!r} is a hidden name (starting with '.' or '_')"
    for root in inputs:
        if _GLOB & set(root):
            if fnmatch.fnmatch(path, root):
                return ""
        elif path == root or (within(path, root) and path.endswith(tuple(extensions or [""]))):
            return ""
    return f"{path!r} is not under the job's inputs ({', '.join(inputs)})"


def file_task_id(path: str) -> str:
    """The task of one input file: the id a batch job's one-file group of it gets, too."""
    return content_task_id(path)


class Watcher:
    """The input of one continuous job: a loop that lists it, and `take` for notifications."""

    def __init__(
        self,
        team: str,
        record: JobRecord,
        store: TaskStore,
        publisher: Publisher,
        js: Any,
        ingest_kv: Any,
        clock: Callable[[], float] = time.time,
    ):
        assert record.spec.continuous is not None
        self.team, self.record, self.store = team, record, store
        self.publisher, self.js, self.kv, self.clock = publisher, js, ingest_kv, clock
        self.poll_s = record.spec.continuous.poll_s
        self.look = InputLook()
        self.polls = 0
        self.changed: list[str] = []
        self._lock = asyncio.Lock()  # one file taken at a time: notifications and polls
        self._wake = asyncio.Event()
        self._stopping = False

    @property
    def job(self) -> str:
        return self.record.job

    async def start(self) -> None:
        """Load the files taken before, and publish what an earlier planner left unpublished."""
        for seen in await self._seen_records():
            self.look.took(seen.path, (seen.size, seen.mtime, seen.etag))
            if not seen.published:
                await self._announce(seen)

    async def run(self) -> None:
        """List the input every `poll_s` until stopped."""
        while not self._stopping:
            await self.poll()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            self._wake.clear()

    async def poll(self) -> None:
        """One listing: take what is stable, report what changed."""
        spec = self.record.spec
        listing = await asyncio.to_thread(fs.list_files, spec.inputs, self.record.extensions)
        found = self.look.look(listing, self.clock())
        for path, signature, first_seen in found.take:
            if self._stopping:
                break
            await self.take(path, signature, first_seen)
        for path in found.changed:
            log.warning(
                "job %s: input %s changed after it was taken; not taken again", self.job, path
            )
        self.changed = (self.changed + found.changed)[-_CHANGED_KEPT:]
        self.polls += 1
        watch = InputWatch(
            polls=self.polls, at=self.clock(), waiting=found.waiting, changed=self.changed
        )
        await self.kv.put(watch_key(self.job), watch.to_json())

    async def notified(self, paths: list[str]) -> list[str]:
        """Take notified files at once; returns why each refused one was refused."""
        problems = []
        for path in paths:
            problem = notified_path_problem(path, self.record.spec.inputs, self.record.extensions)
            if not problem and path not in self.look.taken:
                listing = await asyncio.to_thread(fs.list_files, [path], [""])
                if path not in listing:
                    problem = f"{path!r} does not exist"
                else:
                    await self.take(path, listing[path], self.clock())
            if problem:
                problems.append(problem)
        return problems

    async def take(self, path: str, signature: Signature, first_seen: float) -> bool:
        """Take one file (see the module docstring); False when it was taken before."""
        from nats.js.errors import KeyWrongLastSequenceError

        async with self._lock:
            if path in self.look.taken:
                return False
            size, mtime, etag = signature
            seen = SeenFile(
                path=path,
                size=size,
                mtime=mtime,
                etag=etag,
                task_id=file_task_id(path),
                seen_at=first_seen,
            )
            try:
                await self.kv.create(seen_key(self.job, path), seen.to_json())
            except KeyWrongLastSequenceError:
                self.look.took(path, signature)
                return False
            self.look.took(path, signature)
            await self._announce(seen)
            return True

    async def _announce(self, seen: SeenFile) -> None:
        record = self.record
        step = record.first_step
        task = FileGroupTask(task_id=seen.task_id, dataset_name=record.dataset, data=[seen.path])
        [ref] = self.store.put_tasks(self.team, self.job, 0, seen.task_id, [task])
        file = IngestedFile.model_validate(seen.model_dump(exclude={"published"}))
        event = FilesIngested(job=self.job, step=step, files=[file])
        await self.publisher.publish(
            event_subject(self.team, self.job, "files"),
            event,
            msg_id("files", self.job, step, seen.task_id),
        )
        entry = TaskEntry(
            task_id=seen.task_id, dataset=record.dataset, inputs=[ref], root=seen.task_id
        )
        manifest = TaskManifest(
            job=self.job,
            step=step,
            step_name=record.steps[step].name,
            key=seen.task_id,
            tasks=[entry],
        )
        await self.publisher.publish(
            task_subject(self.team, self.job, str(step)),
            manifest,
            msg_id("task", self.job, step, seen.task_id),
        )
        published = seen.model_copy(update={"published": True})
        await self.kv.put(seen_key(self.job, seen.path), published.to_json())
        log.info("job %s: took %s (task %s)", self.job, seen.path, seen.task_id)

    async def stop(self) -> int:
        """Take no more files; publish what is unpublished and `input_closed`. Returns the
        number of files the job took."""
        self._stopping = True
        self._wake.set()
        async with self._lock:  # a file being taken is taken whole
            records = await self._seen_records()
            for seen in records:
                if not seen.published:
                    await self._announce(seen)
            closed = InputClosed(job=self.job, files=len(records), at=self.clock())
            await self.publisher.publish(
                event_subject(self.team, self.job, "input_closed"), closed, f"closed.{self.job}"
            )
        return len(records)

    async def _seen_records(self) -> list[SeenFile]:
        found = []
        bucket = TeamLayout(self.team).bucket("ingest")
        for key, value in (await kv_values(self.js, bucket, f"seen.{self.job}.*")).items():
            try:
                found.append(SeenFile.from_json(value))
            except MessageError:
                log.exception("job %s: unreadable seen-file record %s", self.job, key)
        return found

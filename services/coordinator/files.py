"""A continuous job's input files: which are pending, done or failed, and when each finished.

Plain logic, no I/O. Every task of a continuous job carries `root`, the task id of the input
file it descends from, and the planner announces a file (`FilesIngested`) before publishing its
manifest, so an event about a task always finds its file here unless the file is finished: such
an event is a re-announcement, and is ignored. Events may still arrive out of order between
steps (a child's `TasksDone` can overtake its parent's), which `early` absorbs.

A file is finished when every task it led to is done and every long id list of it is
complete. Then it leaves `files` (its tasks are folded into counts by the tracker) for
`closing`, where it waits until the coordinator has written its lineage record and its
`closed` mark, and is then forgotten: memory holds the pending files only, however long the job
runs. A file with a dead-lettered task stays, as failed, until a retry finishes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gristmill.bus import DataRef, FileCounts, IngestedFile

__all__ = ["ClosedFile", "FileLedger", "OpenFile"]


@dataclass
class OpenFile:
    """A file taken and not finished: its tasks (task id -> step) and what they did."""

    path: str
    size: int
    mtime: float
    seen_at: float
    tasks: dict[str, int] = field(default_factory=dict)
    open: set[str] = field(default_factory=set)  # known, neither done nor failed
    early: set[str] = field(default_factory=set)  # done before their parent announced them
    failed: set[str] = field(default_factory=set)
    parts: set[str] = field(default_factory=set)  # "<step>/<owner>" id lists not complete
    outputs: list[dict[str, Any]] = field(default_factory=list)  # last step's output refs
    done_at: float = 0.0
    items_out: int = 0
    items_dropped: int = 0
    dropped_by: dict[str, int] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """Nothing of it left to run, and nothing of it failed."""
        return not (self.open or self.early or self.parts or self.failed)


@dataclass(frozen=True)
class ClosedFile:
    """A finished file whose lineage record and `closed` mark are still to be written."""

    root: str
    path: str
    size: int
    mtime: float
    seen_at: float
    done_at: float
    items_in: int
    items_out: int
    items_dropped: int
    dropped_by: dict[str, int]
    outputs: list[dict[str, Any]]

    def refs(self) -> list[DataRef]:
        """The last step's output tasks (each a list of the files a writer wrote)."""
        return [DataRef.model_validate(raw) for raw in self.outputs]


class FileLedger:
    """The files of one continuous job, from its events; `last_step` is its last step."""

    def __init__(self, last_step: int):
        self.last_step = last_step
        self.files: dict[str, OpenFile] = {}
        self.closing: dict[str, ClosedFile] = {}
        self.seen = 0
        self.done = 0
        self.input_closed = False
        self.last_latency_s: float | None = None
        self.last_done_at = 0.0

    def knows(self, root: str) -> bool:
        """Whether events about `root`'s tasks still count (it is pending, or failed)."""
        return root in self.files

    def add(self, file: IngestedFile, step: int) -> bool:
        """A file taken, its task bound for `step`; False when it is known already (a repeated
        announcement)."""
        if file.task_id in self.files or file.task_id in self.closing:
            return False
        self.files[file.task_id] = OpenFile(
            file.path,
            file.size,
            file.mtime,
            file.seen_at,
            tasks={file.task_id: step},
            open={file.task_id},
        )
        self.seen += 1
        return True

    def published(self, root: str, step: int, ids: list[str]) -> None:
        """Tasks of `root` announced for `step` (by their parent, or an id list)."""
        file = self.files[root]
        for task_id in ids:
            if step > self.last_step:  # outputs of the last step: nothing runs them
                file.tasks[task_id] = step
                continue
            if task_id in file.early:
                file.early.discard(task_id)  # it finished before this said it exists
            elif task_id not in file.tasks:
                file.open.add(task_id)
            file.tasks[task_id] = step

    def finished_task(
        self, root: str, step: int, task_id: str, result: Any, at: float
    ) -> list[DataRef]:
        """A task of `root` is done (`result`: its `TaskResult`)."""
        file = self.files[root]
        if task_id in file.open:
            file.open.discard(task_id)
        elif task_id not in file.failed:
            file.early.add(task_id)
        file.failed.discard(task_id)
        file.tasks[task_id] = step
        file.done_at = max(file.done_at, at)
        file.items_dropped += result.items_dropped
        for stage, count in result.dropped_by.items():
            file.dropped_by[stage] = file.dropped_by.get(stage, 0) + count
        if step == self.last_step:
            file.items_out += result.items_out
            file.outputs += [ref.model_dump(mode="json", by_alias=True) for ref in result.outputs]
        if result.parts:
            file.parts.add(f"{step + 1}/{task_id}")
        return list(result.outputs)

    def parts_done(self, root: str, key: str) -> None:
        """Every part of the id list `key` ("<step>/<owner>") of `root` has arrived."""
        self.files[root].parts.discard(key)

    def outputs_listed(self, root: str, refs: list[DataRef]) -> None:
        """Output refs of the last step that came in an id list."""
        self.files[root].outputs += [r.model_dump(mode="json", by_alias=True) for r in refs]

    def failed_task(self, root: str, task_id: str) -> None:
        """A task of `root` was dead-lettered."""
        file = self.files[root]
        file.open.discard(task_id)
        file.failed.add(task_id)

    def retried(self, root: str, task_id: str) -> None:
        """A dead-lettered task of `root` runs again."""
        file = self.files.get(root)
        if file is not None and task_id in file.failed:
            file.failed.discard(task_id)
            file.open.add(task_id)

    def close_if_finished(self, root: str, now: float) -> OpenFile | None:
        """Move a finished file to `closing`; returns it (None: not finished)."""
        file = self.files.get(root)
        if file is None or not file.finished:
            return None
        del self.files[root]
        done_at = file.done_at or now
        self.closing[root] = ClosedFile(
            root=root,
            path=file.path,
            size=file.size,
            mtime=file.mtime,
            seen_at=file.seen_at,
            done_at=done_at,
            items_in=file.items_out + file.items_dropped,
            items_out=file.items_out,
            items_dropped=file.items_dropped,
            dropped_by=dict(sorted(file.dropped_by.items())),
            outputs=file.outputs,
        )
        self.done += 1
        if done_at >= self.last_done_at:
            self.last_done_at = done_at
            self.last_latency_s = max(0.0, done_at - file.seen_at)
        return file

    def forget(self, root: str) -> None:
        """A closed file's lineage and mark are written."""
        self.closing.pop(root, None)

    @property
    def drained(self) -> bool:
        """No file pending, failed or waiting for its lineage to be written."""
        return not self.files and not self.closing

    def counts(self, now: float) -> FileCounts:
        """The files as a job state reports them."""
        failed = sum(1 for f in self.files.values() if f.failed and not f.open and not f.early)
        pending = [f for f in self.files.values() if f.open or f.early or f.parts]
        oldest = min((f.seen_at for f in pending), default=now)
        return FileCounts(
            seen=self.seen,
            done=self.done,
            failed=failed,
            pending=len(self.files) - failed,
            lag_s=max(0.0, now - oldest),
            last_latency_s=self.last_latency_s,
            input_closed=self.input_closed,
        )

    # -- snapshots ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Everything, as JSON-ready data (the coordinator's snapshot)."""
        return {
            "last_step": self.last_step,
            "files": {
                root: {
                    **{k: getattr(f, k) for k in ("path", "size", "mtime", "seen_at")},
                    "tasks": f.tasks,
                    "open": sorted(f.open),
                    "early": sorted(f.early),
                    "failed": sorted(f.failed),
                    "parts": sorted(f.parts),
                    "outputs": f.outputs,
                    "done_at": f.done_at,
                    "items_out": f.items_out,
                    "items_dropped": f.items_dropped,
                    "dropped_by": f.dropped_by,
                }
                for root, f in self.files.items()
            },
            "closing": {root: c.__dict__ for root, c in self.closing.items()},
            "seen": self.seen,
            "done": self.done,
            "input_closed": self.input_closed,
            "last_latency_s": self.last_latency_s,
            "last_done_at": self.last_done_at,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FileLedger:
        """The ledger `to_dict` described."""
        ledger = cls(int(raw["last_step"]))
        for root, f in raw["files"].items():
            ledger.files[root] = OpenFile(
                f["path"],
                f["size"],
                f["mtime"],
                f["seen_at"],
                tasks=dict(f["tasks"]),
                open=set(f["open"]),
                early=set(f["early"]),
                failed=set(f["failed"]),
                parts=set(f["parts"]),
                outputs=list(f["outputs"]),
                done_at=f["done_at"],
                items_out=f["items_out"],
                items_dropped=f["items_dropped"],
                dropped_by=dict(f["dropped_by"]),
            )
        ledger.closing = {root: ClosedFile(**c) for root, c in raw["closing"].items()}
        ledger.seen, ledger.done = raw["seen"], raw["done"]
        ledger.input_closed = raw["input_closed"]
        ledger.last_latency_s = raw["last_latency_s"]
        ledger.last_done_at = raw["last_done_at"]
        return ledger

"""The messages of continuous jobs: how a job watches its input, the files it takes, the
notifications that feed it, stopping it, and the per-file progress its state reports.

A continuous job's first tasks are not planned at submission: the planner takes each new input
file once (a seen-file record, created if absent) and announces it (`FilesIngested`, event
`files`) before publishing its manifest, so the coordinator always knows a file before any of
its tasks. Every task descending from a file carries the file's task id as its `root`, which is
how the coordinator counts a file done, measures its latency and folds its tasks into counts.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from gristmill.bus.base import Message
from gristmill.bus.subjects import check_token
from gristmill.tasks.ids import check_task_id

__all__ = [
    "MAX_NOTIFIED_PATHS",
    "ContinuousOptions",
    "FileCounts",
    "FilesIngested",
    "IngestNotice",
    "IngestedFile",
    "InputClosed",
    "InputWatch",
    "SeenFile",
    "StopQuery",
]

# At most this many paths in one notification (a larger drop is several, or left to the poll).
MAX_NOTIFIED_PATHS = 10_000


class ContinuousOptions(Message):
    """A job that runs until stopped, taking each new input file once. The input is listed
    every `poll_s` seconds; a file is taken once two listings in a row see the same size and
    modification time (or etag), so a file still being written is left until it is complete.
    A notified path (`IngestNotice`) is taken at once: notify only complete files."""

    poll_s: float = Field(5.0, gt=0, le=86_400)


class IngestedFile(Message):
    """One input file a continuous job took: what it was when taken, and its task."""

    path: str
    size: int = Field(ge=0)
    mtime: float = 0.0
    etag: str = ""
    task_id: str
    seen_at: float  # when the planner first saw it (its arrival, for the latency)

    @field_validator("task_id")
    @classmethod
    def _safe_id(cls, task_id: str) -> str:
        return check_task_id(task_id, "ingested file's task")


class SeenFile(IngestedFile):
    """The ingest bucket's record of a file a job took (created if absent: the first creator
    takes the file); `published` once its announcement and manifest are out."""

    published: bool = False


class InputWatch(Message):
    """The planner's latest look at a continuous job's input (ingest bucket, `watch_key`):
    listings made, when the last was, files seen but still changing (being written), and
    files that changed after they were taken (reported, never taken again)."""

    polls: int = Field(0, ge=0)
    at: float = 0.0
    waiting: int = Field(0, ge=0)
    changed: list[str] = Field(default_factory=list)


class FilesIngested(Message):
    """Event `files`: the planner took these files; their tasks go to `step` next."""

    job: str
    step: int = Field(ge=0)
    files: list[IngestedFile] = Field(min_length=1)


class InputClosed(Message):
    """Event `input_closed`: the job was stopped and takes no more files (`files` in all);
    it ends once they are processed."""

    job: str
    files: int = Field(ge=0)
    at: float


class StopQuery(Message):
    """A request on `gm.<team>.api.stop`: stop continuous job `job` taking new files."""

    job: str

    @field_validator("job")
    @classmethod
    def _job_token(cls, job: str) -> str:
        return check_token("job", job)


class IngestNotice(Message):
    """A notification on `gm.<team>.ingest.<job>`: these files are complete and new (an
    object store's event hook, say). Each must be under the job's inputs; a path seen before
    is ignored."""

    paths: list[str] = Field(min_length=1, max_length=MAX_NOTIFIED_PATHS)


class FileCounts(Message):
    """A continuous job's files: taken (`seen`), done (outputs final), failed (a task of it was
    dead-lettered), pending (taken, not finished); `lag_s` is the age of the oldest pending
    file, `last_latency_s` the time from arrival to output of the file finished last."""

    seen: int = Field(0, ge=0)
    done: int = Field(0, ge=0)
    failed: int = Field(0, ge=0)
    pending: int = Field(0, ge=0)
    lag_s: float = Field(0.0, ge=0)
    last_latency_s: float | None = None
    input_closed: bool = False
    waiting: int = Field(0, ge=0)  # seen, still being written (the planner's last look)
    changed: list[str] = Field(default_factory=list)  # changed after they were taken

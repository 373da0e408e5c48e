"""The messages services exchange over NATS: small JSON documents.

Every message carries `schema` (the version of this contract). A message of another version
is refused with an error saying which versions are involved, so a mixed deployment fails
loudly instead of misreading fields.

Data travels in the store; messages carry `DataRef`s. The one exception is a small task (at most
`INLINE_MAX_BYTES` encoded): its bytes ride inside the `DataRef`, which saves a store write and a
read per task where tasks are tiny and many. Long lists of task ids (a fan-out into a million
tasks, a job over a million input files) travel in `IdsPart` events of at most `IDS_PER_PART`
ids, so that no message outgrows the server's maximum payload.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from gristmill.bus.base import SCHEMA_VERSION, Message, MessageError, peek
from gristmill.bus.continuous import ContinuousOptions, FileCounts
from gristmill.bus.subjects import check_token
from gristmill.tasks.ids import check_task_id

__all__ = [
    "IDS_PER_PART",
    "INLINE_MAX_BYTES",
    "MAX_GROUP",
    "SCHEMA_VERSION",
    "ApiReply",
    "DataRef",
    "DeadLetter",
    "GcQuery",
    "IdsPart",
    "JobOptions",
    "JobSpec",
    "JobStarted",
    "JobState",
    "ManifestSplit",
    "Message",
    "MessageError",
    "RetryQuery",
    "StatusQuery",
    "StepCounts",
    "StepInfo",
    "TaskEntry",
    "TaskFailed",
    "TaskManifest",
    "TaskResult",
    "TaskRetried",
    "TasksDone",
    "WhyQuery",
    "WorkerState",
    "peek",
]

_SHA256 = r"^[0-9a-f]{64}$"

# A task whose bytes are at most this long travels inside its manifest.
INLINE_MAX_BYTES = 4096
# At most this many tasks share one manifest (delivered, acknowledged and recorded as one).
MAX_GROUP = 64
# Id lists longer than this travel in `IdsPart` events of this many ids each.
IDS_PER_PART = 1000


class DataRef(Message):
    """Where a task's bytes are and how to know they are intact: a slice (`offset`, `bytes`) of
    the stored object `uri`, or, for a small task, the bytes themselves (`inline`, base64).
    With `part` >= 0 the slice is a payload of several small tasks and the task is its `part`-th
    (`offset`, `bytes` and `sha256` describe the whole payload; `rows` the task)."""

    uri: str = ""
    offset: int = Field(0, ge=0)
    inline: str = ""
    part: int = Field(-1, ge=-1)
    format: Literal["gristmill-task", "gristmill-plan"] = "gristmill-task"
    rows: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=_SHA256)

    @model_validator(mode="after")
    def _one_place(self) -> Self:
        if bool(self.uri) == bool(self.inline):
            raise ValueError("a DataRef names a stored object (uri) or carries its bytes (inline)")
        if self.part >= 0 and not self.uri:
            raise ValueError("a part of a shared payload is in a stored object (uri)")
        return self


class JobOptions(Message):
    """How the service treats a job's tasks.

    `task_timeout_s` bounds one task's run (a stage may set its own); past it the step's actor
    is stopped and the attempt counts as failed.
    """

    max_deliver: int = Field(5, ge=1, le=100)
    ack_wait_s: float = Field(60.0, gt=0)
    retry_backoff_s: float = Field(1.0, ge=0)
    task_timeout_s: float = Field(3600.0, gt=0)
    fuse: bool = True
    priority: int = Field(0, ge=-100, le=100)  # among the team's jobs: higher runs first


class JobSpec(Message):
    """A submission: which team, what pipeline, on what.

    `request_id` names the submission: the job id derives from it, so a client that retries a
    submission (after a lost reply) gets the same job, not a second one. `pipeline` is a spec
    naming registered stages; an entry with `code` names a class in the submitter's own module,
    stored by value in the store (`code` lists those modules), which only a service that trusts
    the submitter runs. `inputs` fill the first stage's `file_paths` and `output` the last
    stage's `path`; `initial` are tasks the submitter stored itself, to start from. With
    `continuous` the job runs until stopped, taking each new input file once.
    """

    team: str
    request_id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    pipeline: dict[str, Any]
    inputs: list[str] = Field(default_factory=list)
    output: str | None = None
    initial: list[DataRef] = Field(default_factory=list)
    initial_ids: list[str] = Field(default_factory=list)
    code: list[str] = Field(default_factory=list)
    options: JobOptions = Field(default_factory=lambda: JobOptions())
    continuous: ContinuousOptions | None = None  # runs until stopped, taking new files

    @field_validator("team")
    @classmethod
    def _team_token(cls, team: str) -> str:
        return check_token("team", team)

    @field_validator("initial_ids")
    @classmethod
    def _safe_ids(cls, ids: list[str]) -> list[str]:
        for task_id in ids:
            check_task_id(task_id, "initial task")
        return ids

    @model_validator(mode="after")
    def _initial_named(self) -> Self:
        if len(self.initial) != len(self.initial_ids):
            raise ValueError(
                f"initial has {len(self.initial)} tasks but initial_ids {len(self.initial_ids)}"
            )
        return self

    @field_validator("code")
    @classmethod
    def _code_hashes(cls, code: list[str]) -> list[str]:
        for sha in code:
            if not re.fullmatch(_SHA256, sha):
                raise ValueError(f"code {sha!r} is not a SHA-256")
        return code


class StepInfo(Message):
    """One physical step of a job's plan, as the service schedules it."""

    name: str
    pool: Literal["cpu", "gpu"]
    gpus: float = Field(0.0, ge=0)
    gpu_memory_gb: float = Field(0.0, ge=0)
    task_timeout_s: float | None = Field(None, gt=0)  # the stage's own; None: the job's


class JobStarted(Message):
    """The planner accepted a job: its steps, and the tasks it publishes first.

    Steps before `first_step` ran in the planner (listing and grouping input files); `initial`
    are the ids of the tasks published to `first_step`, in order, or, when there are more than
    `IDS_PER_PART`, `initial_parts` says how many `IdsPart` events (owner "") carry them.
    """

    job: str
    team: str
    pipeline: str
    steps: list[StepInfo]
    first_step: int = Field(ge=0)
    initial: list[str] = Field(default_factory=list)
    initial_parts: int = Field(0, ge=0)
    submitted_at: float
    continuous: bool = False  # its first tasks come as files arrive (`FilesIngested`)
    output: str = ""  # where its last stage writes (a continuous job's lineage goes there)


class TaskEntry(Message):
    """One task to run: its id, the data it reads, and the attempts it had before this message
    (a task split out of a group keeps its count). `parent_span` is the span id (16 hex) of the
    attempt that made it, which its own attempts link to ("" for a job's first tasks)."""

    task_id: str
    dataset: str = ""
    inputs: list[DataRef]
    parents: list[str] = Field(default_factory=list)
    attempts: int = Field(0, ge=0)
    parent_span: str = Field("", pattern=r"^([0-9a-f]{16})?$")
    root: str = ""  # a continuous job's: the task of the input file it descends from

    @field_validator("task_id")
    @classmethod
    def _safe_id(cls, task_id: str) -> str:
        return check_task_id(task_id)


class TaskManifest(Message):
    """One message on `gm.<team>.task.<job>.<step>`: the work of one step, a single task or a
    group of small ones, delivered, acknowledged and recorded as one.

    `key` is the message's deterministic identity (its `Nats-Msg-Id` and done-record key): a
    single task's id, or the id a group derives from the message that made it. A group that
    fails or is interrupted is split into single tasks before anything of it is retried.
    """

    job: str
    step: int = Field(ge=0)
    step_name: str
    key: str
    tasks: list[TaskEntry] = Field(min_length=1, max_length=MAX_GROUP)

    @field_validator("job")
    @classmethod
    def _job_token(cls, job: str) -> str:
        return check_token("job", job)

    @field_validator("key")
    @classmethod
    def _safe_key(cls, key: str) -> str:
        return check_task_id(key, "manifest key")

    @model_validator(mode="after")
    def _single_is_named_by_its_task(self) -> Self:
        if len(self.tasks) == 1 and self.key != self.tasks[0].task_id:
            raise ValueError(f"a single-task manifest is keyed by its task id, not {self.key!r}")
        return self


class TaskResult(Message):
    """What one task made: its outputs' ids (the next step's tasks) and, on the last step, the
    outputs themselves. When a task made more than `IDS_PER_PART` outputs, `parts` `IdsPart`
    events (owner: this task) carry them instead."""

    task_id: str
    output_ids: list[str] = Field(default_factory=list)
    outputs: list[DataRef] = Field(default_factory=list)
    parts: int = Field(0, ge=0)
    items_in: int = Field(ge=0)
    items_out: int = Field(ge=0)
    items_dropped: int = Field(ge=0)
    wall_time_s: float = Field(ge=0)
    dropped_by: dict[str, int] = Field(default_factory=dict)  # per stage (filter) that dropped
    root: str = ""  # the input file's task it descends from (continuous jobs)


class TasksDone(Message):
    """Every task of one manifest finished (event `task_done`; also the manifest's done record,
    so that a redelivered manifest announces exactly this again)."""

    job: str
    step: int = Field(ge=0)
    key: str
    results: list[TaskResult]
    attempt: int = Field(ge=1)
    worker: str = ""
    at: float = 0.0  # when the done record was made (a file's output time)


class ManifestSplit(Message):
    """The done record of a group manifest that failed or was interrupted: its tasks were
    published again one by one (with the attempts each had), so a redelivery does nothing."""

    job: str
    step: int = Field(ge=0)
    key: str
    task_ids: list[str]


class IdsPart(Message):
    """Part `part` of `parts` of a long id list (event `ids`): the tasks `owner` made for step
    `step` (owner "" is the planner's first tasks), and on the last step their refs."""

    job: str
    step: int = Field(ge=0)
    owner: str
    part: int = Field(ge=0)
    parts: int = Field(ge=1)
    ids: list[str]
    outputs: list[DataRef] = Field(default_factory=list)
    root: str = ""  # the input file's task the owner descends from (continuous jobs)


class TaskFailed(Message):
    """A task gave up after its last attempt (it is in the dead-letter stream)."""

    job: str
    step: int = Field(ge=0)
    task_id: str
    error: str
    traceback: str = ""
    attempts: int = Field(ge=1)
    worker: str = ""
    root: str = ""  # the input file's task it descends from (continuous jobs)


class TaskRetried(Message):
    """A dead-lettered task was published again (`gristmill dlq retry`): its job reopens."""

    job: str
    step: int = Field(ge=0)
    task_id: str
    root: str = ""


class ApiReply(Message):
    """The answer to a request on `gm.<team>.api.<verb>`: `ok` with a `job` and/or `data`, or
    not ok with an `error` a person can act on."""

    ok: bool
    job: str | None = None
    error: str = ""
    data: dict[str, Any] = Field(default_factory=dict)


class StatusQuery(Message):
    """A request on `gm.<team>.api.status`: one job, or every job when `job` is None."""

    job: str | None = None


class WhyQuery(Message):
    """A request on `gm.<team>.api.why`: what became of document `doc` in job `job`."""

    job: str
    doc: str = Field(min_length=1, max_length=1024)

    @field_validator("job")
    @classmethod
    def _job_token(cls, job: str) -> str:
        return check_token("job", job)


class RetryQuery(Message):
    """A request on `gm.<team>.api.retry`: run dead-lettered task `task_id` of step `step` of
    job `job` again (the coordinator takes the manifest from its own dead-letter stream)."""

    job: str
    step: int = Field(ge=0)
    task_id: str

    @field_validator("job")
    @classmethod
    def _job_token(cls, job: str) -> str:
        return check_token("job", job)

    @field_validator("task_id")
    @classmethod
    def _task_id(cls, task_id: str) -> str:
        return check_task_id(task_id, "retried task")


class GcQuery(Message):
    """A request on `gm.<team>.api.gc`: archive the jobs finished more than `older_than_s`
    ago (None: the service's retention period)."""

    older_than_s: float | None = Field(None, ge=0)


class DeadLetter(Message):
    """What the dead-letter stream keeps of a task that failed its last attempt: its manifest
    (a single task), or for a message no manifest could be read from, the raw payload."""

    manifest: TaskManifest | None = None
    raw: str = ""
    subject: str = ""
    failure: TaskFailed


class StepCounts(Message):
    """Progress of one step of a job."""

    name: str
    published: int = Field(0, ge=0)
    done: int = Field(0, ge=0)
    failed: int = Field(0, ge=0)
    items_in: int = Field(0, ge=0)
    items_out: int = Field(0, ge=0)
    items_dropped: int = Field(0, ge=0)
    dropped_by: dict[str, int] = Field(default_factory=dict)  # documents per stage (filter)


class JobState(Message):
    """Where a job stands; `steps` counts per step (empty before the planner's start event).

    `failed` is a job that cannot give a correct result (two tasks with one id, an event no
    coordinator could read); `error` says why. `retries` counts dead letters published again.
    `archived_at` is set once the job's payloads, events and done records have been collected
    (`gristmill gc`).
    """

    job: str
    state: Literal["pending", "running", "completed", "completed_with_failures", "failed"]
    pipeline: str = ""
    tasks_published: int = Field(0, ge=0)
    tasks_done: int = Field(0, ge=0)
    tasks_failed: int = Field(0, ge=0)
    items_in: int = Field(0, ge=0)
    items_out: int = Field(0, ge=0)
    items_dropped: int = Field(0, ge=0)
    steps: list[StepCounts] = Field(default_factory=list)
    retries: int = Field(0, ge=0)
    submitted_at: float = 0.0
    finished_at: float | None = None
    archived_at: float | None = None
    error: str = ""
    trace_id: str = ""  # the job's trace (32 hex), for `gristmill trace`
    files: FileCounts | None = None  # a continuous job's input files

    @property
    def finished(self) -> bool:
        """Whether the job will change no more (short of a dead-letter retry)."""
        return self.state in ("completed", "completed_with_failures", "failed")


class WorkerState(Message):
    """A worker's heartbeat: its pool, slots, what it pulls and runs, when it last beat; whether
    it is ready or draining (stopping: it fetches nothing more), since when it is ready, how
    many actors it is setting up, and each step's measured set-up time."""

    worker: str
    pool: Literal["cpu", "gpu"]
    slots: int = Field(ge=1)
    running: int = Field(0, ge=0)
    steps: list[str] = Field(default_factory=list)  # "<job>/<step>" it pulls
    actors_busy: int = Field(0, ge=0)
    actors_idle: int = Field(0, ge=0)
    at: float
    status: Literal["ready", "draining"] = "ready"
    ready_at: float = 0.0
    setting_up: int = Field(0, ge=0)
    setup_s: dict[str, float] = Field(default_factory=dict)  # "<job>/<step>" -> seconds


class StepSlots(Message):
    """The slots a scaling decision plans for one step of one job."""

    team: str
    job: str
    step: int = Field(ge=0)
    slots: int = Field(ge=0)


class ScalingDecision(Message):
    """The coordinator's scaling decision (in the service's scaling bucket, key `decision`):
    workers wanted per pool, the workers to drain, GPUs the GPU pool's demand packs into, slots
    planned per step, and why. `seq` grows with every decision that changed something."""

    seq: int = Field(ge=0)
    at: float
    workers: dict[str, int]
    remove: dict[str, list[str]] = Field(default_factory=dict)
    gpus: dict[str, int] = Field(default_factory=dict)
    slots: list[StepSlots] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)


class SupervisedWorkers(Message):
    """What a supervisor runs (in the service's scaling bucket, key `processes`): its worker
    processes alive and not draining, name -> pool, as of `at`. A worker listed here that does
    not beat yet is starting."""

    supervisor: str
    at: float
    workers: dict[str, Literal["cpu", "gpu"]] = Field(default_factory=dict)

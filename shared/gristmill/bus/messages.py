"""The messages services exchange over NATS: small JSON documents, never data.

Every message carries `schema` (the version of this contract). A message of another version
is refused with an error saying which versions are involved, so a mixed deployment fails
loudly instead of misreading fields. Data travels in the store; messages carry `DataRef`s.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gristmill.bus.subjects import check_token
from gristmill.errors import GristmillError

__all__ = [
    "SCHEMA_VERSION",
    "ApiReply",
    "DataRef",
    "DeadLetter",
    "JobOptions",
    "JobSpec",
    "JobStarted",
    "JobState",
    "Message",
    "MessageError",
    "StatusQuery",
    "StepCounts",
    "StepInfo",
    "TaskDone",
    "TaskFailed",
    "TaskManifest",
]

SCHEMA_VERSION = 1
_SHA256 = r"^[0-9a-f]{64}$"


class MessageError(GristmillError, ValueError):
    """Bytes that are not a valid message of the expected kind and version."""


class Message(BaseModel):
    """Base of every bus message: strict fields, frozen, versioned."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_version: int = Field(SCHEMA_VERSION, alias="schema")

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"message schema {version} is not the one this gristmill speaks "
                f"({SCHEMA_VERSION}); run the same gristmill version on every service"
            )
        return version

    def to_json(self) -> bytes:
        """The message as compact JSON bytes (with `schema`)."""
        return self.model_dump_json(by_alias=True).encode()

    @classmethod
    def from_json(cls, payload: bytes | str) -> Self:
        """Parse and validate; errors name the message kind and the fields at fault."""
        try:
            return cls.model_validate_json(payload)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(message)'}: {e['msg']}"
                for e in exc.errors()
            )
            raise MessageError(f"invalid {cls.__name__}: {problems}") from exc


class DataRef(Message):
    """Where a task's bytes are in the store, and how to know they are intact."""

    uri: str = Field(min_length=1)
    format: Literal["gristmill-task"] = "gristmill-task"
    rows: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=_SHA256)


class JobOptions(Message):
    """How the service treats a job's tasks."""

    max_deliver: int = Field(5, ge=1, le=100)
    ack_wait_s: float = Field(60.0, gt=0)
    retry_backoff_s: float = Field(1.0, ge=0)
    fuse: bool = True


class JobSpec(Message):
    """A submission: which team, what pipeline, on what.

    `request_id` names the submission: the job id derives from it, so a client that retries a
    submission (after a lost reply) gets the same job, not a second one. `pipeline` is a spec
    naming registered stages; an entry with `code` names a class in the submitter's own module,
    stored by value in the store (`code` lists those modules), which only a service that trusts
    the submitter runs. `inputs` fill the first stage's `file_paths` and `output` the last
    stage's `path`; `initial` are tasks the submitter stored itself, to start from.
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

    @field_validator("team")
    @classmethod
    def _team_token(cls, team: str) -> str:
        return check_token("team", team)

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


class JobStarted(Message):
    """The planner accepted a job: its steps, and the tasks it published first.

    Steps before `first_step` ran in the planner (listing and grouping input files); `initial`
    are the ids of the tasks published to `first_step`, in order.
    """

    job: str
    team: str
    pipeline: str
    steps: list[StepInfo]
    first_step: int = Field(ge=0)
    initial: list[str]
    submitted_at: float


class TaskManifest(Message):
    """One task to run: the step it is for, its id, and the data it reads."""

    job: str
    step: int = Field(ge=0)
    step_name: str
    task_id: str = Field(min_length=1)
    dataset: str = ""
    inputs: list[DataRef]
    parents: list[str] = Field(default_factory=list)

    @field_validator("job")
    @classmethod
    def _job_token(cls, job: str) -> str:
        return check_token("job", job)


class TaskDone(Message):
    """A task finished: what it produced and what it did to the documents."""

    job: str
    step: int = Field(ge=0)
    task_id: str
    outputs: list[DataRef]
    output_ids: list[str]
    items_in: int = Field(ge=0)
    items_out: int = Field(ge=0)
    items_dropped: int = Field(ge=0)
    wall_time_s: float = Field(ge=0)
    attempt: int = Field(ge=1)
    worker: str = ""


class TaskFailed(Message):
    """A task gave up after its last attempt (it is in the dead-letter stream)."""

    job: str
    step: int = Field(ge=0)
    task_id: str
    error: str
    traceback: str = ""
    attempts: int = Field(ge=1)
    worker: str = ""


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


class DeadLetter(Message):
    """What the dead-letter stream keeps of a task that failed its last attempt."""

    manifest: TaskManifest
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


class JobState(Message):
    """Where a job stands; `steps` counts per step (empty before the planner's start event)."""

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
    submitted_at: float = 0.0
    finished_at: float | None = None
    error: str = ""

    @property
    def finished(self) -> bool:
        """Whether the job will change no more (short of a dead-letter retry)."""
        return self.state in ("completed", "completed_with_failures", "failed")

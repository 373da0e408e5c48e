"""The messages services exchange over NATS: small JSON documents, never data.

Every message carries `schema` (the version of this contract). A message of another version
is refused with an error saying which versions are involved, so a mixed deployment fails
loudly instead of misreading fields. Data travels in the store; messages carry `DataRef`s.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gristmill.bus.subjects import check_token
from gristmill.errors import GristmillError

__all__ = [
    "SCHEMA_VERSION",
    "DataRef",
    "JobOptions",
    "JobSpec",
    "JobState",
    "Message",
    "MessageError",
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
    trusted_code: bool = False


class JobSpec(Message):
    """A submission: which team, what pipeline (a spec naming registered stages), on what."""

    team: str
    pipeline: dict[str, Any]
    inputs: list[str] = Field(default_factory=list)
    output: str
    options: JobOptions = Field(default_factory=lambda: JobOptions())

    @field_validator("team")
    @classmethod
    def _team_token(cls, team: str) -> str:
        return check_token("team", team)


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


class JobState(Message):
    """Where a job stands."""

    job: str
    state: Literal["pending", "running", "completed", "completed_with_failures", "failed"]
    tasks_published: int = Field(0, ge=0)
    tasks_done: int = Field(0, ge=0)
    tasks_failed: int = Field(0, ge=0)
    items_in: int = Field(0, ge=0)
    items_out: int = Field(0, ge=0)
    items_dropped: int = Field(0, ge=0)

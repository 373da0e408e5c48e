"""The base of every bus message: strict, frozen, versioned JSON (`Message`), and its error."""

from __future__ import annotations

import json
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gristmill.errors import GristmillError, field_problems

__all__ = ["SCHEMA_VERSION", "Message", "MessageError", "peek"]

# 3: trace fields (TaskEntry.parent_span, TaskResult/StepCounts.dropped_by, JobState.trace_id)
# 4: teams (JobOptions.priority, RetryQuery: the coordinator retries a dead letter)
# 5: continuous jobs (JobSpec.continuous, roots of tasks, TasksDone.at, the files events)
SCHEMA_VERSION = 5


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
            problems = field_problems(exc.errors(), "(message)")
            raise MessageError(f"invalid {cls.__name__}: {problems}") from exc


def peek(payload: bytes | str) -> dict[str, Any]:
    """The raw fields of a message that failed to parse (another version, say), for naming what
    it was about; {} when it is not even a JSON object."""
    try:
        raw = json.loads(payload)
    except ValueError:
        return {}
    return raw if isinstance(raw, dict) else {}

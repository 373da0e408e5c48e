"""The bus contract: subjects and the messages services exchange (data stays in the store)."""

from gristmill.bus.messages import (
    SCHEMA_VERSION,
    DataRef,
    JobOptions,
    JobSpec,
    JobState,
    Message,
    MessageError,
    TaskDone,
    TaskFailed,
    TaskManifest,
)
from gristmill.bus.subjects import (
    Subject,
    api_subject,
    event_subject,
    parse_subject,
    task_subject,
    team_subjects,
)

__all__ = [
    "SCHEMA_VERSION",
    "DataRef",
    "JobOptions",
    "JobSpec",
    "JobState",
    "Message",
    "MessageError",
    "Subject",
    "TaskDone",
    "TaskFailed",
    "TaskManifest",
    "api_subject",
    "event_subject",
    "parse_subject",
    "task_subject",
    "team_subjects",
]

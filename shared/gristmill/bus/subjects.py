"""NATS subjects, built and parsed in one place (no subject strings anywhere else).

    gm.<team>.task.<job>.<step>     task manifests of one step of one job
    gm.<team>.event.<job>.<kind>    what happened (task_done, task_failed, job_state, ...)
    gm.<team>.api.<verb>            requests (submit, status, ...)
    gm.<team>.dlq.<job>.<step>      tasks that failed their last attempt, with the error
    gm.<team>.span.<job>.<kind>     trace spans of a job's task attempts
    gm.<team>.ingest.<job>          notifications of new input files of a continuous job

A team owns `gm.<team>.>`: its NATS user may reach nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from gristmill.errors import GristmillError

__all__ = [
    "PREFIX",
    "Subject",
    "api_subject",
    "check_token",
    "dlq_filter",
    "dlq_subject",
    "event_filter",
    "event_subject",
    "ingest_filter",
    "ingest_subject",
    "parse_subject",
    "span_subject",
    "stream_subjects",
    "task_subject",
    "team_subjects",
]

PREFIX = "gm"
_TOKEN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")

Kind = Literal["task", "event", "api", "dlq", "span", "ingest"]


class SubjectError(GristmillError, ValueError):
    """A name that cannot be a subject token, or a subject that is not gristmill's."""


def check_token(what: str, value: str) -> str:
    """`value` if it can be one subject token: lower-case letters, digits, '_' and '-',
    at most 64 characters (no '.', '*', '>' or spaces, which NATS gives meaning)."""
    if not _TOKEN.fullmatch(value):
        raise SubjectError(
            f"{what} {value!r} cannot be used in a subject: use 1-64 lower-case letters, "
            f"digits, '_' or '-', starting with a letter or digit"
        )
    return value


def _subject(team: str, kind: str, *named: tuple[str, str]) -> str:
    tokens = [check_token(what, value) for what, value in named]
    return ".".join((PREFIX, check_token("team", team), kind, *tokens))


def task_subject(team: str, job: str, step: str) -> str:
    """Where the manifests of `step` of `job` are published."""
    return _subject(team, "task", ("job", job), ("step", step))


def event_subject(team: str, job: str, kind: str) -> str:
    """Where events of `kind` about `job` are published."""
    return _subject(team, "event", ("job", job), ("event kind", kind))


def dlq_subject(team: str, job: str, step: str) -> str:
    """Where tasks of `step` of `job` that failed their last attempt go."""
    return _subject(team, "dlq", ("job", job), ("step", step))


def span_subject(team: str, job: str, kind: str) -> str:
    """Where spans of `kind` (e.g. task attempts) of `job` are published."""
    return _subject(team, "span", ("job", job), ("span kind", kind))


def ingest_subject(team: str, job: str) -> str:
    """Where notifications of new input files of continuous job `job` go."""
    return _subject(team, "ingest", ("job", job))


def ingest_filter(team: str) -> str:
    """Every notification of the team (the planner's subscription)."""
    return f"{PREFIX}.{check_token('team', team)}.ingest.*"


def stream_subjects(team: str, kind: Kind) -> str:
    """Every subject of one kind of a team (what its stream holds)."""
    return f"{PREFIX}.{check_token('team', team)}.{kind}.>"


def api_subject(team: str, verb: str) -> str:
    """Where a team's requests for `verb` go."""
    return _subject(team, "api", ("verb", verb))


def event_filter(team: str, job: str | None = None) -> str:
    """Every event of the team, or of one of its jobs (a subscription filter)."""
    return f"{PREFIX}.{check_token('team', team)}.event.{check_token('job', job) if job else '*'}.>"


def dlq_filter(team: str, job: str | None = None) -> str:
    """Every dead letter of the team, or of one of its jobs (a subscription filter)."""
    return f"{PREFIX}.{check_token('team', team)}.dlq.{check_token('job', job) if job else '*'}.>"


def team_subjects(team: str) -> str:
    """Every subject a team owns (`gm.<team>.>`), for its permissions and streams."""
    return f"{PREFIX}.{check_token('team', team)}.>"


@dataclass(frozen=True)
class Subject:
    """A parsed gristmill subject."""

    team: str
    kind: Kind
    job: str | None = None
    step: str | None = None
    event: str | None = None
    verb: str | None = None


def parse_subject(subject: str) -> Subject:
    """The parts of a subject built by this module; anything else is an error naming it."""
    parts = subject.split(".")
    shapes = {"task": 5, "event": 5, "api": 4, "dlq": 5, "span": 5, "ingest": 4}
    if (
        len(parts) < 3
        or parts[0] != PREFIX
        or parts[2] not in shapes
        or len(parts) != shapes[parts[2]]
    ):
        raise SubjectError(f"not a gristmill subject: {subject!r}")
    for part in parts[1:]:
        check_token("subject token", part)
    team, kind = parts[1], parts[2]
    if kind == "task":
        return Subject(team, "task", job=parts[3], step=parts[4])
    if kind == "event":
        return Subject(team, "event", job=parts[3], event=parts[4])
    if kind == "dlq":
        return Subject(team, "dlq", job=parts[3], step=parts[4])
    if kind == "span":
        return Subject(team, "span", job=parts[3], event=parts[4])
    if kind == "ingest":
        return Subject(team, "ingest", job=parts[3])
    return Subject(team, "api", verb=parts[3])

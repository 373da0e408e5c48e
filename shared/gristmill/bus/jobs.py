"""Names the services agree on beyond subjects: job ids, KV keys, consumer names, manifest keys
and the `Nats-Msg-Id`s that make every publish repeatable. All deterministic, so a step killed
at any instruction and run again writes the same keys and publishes the same ids.
"""

from __future__ import annotations

import hashlib
import re

from pydantic import Field

from gristmill.bus.messages import DataRef, JobSpec, Message, StepInfo
from gristmill.bus.subjects import check_token

__all__ = [
    "DECISION_KEY",
    "PROCESSES_KEY",
    "SCALING_BUCKET",
    "JobRecord",
    "archived_key",
    "assignment_key",
    "closed_key",
    "consumer_name",
    "done_key",
    "file_key",
    "group_key",
    "job_id_for",
    "job_key",
    "msg_id",
    "published_key",
    "seen_key",
    "snapshot_key",
    "state_key",
    "stopped_key",
    "watch_key",
    "worker_key",
]


_KEY_SAFE = re.compile(r"[A-Za-z0-9_-]{1,128}")


class JobRecord(Message):
    """What the planner stores for a job (jobs bucket, `job_key`): the accepted spec, with
    `inputs` and `output` already written into the pipeline, its steps, and where its first
    manifests are kept (`plan`, in the store) until they are all published."""

    job: str
    spec: JobSpec
    steps: list[StepInfo]
    first_step: int = Field(ge=0)
    fingerprint: str
    plan: DataRef | None = None
    submitted_at: float = 0.0
    extensions: list[str] = Field(default_factory=list)  # a continuous job's input files
    dataset: str = ""  # the dataset name of its file tasks


def job_id_for(team: str, request_id: str) -> str:
    """The job a submission becomes: the same request id always names the same job."""
    digest = hashlib.sha256(f"{check_token('team', team)}\0{request_id}".encode()).hexdigest()
    return f"j{digest[:15]}"


def group_key(source_key: str, step: int, chunk: int) -> str:
    """The key of the `chunk`-th group manifest the message `source_key` made for `step`."""
    digest = hashlib.sha256(f"group\0{source_key}\0{step}\0{chunk}".encode()).hexdigest()
    return f"g{digest[:31]}"


def job_key(job: str) -> str:
    """Jobs bucket: the job's record."""
    return f"job.{check_token('job', job)}"


def published_key(job: str) -> str:
    """Jobs bucket: present once every first manifest of the job is published."""
    return f"published.{check_token('job', job)}"


def state_key(job: str) -> str:
    """Jobs bucket: the job's latest `JobState` (written by the coordinator)."""
    return f"state.{check_token('job', job)}"


def archived_key(job: str) -> str:
    """Jobs bucket: the last `JobState` of a job whose data was collected."""
    return f"archived.{check_token('job', job)}"


def stopped_key(job: str) -> str:
    """Jobs bucket: present once a continuous job was stopped (it takes no more files)."""
    return f"stopped.{check_token('job', job)}"


def file_key(path: str) -> str:
    """The part of ingest keys (and a file's task id) that stands for an input path."""
    return hashlib.sha256(path.encode()).hexdigest()[:32]


def seen_key(job: str, path: str) -> str:
    """Ingest bucket: the record of an input file a continuous job took (`SeenFile`)."""
    return f"seen.{check_token('job', job)}.{file_key(path)}"


def closed_key(job: str, root: str) -> str:
    """Ingest bucket: present once every task of the file with task `root` has finished."""
    return f"closed.{check_token('job', job)}.{root}"


def watch_key(job: str) -> str:
    """Ingest bucket: the planner's latest look at a continuous job's input (`InputWatch`)."""
    return f"watch.{check_token('job', job)}"


def snapshot_key() -> str:
    """Jobs bucket: where the coordinator's latest snapshot of the team's state is stored."""
    return "snapshot"


def done_key(job: str, step: int, key: str) -> str:
    """Done bucket: the record of a finished (or split) manifest."""
    safe = key if _KEY_SAFE.fullmatch(key) else hashlib.sha256(key.encode()).hexdigest()
    return f"{check_token('job', job)}.{step}.{safe}"


def worker_key(worker: str) -> str:
    """Workers bucket: a worker's heartbeat (`WorkerState`)."""
    return f"worker.{check_token('worker', worker)}"


def assignment_key(worker: str) -> str:
    """Assignments bucket: the steps a worker should pull (written by the coordinator)."""
    return f"assign.{check_token('worker', worker)}"


def consumer_name(job: str, step: int) -> str:
    """The durable pull consumer of one step of one job."""
    return f"{check_token('job', job)}_s{step}"


def msg_id(kind: str, job: str, step: int, key: str, attempt: int | str | None = None) -> str:
    """The `Nats-Msg-Id` of a publish about one manifest or task (a repeat inside the duplicate
    window is dropped by the stream)."""
    tail = "" if attempt is None else f".{attempt}"
    return f"{kind}.{job}.{step}.{key}{tail}"


# The service's own bucket (not a team's): the coordinator's scaling decision, which the
# supervisor (or another scaler) carries out.
SCALING_BUCKET = "gristmill_scaling"
DECISION_KEY = "decision"
PROCESSES_KEY = "processes"  # what the embedded supervisor runs (`SupervisedWorkers`)

"""A team's JetStream layout: its streams and KV buckets, with explicit limits, created
idempotently at start-up (the same call on every service start; a changed limit is applied).

| name                     | holds                                    | full / old           |
| ------------------------ | ---------------------------------------- | -------------------- |
| GM_<TEAM>_TASKS          | task manifests, `gm.<team>.task.>`        | work queue; no new   |
| GM_<TEAM>_EVENTS         | events, `gm.<team>.event.>`               | no new; never ages   |
| GM_<TEAM>_DLQ            | dead letters, `gm.<team>.dlq.>`           | no new; never ages   |
| GM_<TEAM>_SPANS          | trace spans, `gm.<team>.span.>`           | drops oldest; ages   |
| KV gm_<team>_jobs        | job records, published marks, job states | latest value         |
| KV gm_<team>_done        | one record per finished manifest         | latest value         |
| KV gm_<team>_assignments | the steps each worker pulls              | latest value         |
| KV gm_<team>_workers     | heartbeats                               | expire after a TTL   |
| KV gm_<team>_ingest      | continuous jobs: files seen, files done  | latest value         |

Nothing that is work or the record of work may be discarded: the tasks, events and dead-letter
streams refuse a publish when full (`discard: new`), publishers wait and retry
(`bus.client.Publisher`), and what is finished is collected explicitly (`gristmill gc`), never
by age. Publishes carry `Nats-Msg-Id`; the duplicate window turns a repeated publish (a retried
step re-publishing its children) into a no-op.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from gristmill.bus.subjects import (
    PREFIX,
    Kind,
    SubjectError,
    check_token,
    stream_subjects,
    task_subject,
)

__all__ = [
    "BUCKETS",
    "StreamLimits",
    "TeamLayout",
    "ensure_layout",
    "layout_name",
    "patiently",
    "step_consumer",
    "stream_of",
]

BUCKETS = ("jobs", "done", "assignments", "workers", "ingest")


@dataclass(frozen=True)
class StreamLimits:
    """Limits every stream and bucket of a team is created with (each team has its own)."""

    max_bytes: int = 1 << 30
    spans_max_bytes: int = 256 << 20
    spans_max_age_s: float = 7 * 24 * 3600.0
    duplicate_window_s: float = 120.0
    heartbeat_ttl_s: float = 30.0
    replicas: int = 1  # copies on a NATS cluster's servers (1 embedded, 3 in a cluster)


def layout_name(team: str) -> str:
    """The part of stream and bucket names that stands for `team` (upper-cased for streams).
    Two teams with the same one would share streams: `ServiceSettings` refuses that."""
    return check_token("team", team).replace("-", "_")


@dataclass(frozen=True)
class TeamLayout:
    """The names of one team's streams and buckets."""

    team: str

    def __post_init__(self) -> None:
        check_token("team", self.team)

    @property
    def _upper(self) -> str:
        return layout_name(self.team).upper()

    @property
    def tasks_stream(self) -> str:
        """Work-queue stream of task manifests."""
        return f"GM_{self._upper}_TASKS"

    @property
    def events_stream(self) -> str:
        """Stream of events."""
        return f"GM_{self._upper}_EVENTS"

    @property
    def dlq_stream(self) -> str:
        """Stream of dead letters."""
        return f"GM_{self._upper}_DLQ"

    @property
    def spans_stream(self) -> str:
        """Stream of trace spans."""
        return f"GM_{self._upper}_SPANS"

    def bucket(self, purpose: str) -> str:
        """KV bucket name for `purpose` (one of `BUCKETS`)."""
        return f"gm_{layout_name(self.team)}_{purpose}"

    def bucket_stream(self, purpose: str) -> str:
        """The stream behind a KV bucket."""
        return f"KV_{self.bucket(purpose)}"

    def stream_configs(self, limits: StreamLimits) -> list[dict[str, Any]]:
        """The four streams as nats-py `StreamConfig` keyword arguments."""
        kept = {"max_bytes": limits.max_bytes, "max_age": 0.0, "discard": "new"}
        spans = {"max_bytes": limits.spans_max_bytes, "max_age": limits.spans_max_age_s}
        streams: list[tuple[str, Kind, str, dict[str, Any]]] = [
            (self.tasks_stream, "task", "workqueue", kept),
            (self.events_stream, "event", "limits", kept),
            (self.dlq_stream, "dlq", "limits", kept),
            (self.spans_stream, "span", "limits", {**spans, "discard": "old"}),
        ]
        return [
            {
                "name": name,
                "subjects": [stream_subjects(self.team, kind)],
                "retention": retention,
                "duplicate_window": limits.duplicate_window_s,
                "storage": "file",
                "num_replicas": limits.replicas,
                **bounds,
            }
            for name, kind, retention, bounds in streams
        ]


def step_consumer(team: str, job: str, step: int, ack_wait_s: float) -> Any:
    """The durable pull consumer of one step of a job (nats-py `ConsumerConfig`): explicit
    acks, redelivered for ever (workers dead-letter after `max_deliver` themselves)."""
    from nats.js import api

    from gristmill.bus.jobs import consumer_name

    return api.ConsumerConfig(
        durable_name=consumer_name(job, step),
        filter_subject=task_subject(team, job, str(step)),
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,
        max_deliver=-1,
        max_ack_pending=-1,
    )


def stream_of(subject: str) -> str:
    """The stream that holds `subject` (or a filter such as `gm.<team>.event.*.>`), named
    without asking the server: a team's user may not list streams."""
    parts = subject.split(".")
    if len(parts) < 4 or parts[0] != PREFIX:
        raise SubjectError(f"no gristmill stream holds {subject!r}")
    layout = TeamLayout(parts[1])
    streams = {
        "task": layout.tasks_stream,
        "event": layout.events_stream,
        "dlq": layout.dlq_stream,
        "span": layout.spans_stream,
    }
    if parts[2] not in streams:
        raise SubjectError(f"no gristmill stream holds {subject!r}")
    return streams[parts[2]]


async def ensure_layout(
    js: Any, layout: TeamLayout, limits: StreamLimits | None = None, wait_s: float = 60.0
) -> None:
    """Create (or bring up to date) a team's streams and buckets on JetStream context `js`.
    A cluster that is still electing its leader (or moving a stream's) answers late or not at
    all for a while: each call is retried for up to `wait_s` seconds."""
    from nats.js import api
    from nats.js.errors import BadRequestError, NotFoundError

    limits = limits or StreamLimits()
    for raw in layout.stream_configs(limits):
        config = api.StreamConfig(
            name=raw["name"],
            subjects=raw["subjects"],
            retention=api.RetentionPolicy(raw["retention"]),
            storage=api.StorageType(raw["storage"]),
            discard=api.DiscardPolicy(raw["discard"]),
            max_bytes=raw["max_bytes"],
            max_age=raw["max_age"],
            duplicate_window=raw["duplicate_window"],
            num_replicas=raw["num_replicas"],
        )
        try:
            await patiently(partial(js.stream_info, config.name), wait_s)
        except NotFoundError:
            await patiently(partial(js.add_stream, config), wait_s)
        else:
            await patiently(partial(js.update_stream, config), wait_s)
    for purpose in BUCKETS:
        ttl = limits.heartbeat_ttl_s if purpose == "workers" else None
        bucket = api.KeyValueConfig(
            bucket=layout.bucket(purpose),
            ttl=ttl,
            storage=api.StorageType.FILE,
            direct=True,
            max_bytes=limits.max_bytes if purpose == "done" else -1,
            replicas=limits.replicas,
        )
        try:
            await patiently(partial(js.create_key_value, bucket), wait_s)
        except BadRequestError:  # exists with other settings: keep the data, and its copies
            await _set_replicas(js, layout.bucket_stream(purpose), limits.replicas, wait_s)
            await patiently(partial(js.key_value, layout.bucket(purpose)), wait_s)


async def patiently(call: Callable[[], Awaitable[Any]], wait_s: float) -> Any:
    """`call()`, again while JetStream is not answering yet (a cluster without a leader)."""
    import asyncio

    from nats.errors import NoRespondersError, TimeoutError
    from nats.js.errors import ServiceUnavailableError

    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        try:
            return await call()
        except (TimeoutError, NoRespondersError, ServiceUnavailableError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)  # the cluster elects in about a second; nothing to await


async def _set_replicas(js: Any, stream: str, replicas: int, wait_s: float) -> None:
    """Give an existing stream (a bucket's) `replicas` copies, if it has another number."""
    info = await patiently(partial(js.stream_info, stream), wait_s)
    if info.config.num_replicas != replicas:
        info.config.num_replicas = replicas
        await patiently(partial(js.update_stream, info.config), wait_s)

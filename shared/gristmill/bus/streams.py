"""A team's JetStream layout: its streams and KV buckets, with explicit limits, created
idempotently at start-up (the same call on every service start; a changed limit is applied).

| name              | holds                                   | retention            |
| ----------------- | --------------------------------------- | -------------------- |
| GM_<TEAM>_TASKS   | task manifests, `gm.<team>.task.>`       | work queue           |
| GM_<TEAM>_EVENTS  | events, `gm.<team>.event.>`              | limits (age, bytes)  |
| GM_<TEAM>_DLQ     | dead letters, `gm.<team>.dlq.>`          | limits (age, bytes)  |
| GM_<TEAM>_SPANS   | trace spans, `gm.<team>.span.>`          | limits (age, bytes)  |
| KV gm_<team>_jobs | job specs and states                    | latest value         |
| KV gm_<team>_done | one record per finished (job, step, task)| latest value, TTL    |
| KV gm_<team>_assignments | worker slots per step            | latest value         |

Publishes carry `Nats-Msg-Id`; the streams' duplicate window turns a repeated publish (a retried
step re-publishing its children) into a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gristmill.bus.subjects import Kind, check_token, stream_subjects

__all__ = ["StreamLimits", "TeamLayout", "ensure_layout"]


@dataclass(frozen=True)
class StreamLimits:
    """Limits every stream and bucket of a team is created with."""

    max_bytes: int = 1 << 30
    max_age_s: float = 7 * 24 * 3600.0
    duplicate_window_s: float = 120.0
    done_ttl_s: float = 7 * 24 * 3600.0


@dataclass(frozen=True)
class TeamLayout:
    """The names of one team's streams and buckets."""

    team: str

    def __post_init__(self) -> None:
        check_token("team", self.team)

    @property
    def _upper(self) -> str:
        return self.team.upper().replace("-", "_")

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
        """KV bucket name for `purpose` (jobs, done, assignments)."""
        return f"gm_{self.team.replace('-', '_')}_{purpose}"

    def stream_configs(self, limits: StreamLimits) -> list[dict[str, Any]]:
        """The four streams as nats-py `StreamConfig` keyword arguments."""
        common = {
            "max_bytes": limits.max_bytes,
            "max_age": limits.max_age_s,
            "duplicate_window": limits.duplicate_window_s,
            "storage": "file",
        }
        streams: list[tuple[str, Kind, str]] = [
            (self.tasks_stream, "task", "workqueue"),
            (self.events_stream, "event", "limits"),
            (self.dlq_stream, "dlq", "limits"),
            (self.spans_stream, "span", "limits"),
        ]
        return [
            {
                "name": name,
                "subjects": [stream_subjects(self.team, kind)],
                "retention": retention,
                **common,
            }
            for name, kind, retention in streams
        ]


async def ensure_layout(js: Any, layout: TeamLayout, limits: StreamLimits | None = None) -> None:
    """Create (or bring up to date) a team's streams and buckets on JetStream context `js`."""
    from nats.js import api
    from nats.js.errors import BadRequestError, NotFoundError

    limits = limits or StreamLimits()
    for raw in layout.stream_configs(limits):
        config = api.StreamConfig(
            name=raw["name"],
            subjects=raw["subjects"],
            retention=api.RetentionPolicy(raw["retention"]),
            storage=api.StorageType(raw["storage"]),
            max_bytes=raw["max_bytes"],
            max_age=raw["max_age"],
            duplicate_window=raw["duplicate_window"],
        )
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
        else:
            await js.update_stream(config)
    for purpose, ttl in (("jobs", None), ("done", limits.done_ttl_s), ("assignments", None)):
        try:
            await js.create_key_value(
                api.KeyValueConfig(
                    bucket=layout.bucket(purpose), ttl=ttl, storage=api.StorageType.FILE
                )
            )
        except BadRequestError:  # exists with other settings: keep the data, not the settings
            await js.key_value(layout.bucket(purpose))

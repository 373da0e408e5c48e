"""What each NATS user may do: the permissions the server enforces for a team, and its private
inbox prefix.

All users live in one account (see docs/teams.md for why not one account per team). A team's
user may only send requests to its own API subjects and read its own events, dead letters and
spans through pull consumers of its own (`bus.client.stored`); replies reach it on an inbox
no other user may subscribe to. It may also notify its continuous jobs of new files
(`gm.<team>.ingest.<job>`, which the planner checks). It cannot touch any other subject,
stream, consumer or KV bucket, its own tasks stream and buckets included (what a team
changes, it changes through the service's API, which checks it). The service's own users
may do everything.
"""

from __future__ import annotations

from typing import Any

from gristmill.bus.streams import TeamLayout
from gristmill.bus.subjects import PREFIX, check_token

__all__ = ["SERVICE_PERMISSIONS", "inbox_prefix", "readable_streams", "team_permissions"]

SERVICE_PERMISSIONS: dict[str, Any] = {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}


def inbox_prefix(team: str) -> str:
    """Where a team's replies arrive: `_INBOX_<team>` (no other team may subscribe to it)."""
    return f"_INBOX_{check_token('team', team)}"


def readable_streams(team: str) -> list[str]:
    """The streams a team's user may read (its events, dead letters and spans)."""
    layout = TeamLayout(team)
    return [layout.events_stream, layout.dlq_stream, layout.spans_stream]


def team_permissions(team: str) -> dict[str, Any]:
    """The server-side permissions of `team`'s user: an allow list, nothing else."""
    own = f"{PREFIX}.{check_token('team', team)}"
    publish = [f"{own}.api.>", f"{own}.ingest.*"]  # requests, and new-file notifications
    for stream in readable_streams(team):
        publish += [
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.>",  # a reader's own pull consumer
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
            f"$JS.API.CONSUMER.INFO.{stream}.>",
            f"$JS.API.CONSUMER.DELETE.{stream}.>",
        ]
    return {"publish": {"allow": publish}, "subscribe": {"allow": [f"{inbox_prefix(team)}.>"]}}

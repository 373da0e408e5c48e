"""The few NATS calls every service and client makes, in the one form they should take."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from gristmill.bus.messages import ApiReply, Message
from gristmill.bus.subjects import api_subject
from gristmill.errors import GristmillError

__all__ = ["ServiceUnavailable", "publish", "replay", "request"]


class ServiceUnavailable(GristmillError):
    """Nobody answered a request (the service is not running, or not for this team)."""


async def publish(js: Any, subject: str, message: Message, msg_id: str) -> bool:
    """Publish to a stream with `Nats-Msg-Id` = `msg_id`; False when the stream had it already
    (a repeat inside its duplicate window, which changes nothing)."""
    ack = await js.publish(subject, message.to_json(), headers={"Nats-Msg-Id": msg_id})
    return not ack.duplicate


async def request(
    nc: Any, team: str, verb: str, message: Message | None = None, timeout_s: float = 30.0
) -> ApiReply:
    """Ask the service (`gm.<team>.api.<verb>`) and parse its reply."""
    from nats.errors import NoRespondersError, TimeoutError

    subject = api_subject(team, verb)
    payload = message.to_json() if message is not None else b"{}"
    try:
        answer = await nc.request(subject, payload, timeout=timeout_s)
    except NoRespondersError:
        raise ServiceUnavailable(
            f"no gristmill service answers {subject}: is it running (`gristmill up`), and does "
            f"it serve team {team!r}?"
        ) from None
    except TimeoutError:
        raise ServiceUnavailable(
            f"the service did not answer {subject} in {timeout_s:g} s"
        ) from None
    return ApiReply.from_json(answer.data)


async def replay(js: Any, subject: str, idle_s: float = 0.0) -> AsyncIterator[Any]:
    """Every message stored on `subject` so far, oldest first, then new ones as they come when
    `idle_s` > 0 (the iteration ends after `idle_s` without a message, or at once when 0).

    Uses an ephemeral ordered consumer, so it needs no cleanup and never misses a message."""
    from nats.errors import TimeoutError
    from nats.js.api import DeliverPolicy

    sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        info = await sub.consumer_info()
        # Messages already pushed to us are no longer pending on the server: count them too.
        caught_up = info.num_pending == 0 and info.delivered.consumer_seq == 0
        while not (caught_up and idle_s <= 0):
            try:
                msg = await sub.next_msg(timeout=idle_s if caught_up else max(idle_s, 10.0))
            except TimeoutError:
                return
            caught_up = caught_up or msg.metadata.num_pending == 0
            yield msg
    finally:
        await sub.unsubscribe()

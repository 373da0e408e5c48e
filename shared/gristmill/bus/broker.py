"""The FastStream broker every service runs on, in one form: it reconnects for as long as it
takes (a restarted or failed-over server must not end a service), and says when it is back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gristmill.credentials import Credentials

__all__ = ["service_broker"]


def service_broker(
    url: str,
    reconnected: Callable[[], Awaitable[None]],
    credentials: Credentials,
    tracer_provider: Any = None,
) -> Any:
    """A `NatsBroker` on `url`, signed in with `credentials`, that never stops reconnecting
    and awaits `reconnected()` each time the connection is back. With `tracer_provider`, the
    requests its handlers answer are traced, their W3C context taken from the request's
    headers (FastStream's `NatsTelemetryMiddleware`)."""
    from faststream.nats import NatsBroker
    from faststream.security import SASLPlaintext

    middlewares: tuple[Any, ...] = ()
    if tracer_provider is not None:
        from faststream.nats.opentelemetry import NatsTelemetryMiddleware

        middlewares = (NatsTelemetryMiddleware(tracer_provider=tracer_provider),)
    return NatsBroker(
        url,
        logger=None,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        reconnected_cb=reconnected,
        middlewares=middlewares,
        security=SASLPlaintext(username=credentials.user, password=credentials.password),
        name=f"gristmill-{credentials.name}",
    )

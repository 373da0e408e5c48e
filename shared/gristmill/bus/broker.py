"""The FastStream broker every service runs on, in one form: it reconnects for as long as it
takes (a restarted or failed-over server must not end a service), and says when it is back."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gristmill.credentials import Credentials

__all__ = ["ServiceApp", "nats_servers", "service_broker"]


def nats_servers(url: str) -> list[str]:
    """The servers of a NATS URL: one, or a cluster's seeds separated by commas
    (`nats://n1:4222,nats://n2:4222`), so that a client starts while any of them is up."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ValueError(f"no NATS server in {url!r}")
    return servers


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
        nats_servers(url),
        logger=None,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        reconnected_cb=reconnected,
        middlewares=middlewares,
        security=SASLPlaintext(username=credentials.user, password=credentials.password),
        name=f"gristmill-{credentials.name}",
    )


class ServiceApp:
    """The FastStream application a service process runs on `broker`. With `health_port`, it
    also serves HTTP probes there: `/healthz` (the process answers: liveness) and `/readyz`
    (its NATS connection answers a ping within 2 s: readiness), as a Kubernetes pod needs."""

    def __init__(self, broker: Any, health_port: int = 0, health_host: str = "127.0.0.1"):
        self.health = (health_host, health_port) if health_port else None
        if self.health is None:
            from faststream import FastStream

            self.app: Any = FastStream(broker)
            return
        from faststream.asgi import AsgiFastStream, AsgiResponse, get, make_ping_asgi

        @get
        async def alive(scope: Any) -> AsgiResponse:
            return AsgiResponse(b"ok\n", 200)

        routes = [("/healthz", alive), ("/readyz", make_ping_asgi(broker, timeout=2.0))]
        self.app = AsgiFastStream(broker, asgi_routes=routes)

    def after_startup(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Call `hook` once the broker is connected."""
        self.app.after_startup(hook)

    def on_shutdown(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Call `hook` when the process is asked to stop."""
        self.app.on_shutdown(hook)

    async def run(self) -> None:
        """Run until SIGINT/SIGTERM."""
        if self.health is None:
            await self.app.run()
        else:
            host, port = self.health
            # uvicorn takes SIGINT/SIGTERM, shuts the app down, then raises the signal again
            # for the handler it found: let that be a no-op, so a clean stop exits 0.
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, _stopped)
            await self.app.run(
                run_extra_options={"host": host, "port": port, "access_log": "false"}
            )


def _stopped(signum: int, frame: Any) -> None:
    """The stop signal, once more, after the application has shut down: nothing is left."""

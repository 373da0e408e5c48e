"""The coordinator's HTTP side: a JSON API, `/metrics` and the dashboard, served by uvicorn on
the coordinator's own event loop.

| route | answers |
| --- | --- |
| `GET /` | the dashboard (static files under `dashboard/`, nothing fetched from elsewhere) |
| `GET /api/jobs` | `{"jobs": [JobState, ...]}` |
| `GET /api/jobs/{job}` | the `JobState` with `history`, `backlog` and `failures` |
| `GET /api/jobs/{job}/trace[?task=ID]` | the trace as `gristmill trace --json` prints it |
| `GET /api/why/{doc}?job=JOB` | what became of a document in a job |
| `GET /api/workers` | `{"workers": [WorkerState, ...]}` |
| `GET /metrics` | Prometheus text format (`services.coordinator.metrics`) |
| `GET /healthz` | `ok` once the coordinator has replayed its events |

Every `/api` route takes `?team=` (default: the deployment's first team).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gristmill.errors import GristmillError
from services.coordinator.api import JobViews
from services.coordinator.metrics import TeamSnapshot, render

__all__ = ["HttpServer", "create_http_app"]

log = logging.getLogger("gristmill.coordinator")

DASHBOARD = Path(__file__).with_name("dashboard")
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def create_http_app(
    views: JobViews, teams: tuple[str, ...], ready: Callable[[], bool]
) -> Starlette:
    """The ASGI app over `views` for `teams`; `ready()` says whether the answers are whole."""

    def team_of(request: Request) -> str:
        team = request.query_params.get("team") or teams[0]
        if team not in teams:
            raise _NotFound(f"this service does not serve team {team!r}")
        return team

    def guarded(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except _NotFound as exc:
                return JSONResponse({"error": str(exc)}, status_code=404)
            except GristmillError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)

        return route

    async def jobs(request: Request) -> Response:
        states = views.states(team_of(request))
        return JSONResponse({"jobs": [s.model_dump(mode="json", by_alias=True) for s in states]})

    async def job(request: Request) -> Response:
        team, name = team_of(request), request.path_params["job"]
        detail = await views.detail(team, name)
        if detail is None:
            raise _NotFound(f"no job {name!r} in team {team}")
        return JSONResponse(detail)

    async def trace(request: Request) -> Response:
        team, name = team_of(request), request.path_params["job"]
        task = request.query_params.get("task") or None
        return JSONResponse(await views.trace(team, name, task))

    async def why(request: Request) -> Response:
        team, doc = team_of(request), request.path_params["doc"]
        name = request.query_params.get("job")
        if not name:
            raise GristmillError("say which job: /api/why/DOC?job=JOB")
        fate = await views.why(team, name, doc)
        if fate is None:
            raise _NotFound(f"job {name!r} has no record of document {doc!r}")
        return JSONResponse(fate)

    async def workers(request: Request) -> Response:
        found = views.workers(team_of(request))
        return JSONResponse({"workers": [w.model_dump(mode="json", by_alias=True) for w in found]})

    async def metrics(request: Request) -> Response:
        snapshots = await asyncio.gather(*(_snapshot(views, team) for team in teams))
        return Response(render(list(snapshots)), media_type=METRICS_TYPE)

    async def health(request: Request) -> Response:
        if ready():
            return PlainTextResponse("ok")
        return PlainTextResponse("catching up", status_code=503)

    async def index(request: Request) -> Response:
        return FileResponse(DASHBOARD / "index.html")

    return Starlette(
        routes=[
            Route("/", index),
            Mount("/static", StaticFiles(directory=DASHBOARD)),
            Route("/api/jobs", guarded(jobs)),
            Route("/api/jobs/{job}", guarded(job)),
            Route("/api/jobs/{job}/trace", guarded(trace)),
            Route("/api/why/{doc}", guarded(why)),
            Route("/api/workers", guarded(workers)),
            Route("/metrics", metrics),
            Route("/healthz", health),
        ]
    )


class _NotFound(GristmillError):
    pass


async def _snapshot(views: JobViews, team: str) -> TeamSnapshot:
    states = views.states(team)
    running = [s.job for s in states if not s.finished]
    backlogs = await asyncio.gather(*(views.backlog(team, job) for job in running))
    return TeamSnapshot(
        team=team,
        jobs=states,
        backlog=dict(zip(running, backlogs, strict=True)),
        throughput={s.job: views.throughput(team, s.job) for s in states if not s.finished},
        workers=views.workers(team),
    )


class _Server(uvicorn.Server):
    """uvicorn on a loop someone else runs: the coordinator's app handles the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """Serves `app` on `host:port` (port 0: any free one) until stopped."""

    def __init__(self, app: Any, host: str, port: int):
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="off", access_log=False
        )
        self.server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> str:
        """Start serving; returns the URL once the socket listens."""
        self._task = asyncio.create_task(self.server.serve())
        config = self.server.config
        while not self.server.started:  # uvicorn says nothing else when it listens
            if self._task.done():
                reason = self._task.exception() if not self._task.cancelled() else None
                raise GristmillError(
                    f"the coordinator cannot serve HTTP on {config.host}:{config.port}: "
                    f"{reason or 'the server stopped'} (is the port taken? set "
                    f"GRISTMILL_HTTP_PORT)"
                )
            await asyncio.sleep(0.01)
        [server] = self.server.servers
        host, port = server.sockets[0].getsockname()[:2]
        url = f"http://{host}:{port}"
        log.info("HTTP API and dashboard on %s", url)
        return url

    async def stop(self) -> None:
        """Stop serving."""
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 5.0)

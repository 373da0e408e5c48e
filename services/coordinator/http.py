"""The coordinator's HTTP side: a JSON API, `/metrics` and the dashboard, served by uvicorn on
the coordinator's own event loop.

| route | answers | token |
| --- | --- | --- |
| `GET /` | the dashboard (static files under `dashboard/`, nothing fetched from elsewhere) | no |
| `GET /static/...` | the dashboard's script and style | no |
| `GET /api/jobs` | `{"jobs": [JobState, ...]}` | yes |
| `GET /api/jobs/{job}` | the `JobState` with `history`, `backlog` and `failures` | yes |
| `GET /api/jobs/{job}/trace[?task=ID]` | the trace as `gristmill trace --json` prints it | yes |
| `GET /api/why/{doc}?job=JOB` | what became of a document in a job | yes |
| `GET /api/workers` | `{"workers": [WorkerState, ...]}` | yes |
| `GET /metrics` | Prometheus text format (`services.coordinator.metrics`) | yes |
| `GET /healthz` | `ok` once the coordinator has replayed its events | no |

A route that needs a token takes `Authorization: Bearer <http_token>` (each team's is in its
credentials file; `http-tokens.json` says whose each is). A team's token reads only that team:
`?team=` may name it or be left out, another team's name is refused (403), and another team's
job ids are simply not found. The operator's token reads any team with `?team=` (default: the
deployment's first team). `/metrics` shows the token's team, or every team for the operator's.
A missing or unknown token is a 401; each refusal is logged at WARNING.
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

from gristmill.credentials import TokenTable
from gristmill.errors import GristmillError
from services.coordinator.api import JobViews
from services.coordinator.metrics import TeamSnapshot, render

__all__ = ["HttpServer", "create_http_app"]

log = logging.getLogger("gristmill.coordinator")

DASHBOARD = Path(__file__).with_name("dashboard")
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
EVERY_TEAM = "*"  # the owner of the operator's token
NO_TOKEN = (
    "a bearer token is needed: send Authorization: Bearer <the team's http_token from its "
    "credentials file>"
)
UNKNOWN_TOKEN = "this token is not known to the service"

Handler = Callable[[Request], Awaitable[Response]]


def create_http_app(
    views: JobViews, teams: tuple[str, ...], ready: Callable[[], bool], tokens: TokenTable
) -> Starlette:
    """The ASGI app over `views` for `teams`; `ready()` says whether the answers are whole;
    `tokens` says whose each bearer token is (see the module docstring)."""

    def team_of(request: Request) -> str:
        owner: str = request.state.owner
        asked = request.query_params.get("team")
        if owner != EVERY_TEAM and asked and asked != owner:
            raise _Refused(
                403,
                f"team {owner}'s token cannot read team {asked}",
                f"team {owner} asked for team {asked}'s data",
            )
        team = owner if owner != EVERY_TEAM else asked or teams[0]
        if team not in teams:
            raise _NotFound(f"this service does not serve team {team!r}")
        return team

    def guarded(handler: Handler) -> Handler:
        async def route(request: Request) -> Response:
            try:
                request.state.owner = _owner(tokens, request.headers.get("authorization"))
                return await handler(request)
            except _Refused as exc:
                log.warning("refused: %s (%s %s)", exc.who, request.method, request.url.path)
                challenge = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
                return JSONResponse({"error": str(exc)}, exc.status, headers=challenge)
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
        return JSONResponse(
            {
                "workers": [w.model_dump(mode="json", by_alias=True) for w in found],
                **views.scaling(),
            }
        )

    async def metrics(request: Request) -> Response:
        owner: str = request.state.owner
        shown = teams if owner == EVERY_TEAM else tuple(t for t in teams if t == owner)
        snapshots = await asyncio.gather(*(_snapshot(views, team) for team in shown))
        body = render(list(snapshots), views.desired_workers())
        return Response(body, media_type=METRICS_TYPE)

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
            Route("/metrics", guarded(metrics)),
            Route("/healthz", health),
        ]
    )


class _NotFound(GristmillError):
    pass


class _Refused(GristmillError):
    """A request the token does not allow: `status` 401 or 403; `who` names the caller and
    what they asked, for the log."""

    def __init__(self, status: int, message: str, who: str):
        super().__init__(message)
        self.status, self.who = status, who


def _owner(tokens: TokenTable, authorization: str | None) -> str:
    """Whose the request's bearer token is: a team, or `*` for the operator."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _Refused(401, NO_TOKEN, "no token")
    owner = tokens.owner(token.strip())
    if owner is None:
        raise _Refused(401, UNKNOWN_TOKEN, "unknown token")
    return owner


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

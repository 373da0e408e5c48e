"""The coordinator's HTTP API reads a team's data only with that team's token (or the
operator's): the refusals, their exact messages, and the log line each leaves.

httpx is not installed, so starlette's `TestClient` is not available: requests go to the ASGI
app directly (`get`)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gristmill.bus import JobState, StepCounts, WorkerState
from gristmill.credentials import Credentials, TokenTable
from services.coordinator.api import Backlog
from services.coordinator.http import create_http_app

ALPHA, BETA, OPERATOR = "alpha-token", "beta-token", "operator-token"
JOBS = {"alpha": "j-alpha-1", "beta": "j-beta-1"}
TOKENS = TokenTable.of(
    [
        Credentials("team", "alpha", "alpha", "pw", ALPHA),
        Credentials("team", "beta", "beta", "pw", BETA),
        Credentials("service", "operator", "_gm_operator", "pw", OPERATOR),
        Credentials("service", "worker", "_gm_worker", "pw", "worker-token"),  # not in the table
    ]
)
NO_TOKEN = {
    "error": "a bearer token is needed: send Authorization: Bearer <the team's http_token "
    "from its credentials file>"
}
UNKNOWN_TOKEN = {"error": "this token is not known to the service"}
API_ROUTES = [
    "/api/jobs",
    "/api/jobs/j-alpha-1",
    "/api/jobs/j-alpha-1/trace",
    "/api/why/d-1?job=j-alpha-1",
    "/api/workers",
]


class TeamViews:
    """`JobViews` over fixed data: each team has one running job, one worker, and a record
    of document d-1 in its job."""

    def states(self, team: str) -> list[JobState]:
        step = StepCounts(name="read", published=2, done=1, items_in=10, items_out=10)
        return [JobState(job=JOBS[team], state="running", steps=[step], submitted_at=1.0)]

    def state(self, team: str, job: str) -> JobState | None:
        return next((s for s in self.states(team) if s.job == job), None)

    async def detail(self, team: str, job: str) -> dict[str, Any] | None:
        state = self.state(team, job)
        if state is None:
            return None
        return {**state.model_dump(mode="json"), "history": [], "backlog": [], "failures": []}

    async def trace(self, team: str, job: str, task: str | None = None) -> dict[str, Any]:
        spans = [{"name": f"job {job}", "span_id": "a1"}] if job == JOBS[team] else []
        return {"trace_id": "t", "spans": spans}

    async def why(self, team: str, job: str, doc_id: str) -> dict[str, Any] | None:
        return {"id": doc_id, "job": job, "fate": "kept"} if job == JOBS[team] else None

    async def backlog(self, team: str, job: str) -> list[Backlog]:
        return [Backlog(step=0, name="read", pending=1, ack_pending=0)]

    def throughput(self, team: str, job: str) -> list[float]:
        return [3.0]

    def workers(self, team: str) -> list[WorkerState]:
        return [WorkerState(worker=f"{team}-cpu-0", pool="cpu", slots=2, at=0.0)]

    def scaling(self) -> dict[str, Any]:
        decision = {"seq": 1, "at": 0.0, "workers": {"cpu": 2}, "slots": [], "reasons": []}
        return {"autoscaled": {"cpu": [1, 2]}, "decisions": [decision]}

    def desired_workers(self) -> dict[str, int]:
        return {"cpu": 2}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


APP = create_http_app(TeamViews(), ("alpha", "beta"), lambda: True, TOKENS)  # type: ignore[arg-type]


def get(target: str, token: str | None = None, authorization: str | None = None) -> Answer:
    """GET `target` (a path with its query) from the app, with `token` as the bearer token or
    `authorization` as the whole header."""
    path, _, query = target.partition("?")
    if token is not None:
        authorization = f"Bearer {token}"
    headers = [(b"host", b"testserver")]
    if authorization is not None:
        headers.append((b"authorization", authorization.encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    sent: list[MutableMapping[str, Any]] = []

    async def go() -> None:
        requested, answered = False, asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await answered.wait()  # a file response listens for the client going away
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered.set()

        await asyncio.wait_for(APP(scope, receive, send), 10.0)

    asyncio.run(go())
    [start] = [m for m in sent if m["type"] == "http.response.start"]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    answer_headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return Answer(start["status"], answer_headers, body)


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "gristmill.coordinator" and r.levelno == logging.WARNING
    ]


def metric_teams(text: bytes) -> set[str]:
    return {
        s.labels["team"]
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if "team" in s.labels
    }


@pytest.mark.parametrize("route", [*API_ROUTES, "/metrics"])
def test_a_request_without_a_token_is_refused_and_logged(
    route: str, caplog: pytest.LogCaptureFixture
) -> None:
    answer = get(route)
    assert (answer.status, answer.json()) == (401, NO_TOKEN)
    assert answer.headers["www-authenticate"] == "Bearer"
    assert refusals(caplog) == [f"refused: no token (GET {route.partition('?')[0]})"]


@pytest.mark.parametrize("header", ["Basic YWxwaGE6cHc=", "Bearer", "Bearer   ", ALPHA])
def test_an_authorization_header_without_a_bearer_token_counts_as_none(header: str) -> None:
    answer = get("/api/jobs", authorization=header)
    assert (answer.status, answer.json()) == (401, NO_TOKEN)


@pytest.mark.parametrize("token", ["not-a-token", "worker-token"])
@pytest.mark.parametrize("route", [*API_ROUTES, "/metrics"])
def test_a_token_the_service_does_not_know_is_refused_and_logged(
    route: str, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    answer = get(route, token)
    assert (answer.status, answer.json()) == (401, UNKNOWN_TOKEN)
    assert answer.headers["www-authenticate"] == "Bearer"
    assert refusals(caplog) == [f"refused: unknown token (GET {route.partition('?')[0]})"]


def test_a_bearer_scheme_in_any_case_is_accepted() -> None:
    assert get("/api/jobs", authorization=f"bearer {ALPHA}").status == 200


@pytest.mark.parametrize("asked", ["", "?team=alpha"])
def test_a_team_token_lists_only_its_own_teams_jobs(asked: str) -> None:
    answer = get(f"/api/jobs{asked}", ALPHA)
    assert answer.status == 200
    assert [j["job"] for j in answer.json()["jobs"]] == ["j-alpha-1"]
    assert [w["worker"] for w in get("/api/workers", BETA).json()["workers"]] == ["beta-cpu-0"]


@pytest.mark.parametrize("asked", ["beta", "gamma"])
@pytest.mark.parametrize("route", API_ROUTES)
def test_a_team_token_naming_another_team_is_refused_and_logged(
    route: str, asked: str, caplog: pytest.LogCaptureFixture
) -> None:
    joiner = "&" if "?" in route else "?"
    answer = get(f"{route}{joiner}team={asked}", ALPHA)
    assert (answer.status, answer.json()) == (
        403,
        {"error": f"team alpha's token cannot read team {asked}"},
    )
    assert "www-authenticate" not in answer.headers
    path = route.partition("?")[0]
    assert refusals(caplog) == [f"refused: team alpha asked for team {asked}'s data (GET {path})"]


def test_another_teams_job_is_not_found_with_a_team_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    detail = get("/api/jobs/j-beta-1", ALPHA)
    assert (detail.status, detail.json()) == (404, {"error": "no job 'j-beta-1' in team alpha"})
    missing = get("/api/jobs/j-nowhere", ALPHA)
    assert (missing.status, missing.json()) == (404, {"error": "no job 'j-nowhere' in team alpha"})
    why = get("/api/why/d-1?job=j-beta-1", ALPHA)
    assert (why.status, why.json()) == (
        404,
        {"error": "job 'j-beta-1' has no record of document 'd-1'"},
    )
    assert get("/api/jobs/j-beta-1/trace", ALPHA).json()["spans"] == []
    assert refusals(caplog) == []  # not found is not a refusal: nothing says the job exists


def test_the_operator_token_reads_every_team() -> None:
    assert [j["job"] for j in get("/api/jobs", OPERATOR).json()["jobs"]] == ["j-alpha-1"]
    assert [j["job"] for j in get("/api/jobs?team=beta", OPERATOR).json()["jobs"]] == ["j-beta-1"]
    assert get("/api/jobs/j-beta-1?team=beta", OPERATOR).json()["job"] == "j-beta-1"
    assert get("/api/why/d-1?job=j-beta-1&team=beta", OPERATOR).json()["fate"] == "kept"
    unknown = get("/api/jobs?team=gamma", OPERATOR)
    assert (unknown.status, unknown.json()) == (
        404,
        {"error": "this service does not serve team 'gamma'"},
    )


def test_metrics_show_the_tokens_team_or_every_team_for_the_operator() -> None:
    alpha = get("/metrics", ALPHA)
    assert alpha.status == 200
    assert alpha.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert metric_teams(alpha.body) == {"alpha"}
    assert b'team="beta"' not in alpha.body
    assert metric_teams(get("/metrics", BETA).body) == {"beta"}
    assert metric_teams(get("/metrics", OPERATOR).body) == {"alpha", "beta"}


@pytest.mark.parametrize(
    "route", ["/healthz", "/", "/static/dashboard.js", "/static/dashboard.css"]
)
def test_health_and_the_dashboards_files_need_no_token(
    route: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert get(route).status == 200
    assert refusals(caplog) == []


def test_the_operator_token_reads_the_decision_keda_scales_each_pool_on() -> None:
    # deploy/k8s/keda.yaml's metrics-api triggers read decisions.0.workers.<pool> with it.
    answer = get("/api/workers", OPERATOR)
    assert answer.status == 200
    decision = answer.json()["decisions"][0]
    assert decision["workers"] == {"cpu": 2}

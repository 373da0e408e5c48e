"""Two teams on one service, on a real nats-server: each is refused everything of the other's
(by the NATS server's permissions, by the service's checks, by the HTTP API's tokens), every
refusal shows in a log line naming the team and the operation, untrusted code is refused by
class, and each quota is reached with its exact message while nothing throttled is lost."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js import api

from gristmill import Pipeline, fs
from gristmill.bus import JobSpec, TaskManifest
from gristmill.client import JobRejected, ServiceClient, new_request_id
from gristmill.credentials import CredentialError, read_credentials
from gristmill.embedded import EmbeddedService
from gristmill.executors.service import ServiceExecutor
from gristmill.stages.text.io import JsonlReader, JsonlWriter
from gristmill.teams import TeamsConfig

from service_helpers import ROOT, fifos, finished, read_fifo, run_in_thread, service_under, until
from service_stages import GateOn, SleepEach

pytestmark = pytest.mark.integration

TEAMS = """\
teams:
  alpha: {max_running_jobs: 1, max_in_flight_tasks: 1}
  beta: {}
  gamma: {max_store_bytes: 2000}
trusted_teams: [alpha]
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("teams")


@pytest.fixture(scope="module")
def service(base: Path) -> Iterator[EmbeddedService]:
    (base / "teams.yaml").write_text(TEAMS)
    config = TeamsConfig.load(base / "teams.yaml")
    with service_under(base, workers=1, slots=3, teams_config=config) as running:
        yield running


def executor(service: EmbeddedService, team: str, **config: Any) -> ServiceExecutor:
    return ServiceExecutor(service.url, {"credentials": str(service.credentials(team)), **config})


def call(service: EmbeddedService, team: str, what: Callable[[ServiceClient], Any]) -> Any:
    async def go() -> Any:
        client = await ServiceClient.connect(service.url, credentials=service.credentials(team))
        try:
            return await what(client)
        finally:
            await client.close()

    return asyncio.run(go())


def token(service: EmbeddedService, team: str) -> str:
    return read_credentials(service.credentials(team)).http_token


def http(service: EmbeddedService, path: str, bearer: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    request = urllib.request.Request(service.http_url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = answer.read().decode()
            return answer.status, json.loads(body) if path.startswith("/api") else body
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read().decode())


def log_of(service: EmbeddedService, name: str) -> str:
    return (service.state_dir / "logs" / f"{name}.log").read_text(errors="replace")


def nats_log(service: EmbeddedService) -> str:
    return (service.state_dir / "nats" / "nats.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def beta_job(service: EmbeddedService, base: Path) -> dict[str, Any]:
    """A job of team beta with one dead-lettered task (a malformed line), its letter, and a
    file in beta's store."""
    data = base / "beta-in"
    data.mkdir()
    (data / "a.jsonl").write_text('{"id": "b1", "text": "fine"}\n')
    (data / "b.jsonl").write_text('{"id": "b2", "text": \n')
    run = executor(service, "beta", max_deliver=1, allow_failures=True)
    out = base / "beta" / "out"
    Pipeline("beta-job", [JsonlReader(file_paths=str(data)), JsonlWriter(path=str(out))]).run(run)
    assert run.job is not None
    assert run.state is not None
    assert run.state.state == "completed_with_failures"
    [letter] = call(service, "beta", lambda c: c.dead_letters(run.job))
    [plan] = Path(service.settings.store_root, "beta", run.job).glob("plan.*.jsonl")  # type: ignore[union-attr]
    first = TaskManifest.from_json(plan.read_text().splitlines()[0])
    return {"job": run.job, "letter": letter, "ref": first.tasks[0].inputs[0]}


# -- the bus: refused by the NATS server ---------------------------------------------------


def test_a_connection_without_credentials_or_with_a_wrong_password_is_refused(
    service: EmbeddedService,
) -> None:
    async def attempt(**options: Any) -> str:
        try:
            await nats.connect(
                service.url, allow_reconnect=False, max_reconnect_attempts=0, **options
            )
        except Exception as exc:
            return str(exc)
        raise AssertionError("the server let the connection in")

    assert asyncio.run(attempt()) == "nats: 'Authorization Violation'"
    assert asyncio.run(attempt(user="alpha", password="guess")) == "nats: 'Authorization Violation'"
    until(lambda: 'authentication error - User "alpha"' in nats_log(service), "the refusal logged")


def test_every_cross_team_operation_on_the_bus_is_refused_and_logged(
    service: EmbeddedService, beta_job: dict[str, Any]
) -> None:
    job = beta_job["job"]
    letter = beta_job["letter"]
    refusals: list[str] = []

    async def scenario() -> dict[str, str]:
        alpha = read_credentials(service.credentials("alpha"))

        async def refused(exc: Exception) -> None:
            refusals.append(str(exc))

        nc = await nats.connect(service.url, error_cb=refused, **alpha.connect_options())
        js = nc.jetstream(timeout=1.0)
        outcome: dict[str, str] = {}

        async def attempt(name: str, operation: Any) -> None:
            try:
                await operation()
            except Exception as exc:
                outcome[name] = type(exc).__name__
            else:
                outcome[name] = "ALLOWED"

        async def publish(subject: str) -> None:
            await nc.publish(subject, b"{}")
            await nc.flush()

        async def subscribe(subject: str) -> None:
            sub = await nc.subscribe(subject)
            await nc.flush()
            await asyncio.sleep(0)  # the server's -ERR arrives on the same connection
            await sub.next_msg(timeout=0.5)  # nothing ever comes: it timed out or was refused

        async def consume(consumer: str) -> None:
            sub = await js.pull_subscribe_bind(consumer, stream="GM_BETA_TASKS")
            await sub.fetch(1, timeout=1)

        ops: dict[str, Any] = {
            "request beta's status": lambda: nc.request("gm.beta.api.status", b"{}", timeout=1),
            "request a submission as beta": lambda: nc.request(
                "gm.beta.api.submit", b"{}", timeout=1
            ),
            "request a retry of beta's task": lambda: nc.request(
                "gm.beta.api.retry", b"{}", timeout=1
            ),
            "publish a manifest to beta's tasks": lambda: publish(f"gm.beta.task.{job}.1"),
            "publish an event to beta's events": lambda: publish(f"gm.beta.event.{job}.task_done"),
            "JetStream-publish to beta's dead letters": lambda: js.publish(
                f"gm.beta.dlq.{job}.1", b"{}"
            ),
            "subscribe to beta's subjects": lambda: subscribe("gm.beta.>"),
            "subscribe to beta's replies": lambda: subscribe("_INBOX_beta.>"),
            "subscribe to every inbox": lambda: subscribe("_INBOX.>"),
            "subscribe to everything": lambda: subscribe(">"),
            "stream info of beta's events": lambda: js.stream_info("GM_BETA_EVENTS"),
            "stream info of beta's tasks": lambda: js.stream_info("GM_BETA_TASKS"),
            "list the streams": lambda: js.streams_info(),
            "account info": lambda: js.account_info(),
            "read beta's events": lambda: js.subscribe(
                "gm.beta.event.>", stream="GM_BETA_EVENTS", ordered_consumer=True
            ),
            "read beta's dead letters": lambda: js.subscribe(
                "gm.beta.dlq.>", stream="GM_BETA_DLQ", ordered_consumer=True
            ),
            "read beta's spans": lambda: js.subscribe(
                "gm.beta.span.>", stream="GM_BETA_SPANS", ordered_consumer=True
            ),
            "consume beta's tasks": lambda: consume(f"{job}_s1"),
            "create a consumer on beta's tasks": lambda: js.add_consumer(
                "GM_BETA_TASKS", api.ConsumerConfig(durable_name="stolen")
            ),
            "KV get from beta's jobs": lambda: js.key_value("gm_beta_jobs"),
            "KV put into beta's jobs": lambda: js.publish(f"$KV.gm_beta_jobs.job.{job}", b"x"),
            "KV direct get from beta's jobs": lambda: nc.request(
                "$JS.API.DIRECT.GET.KV_gm_beta_jobs",
                b'{"last_by_subj": "$KV.gm_beta_jobs.x"}',
                timeout=1,
            ),
            "create an object store": lambda: js.create_object_store("gm_beta_objects"),
            "open an object store": lambda: js.object_store("gm_beta_objects"),
            "delete beta's events stream": lambda: js.delete_stream("GM_BETA_EVENTS"),
            "purge beta's dead letters": lambda: js.purge_stream("GM_BETA_DLQ"),
            "publish to alpha's own tasks directly": lambda: publish("gm.alpha.task.jx.0"),
            "read alpha's own KV directly": lambda: js.key_value("gm_alpha_jobs"),
        }
        for name, operation in ops.items():
            await attempt(name, operation)
        await nc.close()
        return outcome

    outcome = asyncio.run(scenario())
    allowed = [name for name, result in outcome.items() if result == "ALLOWED"]
    subscribes = [n for n in outcome if n.startswith("subscribe")]
    # a refused subscription or publish still returns on the client; its refusal is logged
    assert not [n for n in allowed if n not in subscribes and "publish" not in n], outcome
    assert len(outcome) >= 25
    subjects = {
        "gm.beta.api.status",
        "gm.beta.api.submit",
        "gm.beta.api.retry",
        f"gm.beta.task.{job}.1",
        f"gm.beta.event.{job}.task_done",
        f"gm.beta.dlq.{job}.1",
        "$JS.API.STREAM.INFO.GM_BETA_EVENTS",
        "$JS.API.STREAM.INFO.GM_BETA_TASKS",
        "$JS.API.STREAM.LIST",
        "$JS.API.INFO",
        "$JS.API.CONSUMER.CREATE.GM_BETA_EVENTS",
        "$JS.API.CONSUMER.CREATE.GM_BETA_DLQ",
        "$JS.API.CONSUMER.CREATE.GM_BETA_SPANS",
        f"$JS.API.CONSUMER.MSG.NEXT.GM_BETA_TASKS.{job}_s1",
        "$JS.API.CONSUMER.DURABLE.CREATE.GM_BETA_TASKS.stolen",
        "$JS.API.STREAM.INFO.KV_gm_beta_jobs",
        f"$KV.gm_beta_jobs.job.{job}",
        "$JS.API.DIRECT.GET.KV_gm_beta_jobs",
        "$JS.API.STREAM.CREATE.OBJ_gm_beta_objects",
        "$JS.API.STREAM.INFO.OBJ_gm_beta_objects",
        "$JS.API.STREAM.DELETE.GM_BETA_EVENTS",
        "$JS.API.STREAM.PURGE.GM_BETA_DLQ",
        "gm.alpha.task.jx.0",
        "$JS.API.STREAM.INFO.KV_gm_alpha_jobs",
    }
    subscriptions = {"gm.beta.>", "_INBOX_beta.>", "_INBOX.>", ">"}

    def logged() -> set[str]:
        text = nats_log(service)
        found = set(re.findall(r'"\$G/user:alpha" - Publish Violation - Subject "([^"]+)"', text))
        found |= set(
            re.findall(r'"\$G/user:alpha" - Subscription Violation - Subject "([^"]+)"', text)
        )
        return found

    until(lambda: subjects | subscriptions <= logged(), "every refusal in the server's log")
    assert len(refusals) >= len(subjects | subscriptions)
    assert letter.failure.job == job  # the letter alpha could not reach is really there


# -- the service: refused by its own checks ------------------------------------------------


def test_the_services_api_gives_a_team_nothing_of_another_team(
    service: EmbeddedService, beta_job: dict[str, Any], base: Path
) -> None:
    job, letter, ref = beta_job["job"], beta_job["letter"], beta_job["ref"]

    async def as_alpha(client: ServiceClient) -> dict[str, str]:
        errors = {}
        for name, operation in {
            "status": lambda: client.status(job),
            "why": lambda: client.why(job, "b1"),
            "retry": lambda: client.retry(letter),
            "dead letters": lambda: client.dead_letters(job),
            "trace": lambda: client.trace(job),
        }.items():
            try:
                result = await operation()
            except Exception as exc:
                errors[name] = str(exc)
            else:
                errors[name] = f"ANSWERED {result!r}"
        forged = JobSpec(
            team="beta", request_id=new_request_id(), pipeline={"name": "x", "stages": []}
        )
        try:
            await client.submit(forged)
        except JobRejected as exc:
            errors["submit as beta"] = str(exc)
        reading = JobSpec(
            team="alpha",
            request_id=new_request_id(),
            pipeline={
                "name": "x",
                "stages": [{"stage": "JsonlWriter", "params": {"path": str(base / "alpha" / "x")}}],
            },
            initial=[ref],
            initial_ids=["stolen"],
        )
        try:
            await client.submit(reading)
        except JobRejected as exc:
            errors["read beta's store through a forged DataRef"] = str(exc)
        return errors

    errors = call(service, "alpha", as_alpha)
    assert errors["status"] == f"no job {job!r} in team alpha"
    assert errors["why"] == f"no job {job!r} in team alpha"
    assert errors["retry"] == (
        f"team alpha has no dead letter of task {letter.failure.task_id} of step "
        f"{letter.failure.step} of job {job}"
    )
    assert errors["dead letters"] == "ANSWERED []"
    assert errors["trace"].startswith(f"no spans stored for job or task {job!r} of team alpha")
    assert errors["submit as beta"] == "a job of team 'beta' sent to team 'alpha'"
    assert errors["read beta's store through a forged DataRef"] == (
        f"initial task {ref.uri!r} is not in team alpha's store"
    )
    until(
        lambda: (
            "team alpha: refused to retry: team alpha has no dead letter"
            in log_of(service, "coordinator")
        ),
        "the coordinator's log line",
    )
    planner = log_of(service, "planner")
    assert "refused a job of team beta sent to team alpha's subject" in planner
    assert f"rejected a job of team alpha: initial task {ref.uri!r}" in planner


def test_a_worker_refuses_a_reference_outside_the_jobs_team_store(
    service: EmbeddedService, beta_job: dict[str, Any]
) -> None:
    from gristmill.store import StoreError, TaskStore

    store = TaskStore(service.settings.store_root)  # type: ignore[union-attr]
    ref = beta_job["ref"]
    with pytest.raises(StoreError) as refused:
        store.get(ref, "alpha")
    assert str(refused.value) == (
        f"reference {ref.uri!r} is outside team alpha's store {store.team_root('alpha')}; refused"
    )
    assert store.get(ref, "beta").task_id  # beta's own job reads it


def test_the_http_api_shows_a_team_only_its_own_jobs(
    service: EmbeddedService, beta_job: dict[str, Any]
) -> None:
    job = beta_job["job"]
    status, body = http(service, "/api/jobs", token(service, "beta"))
    assert status == 200
    assert job in {j["job"] for j in body["jobs"]}
    status, body = http(service, "/api/jobs", token(service, "alpha"))
    assert status == 200
    assert job not in {j["job"] for j in body["jobs"]}
    assert http(service, "/api/jobs?team=beta", token(service, "alpha")) == (
        403,
        {"error": "team alpha's token cannot read team beta"},
    )
    status, _ = http(service, f"/api/jobs/{job}", token(service, "alpha"))
    assert status == 404
    status, body = http(service, f"/api/jobs/{job}/trace", token(service, "alpha"))
    assert (status, body["spans"]) == (200, [])  # only ever alpha's own spans are read
    status, body = http(service, "/api/jobs", None)
    assert status == 401
    status, text = http(service, "/metrics", token(service, "alpha"))
    assert status == 200
    assert 'team="beta"' not in text
    until(
        lambda: (
            "refused: team alpha asked for team beta's data (GET /api/jobs)"
            in log_of(service, "coordinator")
        ),
        "the coordinator's log line",
    )


def test_a_missing_unreadable_or_rejected_credentials_file_is_a_clear_error(
    service: EmbeddedService, base: Path
) -> None:
    missing = base / "nope.creds"
    with pytest.raises(CredentialError) as caught:
        call_with(service, missing)
    assert str(caught.value) == f"credentials file {missing} does not exist"
    unreadable = base / "garbled.creds"
    unreadable.write_text("not json")
    with pytest.raises(CredentialError) as caught:
        call_with(service, unreadable)
    assert str(caught.value).startswith(f"{unreadable} is not a gristmill credentials file (")
    stale = base / "stale.creds"
    mine = json.loads(service.credentials("alpha").read_text())
    stale.write_text(json.dumps({**mine, "password": "rotated-away"}))
    with pytest.raises(CredentialError) as caught:
        call_with(service, stale)
    assert str(caught.value) == (
        f"the NATS server at {service.url} rejected the credentials in {stale} (team alpha): "
        f"authorization violation"
    )


def call_with(service: EmbeddedService, path: Path) -> None:
    async def go() -> None:
        client = await ServiceClient.connect(service.url, credentials=path)
        await client.close()

    asyncio.run(go())


# -- code trust and output roots -----------------------------------------------------------


def test_an_untrusted_team_may_use_registered_stages_only_and_the_error_names_the_class(
    service: EmbeddedService, base: Path
) -> None:
    pipeline = Pipeline(
        "own", [JsonlReader(file_paths=str(ROOT / "examples" / "data")), SleepEach(0.0)]
    )
    with pytest.raises(JobRejected) as caught:
        pipeline.run(executor(service, "beta"))
    assert str(caught.value) == (
        "stage #3 is the class service_stages:SleepEach, which is not registered on this "
        "service; team beta may use registered stages only (its own classes run where the "
        "teams file's trusted_teams names it and the service is not --registered-only): "
        "install the stage where the service runs, under the entry points 'gristmill.stages'"
    )


def test_each_team_writes_under_its_own_output_root_only(
    service: EmbeddedService, base: Path
) -> None:
    stages = [
        JsonlReader(file_paths=str(ROOT / "examples" / "data" / "part-000.jsonl")),
        JsonlWriter(path=str(base / "alpha" / "taken")),
    ]
    with pytest.raises(JobRejected) as caught:
        Pipeline("elsewhere", stages).run(executor(service, "beta"))
    assert str(caught.value) == (
        f"stage #3 'JsonlWriter': path {str(base / 'alpha' / 'taken')!r} is outside the "
        f"output root {base / 'beta'} this service lets the team write to"
    )


# -- quotas --------------------------------------------------------------------------------


def test_max_running_jobs_refuses_a_second_job_naming_the_quota_and_the_running_one(
    service: EmbeddedService, base: Path
) -> None:
    gate = fifos(base / "gate", "started", "release")
    first = Pipeline(
        "gated",
        [
            JsonlReader(file_paths=str(ROOT / "examples" / "data" / "part-000.jsonl")),
            GateOn("doc-00001", str(gate)),
        ],
    )
    run = executor(service, "alpha")
    thread = run_in_thread(first, run)
    read_fifo(gate / "started")
    running = until(lambda: run.job, "the first job's id")
    second = Pipeline(
        "second", [JsonlReader(file_paths=str(ROOT / "examples" / "data" / "part-001.jsonl"))]
    )
    with pytest.raises(JobRejected) as caught:
        second.run(executor(service, "alpha"))
    assert str(caught.value) == (
        f"team alpha is at its quota max_running_jobs=1: 1 jobs are running ({running}); "
        f"submit again when one has finished"
    )
    (gate / "release").write_text("go\n")
    assert len(finished(thread)) >= 1
    assert second.run(executor(service, "alpha"))  # the place is free again


def test_max_in_flight_tasks_throttles_dispatch_and_loses_nothing(
    service: EmbeddedService, base: Path
) -> None:
    run = executor(service, "alpha")
    reader = JsonlReader(file_paths=str(ROOT / "examples" / "data"), files_per_partition=1)
    outputs = Pipeline("throttled", [reader, SleepEach(1.0)]).run(run)
    assert sum(o.num_items for o in outputs) == 449  # every document of the 3 files
    assert run.state is not None
    assert run.state.tasks_failed == 0

    def held() -> list[tuple[int, int]]:  # the time each run of step 1 held a slot
        spans = call(service, "alpha", lambda c: c.trace(run.job))["spans"]
        step_1 = {
            s["span_id"]
            for s in spans
            if s["attributes"].get("gm.kind") == "attempt" and s["attributes"].get("gm.step") == 1
        }
        return sorted(
            (s["start_ns"], s["end_ns"])
            for s in spans
            if s["name"] == "slot" and s["parent_span_id"] in step_1
        )

    runs = until(lambda: len(held()) == 3 and held(), "the 3 runs' slot spans")
    most = max(sum(1 for a, b in runs if a < end and b > start) for start, end in runs)
    assert most == 1, runs  # 3 slots and 3 tasks, yet alpha never held more than its one


def test_max_store_bytes_refuses_a_job_once_the_teams_store_is_full(
    service: EmbeddedService, base: Path
) -> None:
    def job() -> Pipeline:
        return Pipeline(
            "store",
            [
                JsonlReader(file_paths=str(ROOT / "examples" / "data" / "part-000.jsonl")),
                JsonlWriter(path=str(base / "gamma" / "out")),
            ],
        )

    job().run(executor(service, "gamma"))
    used = fs.tree_size(f"{service.settings.store_root}/gamma")  # type: ignore[union-attr]
    assert used >= 2000
    with pytest.raises(JobRejected) as caught:
        job().run(executor(service, "gamma"))
    from services.planner.quotas import size

    assert str(caught.value) == (
        f"team gamma is at its quota max_store_bytes=2000 ({size(2000)}): its store holds "
        f"{used} bytes ({size(used)}); collect finished jobs (`gristmill gc`) and submit again"
    )
    assert call(service, "gamma", lambda c: c.gc(0.0))
    job().run(executor(service, "gamma"))  # collected: room again

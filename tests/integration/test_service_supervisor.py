"""The supervisor keeps the service whole: every child that dies is started again (the
nats-server included), a planner killed half way through starting a job has it taken up, and a
worker's idle actors are stopped one by one, never a busy one. One worker of two slots."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gristmill import Pipeline
from gristmill.embedded import EmbeddedService
from gristmill.executors.service import ServiceExecutor
from gristmill.stages.text.io import JsonlReader, JsonlWriter

from service_helpers import (
    ROOT,
    client_call,
    doc_ids,
    fifos,
    finished,
    read_fifo,
    run_in_thread,
    service_under,
    until,
)
from service_stages import GateOn

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

DATA = ROOT / "examples" / "data"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("supervisor")


@pytest.fixture(scope="module")
def service(base: Path) -> Iterator[EmbeddedService]:
    with service_under(base, workers=1, slots=2, idle_actor_s=1.0) as running:
        yield running


def plain(out: Path) -> Pipeline:
    return Pipeline("plain", [JsonlReader(file_paths=str(DATA)), JsonlWriter(path=str(out))])


def supervisor_log(service: EmbeddedService) -> str:
    return (service.state_dir / "logs" / "supervisor.log").read_text()


def test_every_child_that_dies_is_started_again_and_the_service_keeps_working(
    service: EmbeddedService, base: Path
) -> None:
    for name in ("planner", "coordinator", "cpu-0"):
        before = service.restarts(name)
        service.kill(name)
        service.wait_running(name, after_restarts=before)
        assert re.search(
            rf"{name} exited with status -9; starting it again in \d+\.\d s \(restart {before + 1}\)",
            supervisor_log(service),
        )
    service.kill_nats()
    until(lambda: "nats-server exited" in supervisor_log(service), "the supervisor to see it")

    executor = ServiceExecutor(service.url)
    outputs = plain(base / "after-kills").run(executor)

    assert len(outputs) == 3
    ids = doc_ids(base / "after-kills")
    assert len(ids) == len(set(ids)) == 449
    assert executor.state is not None
    assert (executor.state.state, executor.state.tasks_done) == ("completed", 3)


def test_an_idle_actor_is_stopped_on_its_own_while_its_busy_sibling_finishes(
    service: EmbeddedService, base: Path
) -> None:
    gate = fifos(base / "reap-gate", "started", "release")
    stages = [JsonlReader(file_paths=str(DATA)), GateOn("doc-00100", str(gate)), JsonlWriter(path=str(base / "reaped"))]  # fmt: skip
    executor = ServiceExecutor(service.url, {"max_deliver": 1})
    thread = run_in_thread(Pipeline("reap", stages), executor)
    read_fifo(gate / "started")  # one actor is busy at the gate
    job = until(lambda: executor.job, "the job id")

    def sibling_reaped() -> bool:
        status = client_call(service, lambda c: c.service_status(job))
        [state] = status.jobs
        [worker] = status.workers
        others_done = state.steps[1].done == 2
        return others_done and (worker.actors_busy, worker.actors_idle) == (1, 0)

    until(sibling_reaped, "the idle actor to be stopped while the gated one works")
    with (gate / "release").open("w") as release:
        release.write("go")
    outputs = finished(thread)

    assert len(outputs) == 3
    assert executor.state is not None
    assert (executor.state.state, executor.state.tasks_failed) == ("completed", 0)
    done = client_call(service, lambda c: c.done_events(job))
    assert {d.attempt for d in done} == {1}  # the gated task's batch was not lost with its pool


@pytest.mark.parametrize("point", ["planner.recorded", "planner.started"])
def test_a_planner_killed_while_starting_a_job_leaves_it_to_the_next_planner(
    service: EmbeddedService, base: Path, point: str
) -> None:
    marker = base / f"killed-at-{point}"
    service.set_child_env("planner", {"GRISTMILL_FAULTS": f"kill_at=1,only={point},once={marker}"})
    before = service.restarts("planner")
    service.kill("planner")  # it starts again with the fault armed
    service.wait_running("planner", after_restarts=before)
    executor = ServiceExecutor(service.url, {"submit_timeout_s": 5.0})

    outputs = plain(base / f"after-{point}").run(executor)

    assert marker.exists()  # the planner was killed at that point
    assert service.restarts("planner") == before + 2
    assert len(outputs) == 3
    ids = doc_ids(base / f"after-{point}")
    assert len(ids) == len(set(ids)) == 449
    assert executor.state is not None
    assert (executor.state.state, executor.state.tasks_done) == ("completed", 3)
    log = (service.state_dir / "logs" / "planner.log").read_text()
    assert f"gristmill-fault kill {point} seed=0 role=planner" in log
    service.set_child_env("planner", {})

"""The coordinator's handlers around its pure tracking, with the bus replaced by fakes that
fail on purpose: a final state is counted as announced only once it was published, and a
worker's slow kill never blocks the event loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from gristmill.bus import JobStarted, JobState, StepInfo, TaskResult, TasksDone
from gristmill.config import ServiceSettings
from gristmill.credentials import ensure_credentials
from services.coordinator.service import CoordinatorService
from services.coordinator.tracking import JobTracker
from services.worker.actors import ActorPool
from services.worker.fairshare import FairSlots
from services.worker.running import BatchRunner


class FlakyPublisher:
    """Fails the first `failures` publishes (the stream refused, the connection dropped)."""

    def __init__(self, failures: int):
        self.failures = failures
        self.published: list[tuple[str, Any, str]] = []

    async def publish(self, subject: str, message: Any, msg_id: str) -> bool:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the server went away")
        self.published.append((subject, message, msg_id))
        return True


class MemoryKV:
    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    async def put(self, key: str, value: bytes) -> int:
        self.values[key] = value
        return len(self.values)


def finished_tracker() -> JobTracker:
    tracker = JobTracker("j1")
    steps = [StepInfo(name="only", pool="cpu")]
    tracker.on_started(
        JobStarted(
            job="j1",
            team="web",
            pipeline="p",
            steps=steps,
            first_step=0,
            initial=["a"],
            submitted_at=1.0,
        )
    )
    result = TaskResult(task_id="a", items_in=1, items_out=1, items_dropped=0, wall_time_s=0.1)
    tracker.on_done(TasksDone(job="j1", step=0, key="a", results=[result], attempt=1))
    return tracker


def coordinator(tmp_path: Path, publisher: FlakyPublisher) -> CoordinatorService:
    settings = ServiceSettings(
        nats_url="nats://127.0.0.1:1", state_dir=tmp_path, store_root=str(tmp_path), teams=("web",)
    )
    ensure_credentials(settings.credentials, settings.teams)
    service = CoordinatorService(settings)
    service._publisher = publisher  # type: ignore[assignment]
    service._kv["web", "jobs"] = MemoryKV()

    async def no_cleanup(team: str, tracker: JobTracker) -> None:
        return None

    service._end_job = no_cleanup  # type: ignore[method-assign]
    return service


def test_a_final_state_whose_publish_failed_is_published_again_not_forgotten(
    tmp_path: Path,
) -> None:
    publisher = FlakyPublisher(failures=2)
    service = coordinator(tmp_path, publisher)
    service.jobs["web"]["j1"] = finished_tracker()

    async def scenario() -> None:
        await service._settle_or_later("web", "j1")
        assert service.jobs["web"]["j1"].announced == ""  # not marked: it was not published
        assert service._unsettled["web"] == {"j1"}
        for _ in range(2):  # what the flush loop does each round
            for job in list(service._unsettled["web"]):
                service._unsettled["web"].discard(job)
                await service._settle_or_later("web", job)

    asyncio.run(scenario())
    [(subject, state, msg_id)] = publisher.published
    assert subject == "gm.web.event.j1.job_state"
    assert isinstance(state, JobState)
    assert (state.state, state.tasks_done) == ("completed", 1)
    assert msg_id == "state.j1.completed-1-0-0"
    assert service.jobs["web"]["j1"].announced == "completed-1-0-0"
    assert service._unsettled["web"] == set()


def test_stopping_an_actor_does_not_block_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_ran = threading.Event()
    saw_loop_run: list[bool] = []

    def slow_kill(actor: Any) -> None:
        # A ray.kill waiting on the GCS: it returns once the event loop has run meanwhile,
        # which it cannot if the kill was called on the loop itself.
        saw_loop_run.append(loop_ran.wait(timeout=10))

    monkeypatch.setattr("services.worker.running._kill", slow_kill)
    settings = ServiceSettings(nats_url="nats://x", state_dir=tmp_path, store_root=str(tmp_path))
    runner = BatchRunner(settings, "cpu-0", FairSlots(1), ActorPool(idle_s=60), lambda: set())
    runner.actors.started(("web", "f", 0))

    async def other_work() -> None:
        loop_ran.set()

    async def scenario() -> None:
        other = asyncio.create_task(other_work())
        await runner._stop(("web", "f", 0), object())
        await other

    asyncio.run(scenario())
    assert saw_loop_run == [True]  # the loop kept running while the kill waited


def test_a_worker_forgets_the_records_of_jobs_it_no_longer_pulls(tmp_path: Path) -> None:
    from gristmill.bus.jobs import JobRecord
    from services.worker.service import WorkerService

    settings = ServiceSettings(
        nats_url="nats://x", state_dir=tmp_path, store_root=str(tmp_path), teams=("web",)
    )
    ensure_credentials(settings.credentials, settings.teams)
    worker = WorkerService(settings, worker_id="cpu-0")
    record: Any = object.__new__(JobRecord)  # never read: only kept or forgotten
    worker._records = {("web", "j1"): record, ("web", "j2"): record}
    worker._assigned = {("web", "j1", 1): 1, ("web", "j2", 1): 1}

    async def scenario() -> None:
        await worker._on_assignment("web", {})

    asyncio.run(scenario())
    assert worker._records == {}
    assert worker._assigned == {}

"""The coordinator: follows each team's events, keeps job states in KV, announces completion,
assigns worker slots to steps, and answers `gm.<team>.api.status`.

Its state is derived, never primary: on start it replays the events stream from the beginning
(an ordered consumer), so a restarted coordinator knows exactly what the one before knew. The
final `JobState` of a job is published with a `Nats-Msg-Id`, and a replayed one is remembered,
so a restart announces nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from faststream.nats import NatsBroker, NatsMessage

from gristmill.bus import (
    ApiReply,
    JobStarted,
    JobState,
    MessageError,
    StatusQuery,
    TaskDone,
    TaskFailed,
)
from gristmill.bus.client import publish
from gristmill.bus.jobs import assignment_key, state_key
from gristmill.bus.streams import TeamLayout, ensure_layout
from gristmill.bus.subjects import api_subject, event_filter, event_subject, parse_subject
from gristmill.config import ServiceSettings
from services.coordinator.tracking import JobTracker, WorkerInfo, assign_slots

__all__ = ["CoordinatorService"]

log = logging.getLogger("gristmill.coordinator")

WORKER_TIMEOUT_S = 5.0
ASSIGN_EVERY_S = 0.5
FLUSH_EVERY_S = 0.2
STATUS_WAIT_S = 20.0


class CoordinatorService:
    """The coordinator of one deployment; `broker` is its FastStream broker."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.broker = NatsBroker(settings.nats_url, logger=None)
        self.jobs: dict[str, dict[str, JobTracker]] = {team: {} for team in settings.teams}
        self._workers: dict[str, dict[str, tuple[WorkerInfo, float]]] = {
            team: {} for team in settings.teams
        }
        self._assigned: dict[str, dict[str, str]] = {team: {} for team in settings.teams}
        self._dirty: dict[str, set[str]] = {team: set() for team in settings.teams}
        self._wake = asyncio.Event()
        self._caught_up = {team: asyncio.Event() for team in settings.teams}
        self._background: list[asyncio.Task[None]] = []
        self._kv: dict[tuple[str, str], Any] = {}
        for team in settings.teams:
            status = self.broker.subscriber(api_subject(team, "status"), queue="coordinator")
            status(self._status_handler(team))

    async def after_start(self) -> None:
        """Layouts, then follow events and workers, and start assigning."""
        js = self.broker.config.connection_state.stream
        for team in self.settings.teams:
            layout = TeamLayout(team)
            await ensure_layout(js, layout)
            for purpose in ("jobs", "assignments"):
                self._kv[team, purpose] = await js.key_value(layout.bucket(purpose))
            self._background.append(asyncio.create_task(self._follow_events(team)))
            self._background.append(asyncio.create_task(self._follow_workers(team)))
        self._background.append(asyncio.create_task(self._assign_loop()))
        self._background.append(asyncio.create_task(self._flush_loop()))
        log.info("coordinator ready for teams %s", ", ".join(self.settings.teams))

    async def before_stop(self) -> None:
        """Stop the loops and write what is not written yet."""
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self._flush()

    # -- events ------------------------------------------------------------------------------

    async def _follow_events(self, team: str) -> None:
        from nats.js.api import DeliverPolicy

        js = self.broker.config.connection_state.stream
        sub = await js.subscribe(
            event_filter(team), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        info = await sub.consumer_info()
        replaying = info.num_pending > 0 or info.delivered.consumer_seq > 0
        if not replaying:
            self._caught_up[team].set()
        async for msg in sub.messages:
            try:
                job = await self._apply(team, msg.subject, msg.data)
                if replaying and msg.metadata.num_pending == 0:
                    replaying = False  # caught up: announce what finished while we were away
                    self._caught_up[team].set()
                    for known in list(self.jobs[team]):
                        await self._announce(team, known)
                elif not replaying and job is not None:
                    await self._announce(team, job)
            except Exception:
                log.exception("event on %s could not be applied", msg.subject)

    async def _apply(self, team: str, subject: str, data: bytes) -> str | None:
        """Count one event; returns the job it changed (None for the job's own state)."""
        parsed = parse_subject(subject)
        assert parsed.job is not None
        jobs = self.jobs[team]
        tracker = jobs.get(parsed.job) or jobs.setdefault(parsed.job, JobTracker(parsed.job))
        kind = parsed.event
        if kind == "job_started":
            tracker.on_started(JobStarted.from_json(data))
            self._wake.set()
        elif kind == "task_done":
            tracker.on_done(TaskDone.from_json(data))
        elif kind == "task_failed":
            tracker.on_failed(TaskFailed.from_json(data))
        elif kind == "job_state":
            state = JobState.from_json(data)
            if state.finished:
                tracker.announced = _mark(state)
                tracker.finished_at = state.finished_at
            return None
        self._dirty[team].add(parsed.job)
        return parsed.job

    async def _announce(self, team: str, job: str) -> None:
        """Publish the job's final state once (per outcome: a retried dead letter can turn
        `completed_with_failures` into `completed`)."""
        tracker = self.jobs[team][job]
        if not tracker.finished:
            return
        state = tracker.state()
        mark = _mark(state)
        if tracker.announced == mark:
            return
        tracker.announced = mark
        self._wake.set()
        js = self.broker.config.connection_state.stream
        await self._kv[team, "jobs"].put(state_key(job), state.to_json())
        await publish(js, event_subject(team, job, "job_state"), state, f"state.{job}.{mark}")
        log.info(
            "job %s %s (%d tasks done, %d failed)",
            job,
            state.state,
            state.tasks_done,
            state.tasks_failed,
        )

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            await self._flush()

    async def _flush(self) -> None:
        for team, dirty in self._dirty.items():
            while dirty:
                job = dirty.pop()
                state = self.jobs[team][job].state()
                await self._kv[team, "jobs"].put(state_key(job), state.to_json())

    # -- workers and slots -------------------------------------------------------------------

    async def _follow_workers(self, team: str) -> None:
        watcher = await self._kv[team, "assignments"].watch("worker.*")
        async for entry in watcher:
            if entry is None:
                continue
            worker = entry.key.split(".", 1)[1]
            if not entry.value:
                self._workers[team].pop(worker, None)
            else:
                beat = json.loads(entry.value)
                known = worker in self._workers[team]
                self._workers[team][worker] = (WorkerInfo(beat["pool"], beat["slots"]), beat["at"])
                if not known:
                    self._wake.set()

    async def _assign_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), ASSIGN_EVERY_S)
            self._wake.clear()
            for team in self.settings.teams:
                try:
                    await self._assign(team)
                except Exception:
                    log.exception("assigning slots of team %s failed", team)

    async def _assign(self, team: str) -> None:
        now = time.time()
        live = {
            worker: info
            for worker, (info, at) in self._workers[team].items()
            if now - at < WORKER_TIMEOUT_S
        }
        plan = assign_slots(live, self.jobs[team])
        written = self._assigned[team]
        for worker, steps in plan.items():
            value = json.dumps({"steps": steps}, sort_keys=True)
            if written.get(worker) != value:
                await self._kv[team, "assignments"].put(assignment_key(worker), value.encode())
                written[worker] = value

    # -- API ---------------------------------------------------------------------------------

    def _status_handler(self, team: str) -> Any:
        async def status(msg: NatsMessage) -> bytes:
            try:  # answer from the whole history, not from half a replay
                await asyncio.wait_for(self._caught_up[team].wait(), STATUS_WAIT_S)
            except TimeoutError:
                return ApiReply(ok=False, error="the coordinator is still catching up").to_json()
            try:
                asked = StatusQuery.from_json(msg.body or b"{}").job
            except MessageError as exc:
                return ApiReply(ok=False, error=str(exc)).to_json()
            jobs = self.jobs[team]
            if asked:
                if asked not in jobs:
                    return ApiReply(ok=False, error=f"no job {asked!r} in team {team}").to_json()
                states = [jobs[asked].state()]
            else:
                states = [tracker.state() for tracker in jobs.values()]
                states.sort(key=lambda s: s.submitted_at)
            data = {"jobs": [json.loads(s.to_json()) for s in states]}
            return ApiReply(ok=True, job=asked, data=data).to_json()

        return status


def _mark(state: JobState) -> str:
    return f"{state.state}-{state.tasks_done}-{state.tasks_failed}"

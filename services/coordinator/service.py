"""The coordinator: follows each team's events, keeps job states in KV, announces completion,
cleans up after jobs, assigns worker slots to steps, and answers `gm.<team>.api.status`/`gc`.

Its state is derived, never primary: on start it replays the events stream from the beginning
(an ordered consumer), so a restarted coordinator knows exactly what the one before knew. A
job's final `JobState` is published with a `Nats-Msg-Id` and only counted as announced once the
publish succeeded (a failed one is tried again), and a replayed one is remembered, so a restart
announces nothing twice. When a job ends its consumers are removed; after the retention period
its payloads, events, done records and dead letters are collected (`gristmill gc`), leaving a
summary. Every loop is kept running: one that fails is logged and started again.

So that an always-on service restarts in a time that follows what runs, not how long it has
run, the coordinator snapshots each team's trackers (`services.coordinator.snapshot`, in the
store) and a coordinator that starts replays only the events after its team's snapshot; the
events of continuous jobs up to a stored snapshot are then purged from the stream, which keeps
it bounded. A continuous job's finished input files get their lineage record and a `closed`
mark (`services.coordinator.lineage`) before they are forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import Any

from gristmill import faults
from gristmill.bus import (
    DeadLetter,
    FilesIngested,
    IdsPart,
    InputClosed,
    JobStarted,
    JobState,
    MessageError,
    SupervisedWorkers,
    TaskFailed,
    TaskRetried,
    TasksDone,
    WorkerState,
    peek,
)
from gristmill.bus.broker import service_broker
from gristmill.bus.client import Publisher, kv_keys
from gristmill.bus.jobs import (
    DECISION_KEY,
    PROCESSES_KEY,
    SCALING_BUCKET,
    archived_key,
    assignment_key,
    consumer_name,
    job_key,
    msg_id,
    published_key,
    state_key,
)
from gristmill.bus.streams import TeamLayout, ensure_layout
from gristmill.bus.subjects import (
    api_subject,
    dlq_subject,
    event_filter,
    event_subject,
    parse_subject,
    team_subjects,
)
from gristmill.config import ServiceSettings
from gristmill.credentials import TOKENS_FILE, TokenTable, service_credentials
from gristmill.loops import LoopSet
from gristmill.store import TaskStore
from gristmill.telemetry import in_job
from services.coordinator.api import SAMPLE_EVERY_S, JobViews
from services.coordinator.http import HttpServer, create_http_app
from services.coordinator.keeping import (
    close_files,
    load_snapshot,
    new_files,
    purge_snapshotted,
    save_snapshot,
)
from services.coordinator.scaling.cycle import ScalingCycle
from services.coordinator.scaling.scalers import scaler_from_env
from services.coordinator.sharing import split_cap
from services.coordinator.snapshot import dump
from services.coordinator.tracking import JobTracker, WorkerInfo, assign_slots
from services.coordinator.verbs import ApiVerbs

__all__ = ["CoordinatorService"]

log = logging.getLogger("gristmill.coordinator")

WORKER_TIMEOUT_S = 5.0
ASSIGN_EVERY_S = 0.5
FLUSH_EVERY_S = 0.2
SCALE_EVERY_S = 1.0
SNAPSHOT_EVERY_S = 10.0


class CoordinatorService(ApiVerbs):
    """The coordinator of one deployment; `broker` is its FastStream broker."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.store = TaskStore(settings.store_root)
        self.broker = service_broker(
            settings.nats_url,
            self._reconnected,
            service_credentials("coordinator", settings.credentials),
        )
        self.jobs: dict[str, dict[str, JobTracker]] = {team: {} for team in settings.teams}
        self.workers: dict[str, dict[str, WorkerState]] = {team: {} for team in settings.teams}
        self._assigned: dict[str, dict[str, str]] = {team: {} for team in settings.teams}
        self._dirty: dict[str, set[str]] = {team: set() for team in settings.teams}
        self._applied: dict[str, int] = dict.fromkeys(settings.teams, 0)
        self._unsettled: dict[str, set[str]] = {team: set() for team in settings.teams}
        self._archived: dict[str, int] = dict.fromkeys(settings.teams, 0)
        self._applying = {team: asyncio.Lock() for team in settings.teams}
        self._snapshotted: dict[str, int] = dict.fromkeys(settings.teams, 0)
        self._wake = asyncio.Event()
        self._caught_up = {team: asyncio.Event() for team in settings.teams}
        self._loops = LoopSet(log)
        self._kv: dict[tuple[str, str], Any] = {}
        self._publisher: Publisher | None = None
        self._scaling_kv: Any = None
        self._scaler = scaler_from_env(settings.scaler)
        self.scaling = ScalingCycle(settings)
        self.views = JobViews(
            lambda: self._js,
            self.store,
            self.jobs.__getitem__,
            self.live_workers,
            self.scaling.view,
        )
        self.http: HttpServer | None = None
        self.http_url = ""
        for team in settings.teams:
            self.broker.subscriber(api_subject(team, "status"), queue="coordinator")(
                self._status_handler(team)
            )
            self.broker.subscriber(api_subject(team, "gc"), queue="coordinator")(
                self._gc_handler(team)
            )
            self.broker.subscriber(api_subject(team, "why"), queue="coordinator")(
                self._why_handler(team)
            )
            self.broker.subscriber(api_subject(team, "retry"), queue="coordinator")(
                self._retry_handler(team)
            )
            self.broker.subscriber(api_subject(team, "workers"), queue="coordinator")(
                self._workers_handler
            )

    async def after_start(self) -> None:
        """Layouts, then follow events and workers, and start assigning."""
        self._publisher = await Publisher(self._nc).start()
        for team in self.settings.teams:
            layout = TeamLayout(team)
            await ensure_layout(self._js, layout, self.settings.stream_limits())
            for purpose in ("jobs", "assignments", "workers", "done", "ingest"):
                self._kv[team, purpose] = await self._js.key_value(layout.bucket(purpose))
            self._archived[team] = await self._count_archived(team)
            await self._load_snapshot(team)
            self._loops.start(f"events of {team}", functools.partial(self._follow_events, team))
            self._loops.start(f"workers of {team}", functools.partial(self._follow_workers, team))
        self._scaling_kv = await _scaling_bucket(self._js)
        self._loops.start("assign", self._assign_loop)
        self._loops.start("scale", self._scale_loop)
        self._loops.start("flush", self._flush_loop)
        self._loops.start("gc", self._gc_loop)
        self._loops.start("history", self._sample_loop)
        self._loops.start("snapshot", self._snapshot_loop)
        tokens = TokenTable.load(self.settings.credentials / TOKENS_FILE)
        app = create_http_app(self.views, self.settings.teams, self._all_caught_up, tokens)
        self.http = HttpServer(app, self.settings.http_host, self.settings.http_port)
        self.http_url = await self.http.start()
        log.info("coordinator ready for teams %s", ", ".join(self.settings.teams))

    def _all_caught_up(self) -> bool:
        return all(event.is_set() for event in self._caught_up.values())

    async def _sample_loop(self) -> None:
        while True:
            for team in self.settings.teams:
                self.views.sample(team)
            await asyncio.sleep(SAMPLE_EVERY_S)

    async def before_stop(self) -> None:
        """Stop serving and the loops, and write what is not written yet."""
        if self.http is not None:
            await self.http.stop()
        await self._loops.stop()
        with contextlib.suppress(Exception):
            await self._flush()

    async def _reconnected(self) -> None:
        await self._loops.restart()

    @property
    def _js(self) -> Any:
        return self.broker.config.connection_state.stream

    @property
    def _nc(self) -> Any:
        return self.broker.config.connection_state.connection

    # -- events ------------------------------------------------------------------------------

    async def _follow_events(self, team: str) -> None:
        """Apply the team's events in stream order, from the first not yet applied."""
        from nats.js import api

        start = self._applied[team] + 1
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
        )
        sub = await self._js.subscribe(event_filter(team), ordered_consumer=True, config=config)
        info = await sub.consumer_info()
        replaying = info.num_pending > 0 or info.delivered.consumer_seq > 0
        if not replaying:
            await self._caught_up_with(team)
        async for msg in sub.messages:
            async with self._applying[team]:  # a snapshot never sees half an event
                try:
                    job = await self._apply(team, msg.subject, msg.data)
                except Exception:  # one event must not stop the rest from being counted
                    log.exception("event on %s could not be applied", msg.subject)
                    job = None
                self._applied[team] = msg.metadata.sequence.stream
            if job is not None:
                await self._close_files(team, job)
            faults.point("coordinator.applied")
            if replaying and msg.metadata.num_pending == 0:
                replaying = False
                await self._caught_up_with(team)
            elif not replaying and job is not None:
                await self._settle_or_later(team, job)

    async def _caught_up_with(self, team: str) -> None:
        """Replayed everything: announce what finished while no coordinator ran."""
        self._caught_up[team].set()
        for job in list(self.jobs[team]):
            await self._settle_or_later(team, job)

    async def _settle_or_later(self, team: str, job: str) -> None:
        try:
            await self._settle(team, job)
        except Exception:
            log.exception("job %s: its final state could not be announced yet; trying again", job)
            self._unsettled[team].add(job)

    async def _apply(self, team: str, subject: str, data: bytes) -> str | None:
        """Count one event; returns the job it changed (None for the job's own state)."""
        parsed = parse_subject(subject)
        assert parsed.job is not None
        jobs = self.jobs[team]
        tracker = jobs.get(parsed.job) or jobs.setdefault(parsed.job, JobTracker(parsed.job))
        kind = parsed.event
        try:
            if kind == "job_started":
                tracker.on_started(JobStarted.from_json(data))
                self._wake.set()
            elif kind == "ids":
                tracker.on_ids(IdsPart.from_json(data))
            elif kind == "task_done":
                tracker.on_done(TasksDone.from_json(data))
            elif kind == "task_failed":
                tracker.on_failed(TaskFailed.from_json(data))
            elif kind == "task_retried":
                tracker.on_retried(TaskRetried.from_json(data))
                self._wake.set()
            elif kind == "files":
                ingested = await new_files(
                    self._kv[team, "ingest"], tracker, FilesIngested.from_json(data)
                )
                if ingested is not None:
                    tracker.on_files(ingested)
            elif kind == "input_closed":
                tracker.on_input_closed(InputClosed.from_json(data))
            elif kind == "job_state":
                state = JobState.from_json(data)
                if state.finished:
                    tracker.announced = _mark(state)
                    tracker.finished_at = state.finished_at
                return None
            else:
                tracker.fail(f"event {subject} is of a kind this coordinator does not know")
        except MessageError as exc:
            await self._unreadable(team, tracker, subject, data, str(exc))
        self._dirty[team].add(parsed.job)
        return parsed.job

    async def _close_files(self, team: str, job: str) -> None:
        """Lineage and `closed` marks of the job's finished input files (see `keeping`)."""
        tracker = self.jobs[team].get(job)
        if tracker is None or tracker.ledger is None or not tracker.ledger.closing:
            return
        if not await close_files(self.store, self._kv[team, "ingest"], team, tracker):
            self._unsettled[team].add(job)
        self._dirty[team].add(job)

    async def _load_snapshot(self, team: str) -> None:
        snapshot = await load_snapshot(self.store, team)
        if snapshot is None:
            return
        self.jobs[team] = snapshot.jobs
        self._applied[team] = self._snapshotted[team] = snapshot.applied
        log.info(
            "team %s: %d jobs from the snapshot after event %d",
            team,
            len(snapshot.jobs),
            snapshot.applied,
        )

    async def _snapshot_loop(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_EVERY_S)
            for team in self.settings.teams:
                await self.snapshot(team)

    async def snapshot(self, team: str) -> bool:
        """Store the team's trackers if events were applied since the last snapshot, then
        purge what the snapshot makes unneeded; False when there was nothing new."""
        if not self._caught_up[team].is_set() or self._applied[team] <= self._snapshotted[team]:
            return False
        async with self._applying[team]:
            applied = self._applied[team]
            payload = dump(self.jobs[team], applied)
            continuous = [
                j for j, t in self.jobs[team].items() if t.started and t.started.continuous
            ]
        await save_snapshot(self.store, team, payload)
        self._snapshotted[team] = applied
        await purge_snapshotted(self._js, team, continuous, applied)
        return True

    async def _unreadable(
        self, team: str, tracker: JobTracker, subject: str, data: bytes, error: str
    ) -> None:
        """An event no one here can read (another schema version, say): the tasks it names
        count as failed, with a dead letter naming the versions; naming none fails the job."""
        raw = peek(data)
        results = raw.get("results")
        items: list[Any] = results if isinstance(results, list) else [raw]
        named = [(raw.get("step"), item.get("task_id")) for item in items if isinstance(item, dict)]
        named = [(s, t) for s, t in named if isinstance(s, int) and isinstance(t, str)]
        message = f"unreadable event on {subject}: {error}"
        log.error("job %s: %s", tracker.job, message)
        if not named:
            tracker.fail(message)
            return
        for step, task_id in named:
            failure = TaskFailed(
                job=tracker.job, step=step, task_id=task_id, error=message, attempts=1
            )
            if tracker.on_failed(failure):
                text = data[:65536].decode("utf-8", "replace")
                await self._dead_letter(
                    team, DeadLetter(raw=text, subject=subject, failure=failure)
                )

    async def _dead_letter(self, team: str, letter: DeadLetter) -> None:
        failure = letter.failure
        try:
            assert self._publisher is not None
            await self._publisher.publish(
                dlq_subject(team, failure.job, str(failure.step)),
                letter,
                msg_id("dlq", failure.job, failure.step, f"{failure.task_id}.event"),
            )
        except Exception:
            log.exception("job %s: the dead letter of an unreadable event failed", failure.job)

    async def _settle(self, team: str, job: str) -> None:
        """Announce a finished job's final state once, clean up after it, compact it."""
        tracker = self.jobs[team].get(job)
        if tracker is None or not tracker.finished:
            return
        state = tracker.state()
        mark = _mark(state)
        if tracker.announced != mark:
            await self._kv[team, "jobs"].put(state_key(job), state.to_json())
            faults.point("coordinator.state_written")
            assert self._publisher is not None
            subject = event_subject(team, job, "job_state")
            await self._publisher.publish(subject, state, f"state.{job}.{mark}")
            tracker.announced = mark  # only now: a failed publish is tried again
            faults.point("coordinator.announced")
            self._wake.set()
            await self._end_job(team, tracker)
            with in_job(job):
                log.info(
                    "job %s %s (%d tasks done, %d failed)%s",
                    job,
                    state.state,
                    state.tasks_done,
                    state.tasks_failed,
                    f": {state.error}" if state.error else "",
                )
        if tracker.compactable:
            tracker.compact()

    async def _end_job(self, team: str, tracker: JobTracker) -> None:
        """Remove the consumers of a finished job, and any manifest left in its subjects."""
        from nats.js.errors import NotFoundError

        layout = TeamLayout(team)
        started = tracker.started
        assert started is not None
        for step in range(started.first_step, len(started.steps)):
            with contextlib.suppress(NotFoundError):
                await self._js.delete_consumer(
                    layout.tasks_stream, consumer_name(tracker.job, step)
                )
        await self._js.purge_stream(
            layout.tasks_stream, subject=f"{team_subjects(team)[:-1]}task.{tracker.job}.>"
        )

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            for team, unsettled in self._unsettled.items():  # announcements that failed
                for job in list(unsettled):
                    unsettled.discard(job)
                    await self._close_files(team, job)
                    await self._settle_or_later(team, job)
            await self._flush()

    async def _flush(self) -> None:
        for team, dirty in self._dirty.items():
            while dirty:
                job = dirty.pop()
                tracker = self.jobs[team].get(job)
                if tracker is None:
                    continue
                try:
                    await self._kv[team, "jobs"].put(state_key(job), tracker.state().to_json())
                except Exception:
                    dirty.add(job)  # written next time
                    raise

    # -- garbage collection ------------------------------------------------------------------

    async def _gc_loop(self) -> None:
        every = max(10.0, min(3600.0, self.settings.retention_s / 10))
        while True:
            await asyncio.sleep(every)
            for team in self.settings.teams:
                await self.collect(team, self.settings.retention_s)

    async def collect(self, team: str, older_than_s: float) -> list[str]:
        """Archive the team's jobs finished more than `older_than_s` ago: their payloads,
        events, done records and dead letters go, a summary stays. Returns the jobs archived."""
        now = time.time()
        layout = TeamLayout(team)
        archived = []
        for job, tracker in list(self.jobs[team].items()):
            state = tracker.state()
            if not tracker.finished or tracker.announced != _mark_of(tracker):
                continue
            if state.finished_at is None or now - state.finished_at < older_than_s:
                continue
            await asyncio.to_thread(self.store.delete_job, team, job)
            prefix = team_subjects(team)[:-1]
            for stream, subject in (
                (layout.tasks_stream, f"{prefix}task.{job}.>"),
                (layout.dlq_stream, f"{prefix}dlq.{job}.>"),
                (layout.bucket_stream("done"), f"$KV.{layout.bucket('done')}.{job}.>"),
                (layout.events_stream, f"{prefix}event.{job}.>"),
            ):
                await self._js.purge_stream(stream, subject=subject)
            summary = state.model_copy(update={"archived_at": now})
            await self._kv[team, "jobs"].put(archived_key(job), summary.to_json())
            for key in (state_key(job), job_key(job), published_key(job)):
                with contextlib.suppress(Exception):
                    await self._kv[team, "jobs"].purge(key)
            del self.jobs[team][job]
            self.views.forget(team, job)
            self._archived[team] += 1
            archived.append(job)
        if archived:
            log.info("team %s: archived %d finished jobs", team, len(archived))
        return archived

    async def _count_archived(self, team: str) -> int:
        return len(await kv_keys(self._js, TeamLayout(team).bucket("jobs"), "archived.*"))

    # -- workers and slots -------------------------------------------------------------------

    async def _follow_workers(self, team: str) -> None:
        watcher = await self._kv[team, "workers"].watch("worker.*")
        async for entry in watcher:
            if entry is None:
                continue
            worker = entry.key.split(".", 1)[1]
            if not entry.value:
                self.workers[team].pop(worker, None)
                continue
            try:
                beat = WorkerState.from_json(entry.value)
            except MessageError as exc:
                log.error("ignoring an unreadable heartbeat of %s: %s", worker, exc)
                continue
            known = worker in self.workers[team]
            self.workers[team][worker] = beat
            if not known:
                self._wake.set()

    async def _assign_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), ASSIGN_EVERY_S)
            self._wake.clear()
            for team in self.settings.teams:
                await self._assign(team)

    async def _scale_loop(self) -> None:
        """Every `SCALE_EVERY_S`: the policy's decision, published where it changed (the
        supervisor or another scaler carries it out)."""
        while True:
            await asyncio.sleep(SCALE_EVERY_S)
            if not self._all_caught_up():
                continue  # half a replay is no measure of the backlog
            starting = await self._supervised()
            decision = self.scaling.run(self.jobs, self.all_workers(), starting=starting)
            self._wake.set()  # the autoscaled pools' placement may have changed
            if decision is None:
                continue
            for reason in decision.reasons:
                log.info("scaling: %s", reason)
            await self._scaling_kv.put(DECISION_KEY, decision.to_json())
            if self._scaler.name != "none" and self.scaling.decision is not None:
                try:
                    await asyncio.to_thread(self._scaler.apply, self.scaling.decision)
                except Exception:  # the next changed decision is tried again
                    log.exception("scaling: the %s scaler failed", self._scaler.name)

    async def _supervised(self) -> dict[str, str]:
        """The worker processes the embedded supervisor says it runs (name -> pool); nothing
        where no supervisor reports, or its report is stale."""
        try:
            entry = await self._scaling_kv.get(PROCESSES_KEY)
            report = SupervisedWorkers.from_json(entry.value)
        except Exception:  # no supervisor (Kubernetes, Ray), or nothing written yet
            return {}
        if time.time() - report.at > WORKER_TIMEOUT_S * 6:
            return {}
        return dict(report.workers)

    def all_workers(self) -> dict[str, WorkerState]:
        """Every live worker, by id (a worker beats into each team's bucket: the newest beat)."""
        merged: dict[str, WorkerState] = {}
        for team in self.settings.teams:
            for worker, beat in self.live_workers(team).items():
                if worker not in merged or merged[worker].at < beat.at:
                    merged[worker] = beat
        return merged

    def live_workers(self, team: str) -> dict[str, WorkerState]:
        """The team's workers whose last heartbeat is recent (older ones are forgotten)."""
        now = time.time()
        for worker in [w for w, b in self.workers[team].items() if now - b.at > 60]:
            del self.workers[team][worker]
        return {w: b for w, b in self.workers[team].items() if now - b.at < WORKER_TIMEOUT_S}

    async def _assign(self, team: str) -> None:
        live = {w: WorkerInfo(b.pool, b.slots) for w, b in self.live_workers(team).items()}
        plan = assign_slots(live, self.jobs[team], self.settings.step_split)
        for worker, info in live.items():  # an autoscaled pool pulls what its decision placed
            if info.pool in self.scaling.bounds:
                plan[worker] = self.scaling.assigned(worker, team)
        cap = self.settings.policy(team).max_in_flight_tasks
        caps = split_cap(cap, {w: info.slots for w, info in live.items()}) if cap else {}
        written = self._assigned[team]
        kv = self._kv[team, "assignments"]
        for worker, steps in plan.items():
            if worker in caps:  # the worker's part of the team's in-flight quota
                part = caps[worker]
                steps = [{**s, "slots": min(s["slots"], part)} for s in steps] if part else []
                value = _json({"steps": steps, "cap": part})
            else:
                value = _json({"steps": steps})
            if written.get(worker) != value:
                await kv.put(assignment_key(worker), value.encode())
                written[worker] = value
        for worker in [w for w in written if w not in plan]:  # a dead worker's assignment
            with contextlib.suppress(Exception):
                await kv.delete(assignment_key(worker))
            del written[worker]


async def _scaling_bucket(js: Any) -> Any:
    """The service's scaling bucket (the last decision only)."""
    from nats.js.errors import BucketNotFoundError

    try:
        return await js.key_value(SCALING_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(bucket=SCALING_BUCKET, history=1)


def _mark(state: JobState) -> str:
    return f"{state.state}-{state.tasks_done}-{state.tasks_failed}-{state.retries}"


def _mark_of(tracker: JobTracker) -> str:
    return _mark(tracker.state())


def _json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True)

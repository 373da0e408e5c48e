"""The worker's life cycle: join the bus, follow its assignments, pull the steps it is given and
run them in local Ray actors, until it is stopped.

The rooms: `assignments` (which steps to pull), `pulling` (fetching as slots allow, keeping
fetched messages alive), `running` (a batch through an actor, task timeouts), `effects` (what is
published, recorded and acknowledged, in which order), `actors` (which actors are kept),
`heartbeat`, and `runner` (the actor's side). Stage work never runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from typing import Any

from gristmill import telemetry
from gristmill.bus import WorkerState
from gristmill.bus.broker import service_broker
from gristmill.bus.client import Publisher
from gristmill.bus.jobs import JobRecord, consumer_name, job_key
from gristmill.bus.streams import TeamLayout, ensure_layout
from gristmill.config import ServiceSettings
from gristmill.credentials import service_credentials
from gristmill.loops import LoopSet, cancel_all
from services.worker.actors import ActorKey, ActorPool
from services.worker.assignments import Wanted, follow_assignments
from services.worker.effects import Effects
from services.worker.fairshare import FairSlots, Ticket
from services.worker.heartbeat import Heartbeat
from services.worker.pulling import KeepAlive, Puller
from services.worker.running import BatchRunner, _kill
from services.worker.spans import AttemptSpans

__all__ = ["WorkerService", "default_worker_id"]

log = logging.getLogger("gristmill.worker")

# A fetch takes as many manifests as fit in this much measured work (at least 1, at most 16).
BATCH_TARGET_S = 0.05


def default_worker_id(pool: str) -> str:
    """A worker id unique on this machine: pool, host and process id."""
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname().lower())[:32]
    return f"{pool}-{host}-{os.getpid()}"


class WorkerService:
    """One worker process of pool `pool` with `slots` concurrent actor runs."""

    def __init__(
        self, settings: ServiceSettings, pool: str = "cpu", slots: int = 1, worker_id: str = ""
    ):
        if pool not in ("cpu", "gpu"):
            raise ValueError(f"pool must be 'cpu' or 'gpu', got {pool!r}")
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.settings = settings
        self.pool = pool
        self.worker_id = worker_id or default_worker_id(pool)
        self.broker = service_broker(
            settings.nats_url,
            self._reconnected,
            service_credentials("worker", settings.credentials),
        )
        weights = {team: settings.policy(team).weight for team in settings.teams}
        self.slots = FairSlots(slots, weights)
        self.actors = ActorPool(idle_s=settings.idle_actor_s)
        self.telemetry = telemetry.setup(
            "worker", worker=self.worker_id, pool=pool, teams=settings.teams
        )
        spans = AttemptSpans(self.telemetry.tracer, self.worker_id)
        self.runner = BatchRunner(
            settings, self.worker_id, self.slots, self.actors, self._wanted, spans
        )
        self._assigned: Wanted = {}
        self._pullers: dict[tuple[str, str, int], asyncio.Task[None]] = {}
        self._records: dict[tuple[str, str], JobRecord] = {}
        self._effects: dict[str, Effects] = {}
        self._kv: dict[tuple[str, str], Any] = {}
        self._loops = LoopSet(log)
        self._heartbeat: Heartbeat | None = None
        self._handling: set[asyncio.Task[Any]] = set()  # batches fetched and not yet settled
        self.draining = False
        self.ready_at = 0.0

    # -- life cycle --------------------------------------------------------------------------

    async def after_start(self) -> None:
        """Join: layouts, heartbeat, and the assignment watch of every team."""
        import ray

        if not ray.is_initialized():
            raise RuntimeError("the worker needs Ray: start it inside ray_session()")
        nc = self.broker.config.connection_state.connection
        self.telemetry.attach_span_store(nc, asyncio.get_running_loop())
        publisher = await Publisher(nc).start()
        for team in self.settings.teams:
            layout = TeamLayout(team)
            await ensure_layout(self._js, layout, self.settings.stream_limits())
            for purpose in ("jobs", "done", "assignments", "workers"):
                self._kv[team, purpose] = await self._js.key_value(layout.bucket(purpose))
            self._effects[team] = Effects(
                team,
                self.worker_id,
                publisher,
                self._kv[team, "done"],
                lambda fingerprint, step: self.runner.seconds_per_task.get((fingerprint, step)),
                self.telemetry.tracer,
            )
        self.ready_at = time.time()
        buckets = {team: self._kv[team, "workers"] for team in self.settings.teams}
        self._heartbeat = Heartbeat(self.worker_id, buckets, self._state)
        await self._heartbeat.beat()
        for team in self.settings.teams:
            kv = self._kv[team, "assignments"]
            follow = functools.partial(
                follow_assignments, kv, team, self.worker_id, self._on_assignment
            )
            self._loops.start(f"assignments of {team}", follow)
        self._loops.start("heartbeat", self._heartbeat.run)
        self._loops.start("idle actors", self._reap_idle_actors)
        log.info("worker %s (%s, %d slots) ready", self.worker_id, self.pool, self.slots.count)

    async def drain(self, deadline_s: float) -> None:
        """Stop taking work and let the runs under way end (for at most `deadline_s`): fetch
        nothing more, hand back at once every fetched manifest that has no slot yet, and say
        so in the heartbeat (`draining`), so the coordinator assigns nothing here. What is
        still running at the deadline is stopped and handed back too."""
        self.draining = True
        self.slots.drain()
        self._assigned.clear()
        await cancel_all(list(self._pullers.values()))
        if self._heartbeat is not None:
            with contextlib.suppress(Exception):
                await self._heartbeat.beat()
        handling = [t for t in self._handling if not t.done()]
        log.info("worker %s draining: %d batches under way", self.worker_id, len(handling))
        if handling:
            _, late = await asyncio.wait(handling, timeout=deadline_s)
            if late:
                log.warning(
                    "worker %s: %d batches still running after %g s; handing them back",
                    self.worker_id,
                    len(late),
                    deadline_s,
                )
                await cancel_all(list(late))

    async def before_stop(self) -> None:
        """Leave: drain, stop the loops, withdraw the heartbeat."""
        await self.drain(self.settings.drain_s)
        await self._loops.stop()
        if self._heartbeat is not None:
            await self._heartbeat.withdraw()
        await asyncio.to_thread(self.telemetry.flush)  # the span store exports on this loop

    async def _reconnected(self) -> None:
        await self._loops.restart()

    @property
    def _js(self) -> Any:
        return self.broker.config.connection_state.stream

    def _state(self, team: str) -> WorkerState:
        steps = sorted(f"{job}/{step}" for (t, job, step) in self._assigned if t == team)
        return WorkerState(
            worker=self.worker_id,
            pool=self.pool,
            slots=self.slots.count,
            running=self.runner.running,
            steps=steps,
            actors_busy=self.actors.busy(),
            actors_idle=self.actors.idle_count(),
            at=time.time(),
            status="draining" if self.draining else "ready",
            ready_at=self.ready_at,
            setting_up=self.runner.setting_up,
            setup_s={
                f"{job}/{step}": round(seconds, 3)
                for (t, job, step), seconds in self.runner.setup_s.items()
                if t == team and (t, job, step) in self._assigned
            },
        )

    # -- assignments and pullers -------------------------------------------------------------

    async def _on_assignment(self, team: str, wanted: Wanted, cap: int | None = None) -> None:
        """Start and stop pullers to match `wanted` (a changed share applies at once), and hold
        the team to `cap` task runs at once here (its part of its in-flight quota). A draining
        worker takes no assignment."""
        if self.draining:
            return
        self.slots.set_cap(team, cap)
        for key in [k for k in self._assigned if k[0] == team and k not in wanted]:
            del self._assigned[key]  # its puller ends after the batches it holds
        for key in [k for k, puller in self._pullers.items() if puller.done()]:
            del self._pullers[key]
        assigned_jobs = {(t, j) for t, j, _ in self._assigned} | {(t, j) for t, j, _ in wanted}
        for job_key_ in [k for k in self._records if k not in assigned_jobs]:
            del self._records[job_key_]  # forget the records of jobs no longer assigned
            self.slots.end_job(*job_key_)  # and their usage, so the team's next job is not slowed
        self._assigned.update(wanted)
        for key in wanted:
            puller = self._pullers.get(key)
            if puller is None or puller.done():
                self._pullers[key] = asyncio.create_task(self._pull(key))

    async def _pull(self, key: tuple[str, str, int]) -> None:
        team, job, step = key
        try:
            record = await self._record(team, job)
        except Exception:
            log.exception("job %s: no readable record; not pulling step %d", job, step)
            return
        puller = Puller(
            self._js,
            key,
            TeamLayout(team).tasks_stream,
            consumer_name(job, step),
            self.slots,
            share=lambda: self._assigned.get(key, 0),
            batch_size=lambda: self._batch_size(record.fingerprint, step),
            ack_wait_s=record.spec.options.ack_wait_s,
            ask=lambda n, in_turn: self.slots.ask(
                team, job, record.spec.options.priority, ending_turn=in_turn
            ),
            handle=self._handle,
        )
        # The coordinator unassigns a step whose backlog empties and assigns it again with the
        # next manifest; if that lands while this puller finishes its last batches it is not
        # replaced (it is not done), so it pulls again for as long as the step is assigned.
        while not await puller.run() and key in self._assigned:
            pass

    async def _handle(
        self, key: tuple[str, str, int], msgs: list[Any], keeper: KeepAlive, ticket: Ticket
    ) -> None:
        team, job, step = key
        task = asyncio.current_task()
        assert task is not None
        self._handling.add(task)
        try:
            try:
                record = await self._record(team, job)
            except BaseException:
                ticket.cancel()
                raise
            await self.runner.handle(msgs, keeper, ticket, record, step, self._effects[team])
        finally:
            self._handling.discard(task)

    async def _record(self, team: str, job: str) -> JobRecord:
        record = self._records.get((team, job))
        if record is None:
            entry = await self._kv[team, "jobs"].get(job_key(job))
            record = JobRecord.from_json(entry.value)
            self._records[team, job] = record
        return record

    def _batch_size(self, fingerprint: str, step: int) -> int:
        seconds = self.runner.seconds_per_message.get((fingerprint, step))
        if seconds is None:
            return 1
        return max(1, min(16, int(BATCH_TARGET_S / max(seconds, 1e-6))))

    # -- actors ------------------------------------------------------------------------------

    def _wanted(self) -> set[ActorKey]:
        return {
            (team, record.fingerprint, step)
            for (team, job, step) in self._assigned
            if (record := self._records.get((team, job))) is not None
        }

    async def _reap_idle_actors(self) -> None:
        """Stop actors idle too long; the others that are idle give back their spare memory."""
        while True:
            await asyncio.sleep(max(0.05, min(5.0, self.settings.idle_actor_s / 4)))
            for actor in self.actors.expired(time.monotonic()):
                await asyncio.to_thread(_kill, actor)
            for actor in self.actors.idle_actors():
                actor.release.remote()  # nothing waits for it

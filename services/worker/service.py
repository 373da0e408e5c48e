"""The worker: pulls the manifests of the steps the coordinator assigns it and runs them in
local Ray actors.

For each fetched manifest, in this order (a kill at any point is made good by redelivery):

1. done record exists -> re-announce `TaskDone` (same `Nats-Msg-Id`), ack, nothing else;
2. the step's actor reads the inputs, runs the stage, writes the outputs (deterministic paths);
   meanwhile `in_progress` keeps the message ours;
3. children's manifests published to the next step (`Nats-Msg-Id` = their deterministic ids);
4. done record created (first writer wins);
5. `TaskDone` event (`Nats-Msg-Id`), then ack.

A failed attempt naks with exponential backoff; the last allowed attempt instead goes to the
dead-letter stream with its error and traceback, a `TaskFailed` event follows, and the message
is terminated. Stage work never runs on the event loop: actors do it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from faststream.nats import NatsBroker

from gristmill.bus import DataRef, DeadLetter, TaskDone, TaskFailed, TaskManifest
from gristmill.bus.client import publish
from gristmill.bus.jobs import (
    JobRecord,
    assignment_key,
    consumer_name,
    done_key,
    job_key,
    msg_id,
    worker_key,
)
from gristmill.bus.streams import TeamLayout, ensure_layout
from gristmill.bus.subjects import dlq_subject, event_subject, task_subject
from gristmill.config import ServiceSettings
from gristmill.executors.gpus import gpu_memory_gb
from gristmill.executors.placement import gpu_request
from gristmill.stages import Resources

__all__ = ["WorkerService", "default_worker_id"]

log = logging.getLogger("gristmill.worker")

HEARTBEAT_S = 1.0
IDLE_ACTOR_S = 60.0
# A fetch takes as many tasks as fit in this much measured work (at least 1, at most 64).
BATCH_TARGET_S = 0.05


def default_worker_id(pool: str) -> str:
    """A worker id unique on this machine: pool, host and process id."""
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname().lower())[:32]
    return f"{pool}-{host}-{os.getpid()}"


@dataclass
class _Assigned:
    team: str
    job: str
    step: int
    slots: int


@dataclass
class _Actors:
    idle: list[Any] = field(default_factory=list)
    last_used: float = field(default_factory=time.monotonic)


class WorkerService:
    """One worker process of pool `pool` with `slots` concurrent tasks."""

    def __init__(
        self, settings: ServiceSettings, pool: str = "cpu", slots: int = 1, worker_id: str = ""
    ):
        if pool not in ("cpu", "gpu"):
            raise ValueError(f"pool must be 'cpu' or 'gpu', got {pool!r}")
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.settings = settings
        self.pool = pool
        self.slots = slots
        self.worker_id = worker_id or default_worker_id(pool)
        self.broker = NatsBroker(settings.nats_url, logger=None)
        self._free = asyncio.Semaphore(slots)
        self._assigned: dict[tuple[str, str, int], _Assigned] = {}
        self._pullers: dict[tuple[str, str, int], asyncio.Task[None]] = {}
        self._records: dict[tuple[str, str], JobRecord] = {}
        self._actors: dict[tuple[str, str, int], _Actors] = {}
        self._task_seconds: dict[tuple[str, str, int], float] = {}
        self._background: list[asyncio.Task[None]] = []
        self._kv: dict[tuple[str, str], Any] = {}

    # -- life cycle --------------------------------------------------------------------------

    async def after_start(self) -> None:
        """Join: layouts, heartbeat, and the assignment watch of every team."""
        import ray

        if not ray.is_initialized():
            raise RuntimeError("the worker needs Ray: start it inside ray_session()")
        js = self._js
        for team in self.settings.teams:
            layout = TeamLayout(team)
            await ensure_layout(js, layout)
            for purpose in ("jobs", "done", "assignments"):
                self._kv[team, purpose] = await js.key_value(layout.bucket(purpose))
            await self._beat(team)
            self._background.append(asyncio.create_task(self._watch(team)))
        self._background.append(asyncio.create_task(self._heartbeat()))
        self._background.append(asyncio.create_task(self._reap_idle_actors()))
        log.info("worker %s (%s, %d slots) ready", self.worker_id, self.pool, self.slots)

    async def before_stop(self) -> None:
        """Leave: stop pulling, withdraw the heartbeat (tasks in flight are redelivered)."""
        for task in [*self._background, *self._pullers.values()]:
            task.cancel()
        for task in [*self._background, *self._pullers.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for team in self.settings.teams:
            with contextlib.suppress(Exception):
                await self._kv[team, "assignments"].delete(worker_key(self.worker_id))

    @property
    def _js(self) -> Any:
        return self.broker.config.connection_state.stream

    async def _beat(self, team: str) -> None:
        beat = {"pool": self.pool, "slots": self.slots, "at": time.time()}
        await self._kv[team, "assignments"].put(
            worker_key(self.worker_id), json.dumps(beat).encode()
        )

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            for team in self.settings.teams:
                try:
                    await self._beat(team)
                except Exception:
                    log.exception("heartbeat for team %s failed", team)

    async def _watch(self, team: str) -> None:
        """Follow this worker's assignment key: start and stop pullers to match it."""
        watcher = await self._kv[team, "assignments"].watch(assignment_key(self.worker_id))
        async for entry in watcher:
            if entry is None:
                continue
            wanted: dict[tuple[str, str, int], _Assigned] = {}
            if entry.value:
                for item in json.loads(entry.value)["steps"]:
                    key = (team, item["job"], item["step"])
                    wanted[key] = _Assigned(team, item["job"], item["step"], item["slots"])
            for key in [k for k in self._assigned if k[0] == team and k not in wanted]:
                del self._assigned[key]  # its puller ends after the batches it holds
            for key in [k for k, puller in self._pullers.items() if puller.done()]:
                del self._pullers[key]
            for key, assigned in wanted.items():
                self._assigned[key] = assigned  # a changed slot count applies at once
                puller = self._pullers.get(key)
                if puller is None or puller.done():
                    self._pullers[key] = asyncio.create_task(self._pull(key))

    # -- pulling -----------------------------------------------------------------------------

    async def _pull(self, key: tuple[str, str, int]) -> None:
        """Fetch and run the step's manifests while it stays assigned."""
        from nats.errors import TimeoutError
        from nats.js.errors import NotFoundError

        team, job, step = key
        try:
            sub = await self._js.pull_subscribe_bind(
                consumer_name(job, step), stream=TeamLayout(team).tasks_stream
            )
        except NotFoundError:
            log.info("step %d of job %s has no consumer (finished?)", step, job)
            self._assigned.pop(key, None)
            return
        running: set[asyncio.Task[None]] = set()
        try:
            while key in self._assigned:
                if len(running) >= self._assigned[key].slots:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msgs = await sub.fetch(self._batch_size(key), timeout=1.0)
                except TimeoutError:
                    continue
                except NotFoundError:
                    break
                task = asyncio.create_task(self._handle(key, msgs))
                running.add(task)
                task.add_done_callback(running.discard)
            if running:
                await asyncio.wait(running)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _batch_size(self, key: tuple[str, str, int]) -> int:
        seconds = self._task_seconds.get(key)
        if seconds is None:
            return 1
        return max(1, min(64, int(BATCH_TARGET_S / max(seconds, 1e-6))))

    async def _handle(self, key: tuple[str, str, int], msgs: list[Any]) -> None:
        async with self._free:
            keeper = asyncio.create_task(self._keep_alive(msgs))
            try:
                await self._handle_batch(key, msgs)
            except Exception:
                log.exception("step %s: a batch of %d tasks failed unexpectedly", key, len(msgs))
                for msg in msgs:  # redelivered after the backoff, counted as an attempt
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=1.0)
            finally:
                keeper.cancel()

    async def _keep_alive(self, msgs: list[Any]) -> None:
        """`in_progress` on every message of the batch, a few times per ack wait."""
        if not msgs:
            return
        ack_wait = await self._ack_wait(msgs[0])
        while True:
            await asyncio.sleep(max(0.05, ack_wait / 3))
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    async def _ack_wait(self, msg: Any) -> float:
        team, job = self._team_job(msg)
        record = await self._record(team, job)
        return record.spec.options.ack_wait_s

    @staticmethod
    def _team_job(msg: Any) -> tuple[str, str]:
        parts = msg.subject.split(".")
        return parts[1], parts[3]

    async def _record(self, team: str, job: str) -> JobRecord:
        record = self._records.get((team, job))
        if record is None:
            entry = await self._kv[team, "jobs"].get(job_key(job))
            record = JobRecord.from_json(entry.value)
            self._records[team, job] = record
        return record

    async def _handle_batch(self, key: tuple[str, str, int], msgs: list[Any]) -> None:

        team, job, step = key
        record = await self._record(team, job)
        checked = await asyncio.gather(*(self._triage(team, record, step, msg) for msg in msgs))
        todo = [item for item in checked if item is not None]
        if not todo:
            return
        started = time.perf_counter()
        results = await self._run(key, record, [m for _, m in todo])
        per_task = (time.perf_counter() - started) / len(todo)
        previous = self._task_seconds.get(key, per_task)
        self._task_seconds[key] = 0.7 * previous + 0.3 * per_task
        await asyncio.gather(
            *(
                self._finish(team, record, manifest, msg, result)
                for (msg, manifest), result in zip(todo, results, strict=True)
            )
        )

    async def _triage(
        self, team: str, record: JobRecord, step: int, msg: Any
    ) -> tuple[Any, TaskManifest] | None:
        """The manifest of `msg` if it is to be run; otherwise settle it here: unreadable
        (terminated), finished before (announced again, acked), or past its last attempt
        (dead-lettered)."""
        from nats.js.errors import KeyNotFoundError

        try:
            manifest = TaskManifest.from_json(msg.data)
        except Exception as exc:
            log.error("job %s step %d: unreadable manifest, dropped: %s", record.job, step, exc)
            await msg.term()
            return None
        try:
            entry = await self._kv[team, "done"].get(done_key(record.job, step, manifest.task_id))
        except KeyNotFoundError:
            entry = None
        if entry is not None and entry.value:
            await self._announce(team, TaskDone.from_json(entry.value), msg)
            return None
        attempts = msg.metadata.num_delivered
        if attempts > record.spec.options.max_deliver:
            error = (
                f"attempt {attempts} of at most {record.spec.options.max_deliver}: the "
                f"previous attempt ended without a result (its worker died?)"
            )
            await self._dead_letter(team, record, manifest, msg, error, "")
            return None
        return msg, manifest

    async def _run(
        self, key: tuple[str, str, int], record: JobRecord, manifests: list[TaskManifest]
    ) -> list[dict[str, Any]]:
        """Run the manifests in one of the step's actors; an actor that dies or cannot set up
        fails every task of the batch (they are retried like any failure)."""
        import ray

        actor_key = (key[0], record.fingerprint, key[2])
        actor = await self._actor(actor_key, record, key[2])
        try:
            results: list[dict[str, Any]] = await actor.run.remote([m.to_json() for m in manifests])
        except ray.exceptions.RayError as exc:
            with contextlib.suppress(Exception):
                ray.kill(actor)
            cause = getattr(exc, "cause", None) or exc
            error = f"{type(cause).__name__}: {cause}"
            detail = getattr(cause, "traceback", "") or str(exc)
            return [{"ok": False, "error": error, "traceback": detail} for _ in manifests]
        pool = self._actors[actor_key]
        pool.idle.append(actor)
        pool.last_used = time.monotonic()
        return results

    async def _actor(self, actor_key: tuple[str, str, int], record: JobRecord, step: int) -> Any:
        import ray

        from services.worker.runner import StepRunner

        pool = self._actors.setdefault(actor_key, _Actors())
        if pool.idle:
            return pool.idle.pop()
        self._evict_unwanted_actors()
        # CPU concurrency is the worker's slots, not Ray's: an actor asks Ray for no CPU, so
        # idle actors of other steps never hold back new ones. GPU steps ask for their share.
        info = record.steps[step]
        gpus = 0.0
        if info.pool == "gpu":
            gpus = gpu_request(
                info.name,
                Resources(gpus=info.gpus, gpu_memory_gb=info.gpu_memory_gb),
                ray.cluster_resources().get("GPU", 0.0),  # type: ignore[no-untyped-call]
                gpu_memory_gb(),
            )
        remote = ray.remote(StepRunner).options(num_cpus=0, num_gpus=gpus)
        return remote.remote(
            record.to_json(),
            step,
            self.settings.store_root,
            self.settings.trust_code,
            self.worker_id,
        )

    def _evict_unwanted_actors(self) -> None:
        """Stop the idle actors of steps no assigned job runs (before starting another: each
        holds a set-up stage and its memory). Actors of assigned steps stay warm."""
        import ray

        wanted = {
            (team, record.fingerprint, step)
            for (team, job, step) in self._assigned
            if (record := self._records.get((team, job))) is not None
        }
        for actor_key, pool in list(self._actors.items()):
            if actor_key not in wanted and pool.idle:
                for actor in pool.idle:
                    with contextlib.suppress(Exception):
                        ray.kill(actor)
                pool.idle.clear()

    async def _reap_idle_actors(self) -> None:
        import ray

        while True:
            await asyncio.sleep(IDLE_ACTOR_S / 4)
            now = time.monotonic()
            for actor_key, pool in list(self._actors.items()):
                if pool.idle and now - pool.last_used > IDLE_ACTOR_S:
                    for actor in pool.idle:
                        with contextlib.suppress(Exception):
                            ray.kill(actor)
                    del self._actors[actor_key]

    # -- effects -----------------------------------------------------------------------------

    async def _finish(
        self,
        team: str,
        record: JobRecord,
        manifest: TaskManifest,
        msg: Any,
        result: dict[str, Any],
    ) -> None:
        if not result["ok"]:
            await self._failed(team, record, manifest, msg, result)
            return
        from nats.js.errors import KeyWrongLastSequenceError

        step = manifest.step
        refs = [DataRef.from_json(raw) for raw in result["outputs"]]
        done = TaskDone(
            job=manifest.job,
            step=step,
            task_id=manifest.task_id,
            outputs=refs,
            output_ids=result["output_ids"],
            items_in=result["items_in"],
            items_out=result["items_out"],
            items_dropped=result["items_dropped"],
            wall_time_s=result["wall_time_s"],
            attempt=msg.metadata.num_delivered,
            worker=self.worker_id,
        )
        if step + 1 < len(record.steps):
            subject = task_subject(team, manifest.job, str(step + 1))
            children: list[Awaitable[bool]] = [
                publish(
                    self._js,
                    subject,
                    TaskManifest(
                        job=manifest.job,
                        step=step + 1,
                        step_name=record.steps[step + 1].name,
                        task_id=child_id,
                        dataset=dataset,
                        inputs=[ref],
                        parents=[manifest.task_id],
                    ),
                    msg_id("task", manifest.job, step + 1, child_id),
                )
                for child_id, ref, dataset in zip(
                    result["output_ids"], refs, result["dataset"], strict=True
                )
            ]
            await asyncio.gather(*children)
        with contextlib.suppress(KeyWrongLastSequenceError):
            await self._kv[team, "done"].create(
                done_key(manifest.job, step, manifest.task_id), done.to_json()
            )
        await self._announce(team, done, msg)

    async def _announce(self, team: str, done: TaskDone, msg: Any) -> None:
        subject = event_subject(team, done.job, "task_done")
        await publish(self._js, subject, done, msg_id("done", done.job, done.step, done.task_id))
        await msg.ack()

    async def _failed(
        self,
        team: str,
        record: JobRecord,
        manifest: TaskManifest,
        msg: Any,
        result: dict[str, Any],
    ) -> None:
        attempts = msg.metadata.num_delivered
        options = record.spec.options
        log.warning(
            "job %s step %d task %s attempt %d/%d failed: %s",
            manifest.job,
            manifest.step,
            manifest.task_id,
            attempts,
            options.max_deliver,
            result["error"],
        )
        if attempts < options.max_deliver:
            await msg.nak(delay=options.retry_backoff_s * 2 ** (attempts - 1))
            return
        await self._dead_letter(team, record, manifest, msg, result["error"], result["traceback"])

    async def _dead_letter(
        self,
        team: str,
        record: JobRecord,
        manifest: TaskManifest,
        msg: Any,
        error: str,
        detail: str,
    ) -> None:
        attempts = msg.metadata.num_delivered
        failed = TaskFailed(
            job=manifest.job,
            step=manifest.step,
            task_id=manifest.task_id,
            error=error,
            traceback=detail,
            attempts=attempts,
            worker=self.worker_id,
        )
        # Per published manifest (its stream sequence): a retried dead letter that fails again
        # is a new dead letter, while a repeat of this very step is dropped as a duplicate.
        ids = (manifest.job, manifest.step, manifest.task_id, msg.metadata.sequence.stream)
        await publish(
            self._js,
            dlq_subject(team, manifest.job, str(manifest.step)),
            DeadLetter(manifest=manifest, failure=failed),
            msg_id("dlq", *ids),
        )
        await publish(
            self._js,
            event_subject(team, manifest.job, "task_failed"),
            failed,
            msg_id("failed", *ids),
        )
        await msg.term()

"""Running one fetched batch of a step: triage each message, run the runnable manifests' tasks
in one of the step's actors, then settle every manifest (`effects`).

The run holds one of the worker's slots; settling does not. A group measured to hold a slot
too long as one run (`outcome.overlong`: grouped before its step was measured) runs task by
task instead, each task in a slot of its own, and is settled as the one manifest it is, so
other teams' work gets the slots between its tasks. A task that runs past its timeout
(the stage's `task_timeout_s`, else the job's) gets its actor stopped, and counts as a failed
attempt; the tasks that ran beside it in a group are retried one by one without losing an
attempt. An actor that dies fails its whole batch the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from gristmill import faults
from gristmill.bus import TaskEntry, TaskManifest
from gristmill.bus.jobs import JobRecord
from gristmill.config import ServiceSettings
from gristmill.executors.gpus import gpu_memory_gb
from gristmill.executors.placement import gpu_request
from gristmill.stages import Resources
from services.worker.actors import ActorKey, ActorPool
from services.worker.effects import Effects, Failure, Work
from services.worker.fairshare import Draining, FairSlots, Ticket
from services.worker.outcome import overlong
from services.worker.pulling import KeepAlive
from services.worker.spans import AttemptSpans

__all__ = ["BatchRunner", "Lost"]

log = logging.getLogger("gristmill.worker")

# How often a long actor call is asked which task it is on (for the task timeout).
PROGRESS_EVERY_S = 2.0
# A CPU worker keeps at most this many actors per slot, busy and idle (see `_start_actor`).
KEEP_ACTORS_PER_SLOT = 3


@dataclass(frozen=True)
class Lost:
    """A run whose actor is gone: it died (`hung` is None) or was stopped because task `hung`
    ran past its timeout."""

    error: str
    detail: str
    hung: str | None = None


class BatchRunner:
    """Runs fetched batches for one worker."""

    def __init__(
        self,
        settings: ServiceSettings,
        worker: str,
        slots: FairSlots,
        actors: ActorPool,
        wanted: Callable[[], set[ActorKey]],
        spans: AttemptSpans | None = None,
    ):
        self.settings = settings
        self.spans = spans or AttemptSpans(trace.NoOpTracer(), worker)
        self.worker = worker
        self.slots = slots
        self.actors = actors
        self.wanted = wanted  # the actor keys of the steps this worker is assigned
        self.seconds_per_task: dict[tuple[str, int], float] = {}  # (fingerprint, step)
        self.seconds_per_message: dict[tuple[str, int], float] = {}
        self.running = 0
        self.setting_up = 0  # new actors on their first call (setting their stage up)
        self.setup_s: dict[tuple[str, str, int], float] = {}  # (team, job, step): measured

    async def handle(
        self,
        msgs: list[Any],
        keeper: KeepAlive,
        ticket: Ticket,
        record: JobRecord,
        step: int,
        effects: Effects,
    ) -> None:
        """Triage, run (in the slot `ticket` waits for) and settle one fetched batch; nothing
        escapes (a message left unsettled by a bug is naked, so it is retried)."""
        spans: list[list[Span]] = []
        try:
            triaged = await asyncio.gather(*(effects.triage(m, record) for m in msgs))
            works = [w for w in triaged if w is not None]
            if works:
                spans = [self.spans.start(record, w) for w in works]
                outcome, actor = await self._run_batch(record, step, works, ticket, spans)
                await asyncio.gather(
                    *(
                        _in_span(
                            group[0], self._settle(effects, record, w, outcome, i, group, actor)
                        )
                        for i, (w, group) in enumerate(zip(works, spans, strict=True))
                    )
                )
        except Draining:  # never started: handed back at once, for another worker to run
            log.info(
                "job %s step %d: %d manifests handed back (draining)", record.job, step, len(msgs)
            )
            await _nak_unsettled(msgs, delay=None)
        except asyncio.CancelledError:  # stopped mid-way (a drain's deadline): handed back too;
            await _nak_unsettled(msgs, delay=None)  # a done record makes a rerun a no-op
            raise
        except Exception:
            log.exception(
                "job %s step %d: a batch of %d failed unexpectedly", record.job, step, len(msgs)
            )
            await _nak_unsettled(msgs, delay=1.0)
            for span in (s for group in spans for s in group):
                span.set_status(Status(StatusCode.ERROR, "the batch failed unexpectedly"))
        finally:
            ticket.cancel()  # its slot, if it was never run in (or none came): given up
            keeper.stop()
            for span in (s for group in spans for s in group):
                span.end()

    async def _settle(
        self,
        effects: Effects,
        record: JobRecord,
        work: Work,
        outcome: Any,
        index: int,
        spans: list[Span],
        actor: str,
    ) -> None:
        tasks = work.manifest.tasks
        if isinstance(outcome, Lost):
            failure = Failure(outcome.error, outcome.detail)
            # The task that hung failed its attempt; when the actor died of something unknown,
            # every task it ran did. The others beside a hung task lose no attempt for it.
            hit = {t.task_id: failure for t in tasks if outcome.hung in (None, "?", t.task_id)}
            for task, span in zip(tasks, spans, strict=True):
                if task.task_id in hit:
                    self.spans.failed(span, outcome.error, outcome.detail)
            if len(tasks) > 1:
                await effects.split(work.msg, work.manifest, record, hit)
            elif hit:
                await effects.failed(work, record, outcome.error, outcome.detail)
            else:
                await effects.requeue(work)
            return
        raw: list[dict[str, Any]] = outcome[index]
        self.spans.ran(spans, raw, actor)
        if all(r["ok"] for r in raw):
            await effects.finish(work, record, raw)
        elif len(tasks) > 1:
            failed = {
                t.task_id: Failure(r["error"], r["traceback"])
                for t, r in zip(tasks, raw, strict=True)
                if not r["ok"]
            }
            await effects.split(work.msg, work.manifest, record, failed)
        else:
            await effects.failed(work, record, raw[0]["error"], raw[0]["traceback"])

    async def _run_batch(
        self,
        record: JobRecord,
        step: int,
        works: list[Work],
        ticket: Ticket,
        spans: list[list[Span]],
    ) -> tuple[Any, str]:
        """`_run`'s outcome for the batch: in one run, or, where a manifest is overlong, task by
        task (each in a slot of its own, a run failing as a whole failing them all)."""
        measured = self.seconds_per_task.get((record.fingerprint, step))
        if not any(overlong(measured, len(w.manifest.tasks)) for w in works):
            return await self._run(record, step, works, ticket, spans[0][0])
        singles = [
            (index, Work(work.msg, _alone(work.manifest, task), work.attempt), span)
            for index, work in enumerate(works)
            for task, span in zip(work.manifest.tasks, spans[index], strict=True)
        ]
        spec = record.spec
        tickets = [ticket] + [
            self.slots.ask(spec.team, record.job, spec.options.priority) for _ in singles[1:]
        ]
        try:
            async with asyncio.TaskGroup() as group:
                runs = [
                    group.create_task(self._run(record, step, [single], t, span))
                    for (_, single, span), t in zip(singles, tickets, strict=True)
                ]
        finally:
            for t in tickets:
                t.cancel()
        outcomes = [run.result() for run in runs]
        actor = outcomes[0][1]
        lost = next((outcome for outcome, _ in outcomes if isinstance(outcome, Lost)), None)
        if lost is not None:
            return lost, actor
        raw: list[list[dict[str, Any]]] = [[] for _ in works]
        for (index, _, _), (outcome, _) in zip(singles, outcomes, strict=True):
            raw[index] += outcome[0]
        return raw, actor

    async def _run(
        self, record: JobRecord, step: int, works: list[Work], ticket: Ticket, first: Span
    ) -> tuple[Any, str]:
        """Per manifest, the actor's per-task results, or `Lost` for the whole batch; and the
        actor that ran them. The time the run held its slot is a `slot` span under `first`."""
        import ray

        key: ActorKey = (record.spec.team, record.fingerprint, step)
        grant = await ticket.granted()
        granted_ns = time.time_ns()
        tasks = sum(len(w.manifest.tasks) for w in works)
        per_task = self.seconds_per_task.get((record.fingerprint, step))
        if per_task is not None:  # as it starts, a run says how long it will hold its slot
            self.slots.expect(grant, per_task * tasks)
        self.running += 1
        started = time.perf_counter()
        fresh = False
        try:
            actor = self.actors.take(key)
            if actor is None:
                fresh = True
                self.setting_up += 1
                actor = await self._start_actor(key, record, step)
            name = _actor_id(actor)
            call = asyncio.ensure_future(
                _await(actor.run.remote([w.manifest.to_json() for w in works]))
            )
            timeout = record.steps[step].task_timeout_s or record.spec.options.task_timeout_s
            while True:
                done, _ = await asyncio.wait({call}, timeout=min(PROGRESS_EVERY_S, timeout))
                if done:
                    break
                hung = await self._hung(actor, timeout, time.perf_counter() - started)
                if hung is not None:
                    call.cancel()
                    await self._stop(key, actor)
                    error = (
                        f"TaskTimeout: task {hung} of step {step} '{record.steps[step].name}' ran "
                        f"past task_timeout_s={timeout:g}; its actor was stopped"
                    )
                    return Lost(error, error, hung), name
            try:
                results = call.result()
            except ray.exceptions.RayError as exc:
                await self._stop(key, actor)
                cause = getattr(exc, "cause", None) or exc
                error = f"{type(cause).__name__}: {cause}"
                return Lost(error, getattr(cause, "traceback", "") or str(exc)), name
            self.actors.give_back(key, actor, time.monotonic())
            elapsed = time.perf_counter() - started
            if fresh:  # what the first call took beyond its tasks was the set-up
                ran = sum(r.get("wall_time_s", 0.0) for m in results for r in m)
                self.setup_s[record.spec.team, record.job, step] = max(0.0, elapsed - ran)
            self._measure(record.fingerprint, step, works, elapsed)
            return results, name
        finally:
            if fresh:
                self.setting_up -= 1
            self.running -= 1
            await self.slots.release(grant)
            self.spans.slot(first, granted_ns, time.time_ns(), tasks)

    async def _hung(self, actor: Any, timeout: float, elapsed: float) -> str | None:
        """The task the actor has run for longer than `timeout`, if any ("?" when the actor is
        past it and does not even say which task it is on)."""
        try:
            progress = await asyncio.wait_for(_await(actor.progress.remote()), PROGRESS_EVERY_S * 5)
        except TimeoutError:
            return "?" if elapsed > timeout else None
        except Exception:
            return None  # a dying actor: its call fails on its own
        if progress is not None and progress[1] > timeout:
            return str(progress[0])
        return None

    def _measure(self, fingerprint: str, step: int, works: list[Work], seconds: float) -> None:
        tasks = sum(len(w.manifest.tasks) for w in works)
        for table, value in (
            (self.seconds_per_task, seconds / tasks),
            (self.seconds_per_message, seconds / len(works)),
        ):
            previous = table.get((fingerprint, step), value)
            table[fingerprint, step] = 0.7 * previous + 0.3 * value

    async def _start_actor(self, key: ActorKey, record: JobRecord, step: int) -> Any:
        import ray

        from services.worker.runner import StepRunner

        info = record.steps[step]
        # Each idle actor holds a set-up stage: a GPU one, memory the new one may need; CPU
        # ones are kept up to a bound, so one team's new job does not make another's next start
        # cold.
        keep = None if info.pool == "gpu" else KEEP_ACTORS_PER_SLOT * self.slots.count
        for idle in self.actors.make_room(self.wanted(), keep):
            await asyncio.to_thread(_kill, idle)
        # CPU concurrency is the worker's slots, not Ray's: an actor asks Ray for no CPU, so
        # idle actors of other steps never hold back new ones. GPU steps ask for their share.
        gpus = 0.0
        if info.pool == "gpu":
            available = await asyncio.to_thread(ray.cluster_resources)
            gpus = gpu_request(
                info.name,
                Resources(gpus=info.gpus, gpu_memory_gb=info.gpu_memory_gb),
                available.get("GPU", 0.0),
                gpu_memory_gb(),
            )
        options: dict[str, Any] = {"num_cpus": 0, "num_gpus": gpus, "max_concurrency": 2}
        if faults.active():  # the chaos suite's faults reach the actors too (store I/O)
            options["runtime_env"] = {"env_vars": faults.environment()}
        remote = ray.remote(StepRunner).options(**options)
        self.actors.started(key)
        return remote.remote(
            record.to_json(),
            step,
            self.settings.store_root,
            self.settings.trusts(record.spec.team),
            self.worker,
        )

    async def _stop(self, key: ActorKey, actor: Any) -> None:
        self.actors.lost(key)
        await asyncio.to_thread(_kill, actor)


async def _nak_unsettled(msgs: list[Any], delay: float | None) -> None:
    """Nak every message of a batch not yet settled (a failing nak is redelivered anyway)."""
    for msg in msgs:
        if not msg.is_acked:
            with contextlib.suppress(Exception):
                await msg.nak(delay=delay)


async def _in_span(span: Span, settling: Awaitable[None]) -> None:
    """Settle with `span` current: what is published and logged belongs to its trace."""
    with trace.use_span(span, end_on_exit=False):
        await settling


def _actor_id(actor: Any) -> str:
    try:
        return str(actor._actor_id.hex())
    except AttributeError:
        return ""


async def _await(ref: Any) -> Any:
    return await ref


def _alone(manifest: TaskManifest, task: TaskEntry) -> TaskManifest:
    """One task of a group as a manifest of its own, keyed as a split makes it."""
    return TaskManifest(
        job=manifest.job,
        step=manifest.step,
        step_name=manifest.step_name,
        key=task.task_id,
        tasks=[task],
    )


def _kill(actor: Any) -> None:
    import ray

    with contextlib.suppress(Exception):
        ray.kill(actor)

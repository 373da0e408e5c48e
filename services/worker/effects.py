"""What a worker does with a manifest around running it, in the order that makes a kill at any
instruction harmless (`faults.point` marks where the chaos suite kills it).

- all tasks ok: the next step's manifests (msg ids: their keys) -> long id lists (`IdsPart`)
  -> the done record (`TasksDone`, created: the first writer wins) -> the `TasksDone` event ->
  ack. A redelivery finds the done record and announces it again, or finds none and runs again
  into the same names and ids.
- a group with a failed task, or delivered before: split. Its tasks go out one by one (msg ids:
  task ids, each carrying the attempts it had), then the done record `ManifestSplit`, then ack.
- a single task that failed: nak with backoff, or on its last attempt the dead letter, then
  `TaskFailed`, then term. One past its last attempt (the attempt before died) is dead-lettered
  without running; a message no manifest can be read from is dead-lettered as it came.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from gristmill import faults
from gristmill.bus import (
    DeadLetter,
    ManifestSplit,
    Message,
    MessageError,
    TaskFailed,
    TaskManifest,
    TasksDone,
    peek,
)
from gristmill.bus.client import Publisher
from gristmill.bus.jobs import JobRecord, done_key, msg_id
from gristmill.bus.subjects import dlq_subject, event_subject, parse_subject, task_subject
from gristmill.telemetry import inject
from services.worker.outcome import child_manifests, group_size_for, results_of

__all__ = ["Effects", "Failure", "Work"]

log = logging.getLogger("gristmill.worker")


@dataclass(frozen=True)
class Failure:
    """Why an attempt at a task failed: the error, and its traceback."""

    error: str
    detail: str


@dataclass
class Work:
    """A manifest to run, and this delivery's attempt number (the message's deliveries plus the
    attempts a single task carried out of a split group)."""

    msg: Any
    manifest: TaskManifest
    attempt: int


class Effects:
    """One worker's effects on one team's streams and done records. `seconds_per_task(
    fingerprint, step)` is a step's measured time per task (None: not measured): how many of its
    tasks share a manifest follows from it."""

    def __init__(
        self,
        team: str,
        worker: str,
        publisher: Publisher,
        done_kv: Any,
        seconds_per_task: Callable[[str, int], float | None],
        tracer: trace.Tracer | None = None,
    ):
        self.team = team
        self.worker = worker
        self.publisher = publisher
        self.done_kv = done_kv
        self.seconds_per_task = seconds_per_task
        self.tracer = tracer or trace.NoOpTracer()

    async def triage(self, msg: Any, record: JobRecord) -> Work | None:
        """The work in `msg` if it is to run; otherwise settle the message here."""
        try:
            manifest = TaskManifest.from_json(msg.data)
        except MessageError as exc:
            await self.unreadable(msg, str(exc))
            return None
        previous = await self._done_record(manifest)
        if previous is not None:
            if isinstance(previous, TasksDone):
                await self._announce(previous, msg)
            else:
                await msg.ack()  # split before: its tasks run on their own
            return None
        delivered = msg.metadata.num_delivered
        if len(manifest.tasks) > 1 and delivered > 1:
            await self.split(msg, manifest, record, {}, delivered_before=delivered - 1)
            return None
        work = Work(msg, manifest, delivered + manifest.tasks[0].attempts)
        limit = record.spec.options.max_deliver
        if work.attempt > limit:
            error = (
                f"attempt {work.attempt} of at most {limit}: the previous attempt ended without "
                f"a result (its worker died?)"
            )
            await self.dead_letter(work, error, "")
            return None
        return work

    async def finish(self, work: Work, record: JobRecord, raw: list[dict[str, Any]]) -> None:
        """Every task of the manifest succeeded: publish what it made, record, announce, ack."""
        manifest = work.manifest
        job, step = manifest.job, manifest.step
        last = step + 1 == len(record.steps)
        results, children, parts = results_of(manifest, raw, last, work.attempt)
        if children:
            size = group_size_for(self.seconds_per_task(record.fingerprint, step + 1))
            made = child_manifests(
                job, step + 1, record.steps[step + 1].name, manifest.key, children, size
            )
            subject = task_subject(self.team, job, str(step + 1))
            with self._span("publish", job, manifests=len(made), tasks=len(children)):
                await self._publish(
                    [(subject, m, msg_id("task", job, step + 1, m.key)) for m in made]
                )
        faults.point("worker.children_published")
        if parts:
            subject = event_subject(self.team, job, "ids")
            await self._publish(
                [(subject, p, msg_id("ids", job, p.step, p.owner, p.part)) for p in parts]
            )
        faults.point("worker.ids_published")
        done = TasksDone(
            job=job,
            step=step,
            key=manifest.key,
            results=results,
            attempt=work.attempt,
            worker=self.worker,
            at=time.time(),
        )
        if not await self._record(manifest, done):
            first = await self._done_record(manifest)  # an earlier attempt finished first
            done = first if isinstance(first, TasksDone) else done
        faults.point("worker.recorded")
        await self._announce(done, work.msg)

    async def split(
        self,
        msg: Any,
        manifest: TaskManifest,
        record: JobRecord,
        failures: dict[str, Failure],
        delivered_before: int = 0,
    ) -> None:
        """Publish a group's tasks one by one; record the split; ack. Every task has spent the
        `delivered_before` earlier deliveries of the group, and one that failed this attempt
        (`failures`) one more: if that was its last, it is dead-lettered here with its error."""
        job, step = manifest.job, manifest.step
        limit = record.spec.options.max_deliver
        singles: list[TaskManifest] = []
        letters: list[tuple[DeadLetter, TaskFailed]] = []
        for task in manifest.tasks:
            failure = failures.get(task.task_id)
            spent = task.attempts + delivered_before + (failure is not None)
            single = TaskManifest(
                job=job,
                step=step,
                step_name=manifest.step_name,
                key=task.task_id,
                tasks=[task.model_copy(update={"attempts": spent})],
            )
            if failure is None or spent < limit:
                singles.append(single)
                continue
            failed = self._failure(single, failure, spent)
            letters.append((DeadLetter(manifest=single, failure=failed), failed))
        subject = task_subject(self.team, job, str(step))
        await self._publish([(subject, m, msg_id("task", job, step, m.key)) for m in singles])
        faults.point("worker.split_published")
        await self._letters(msg, letters)
        ids = [task.task_id for task in manifest.tasks]
        await self._record(
            manifest, ManifestSplit(job=job, step=step, key=manifest.key, task_ids=ids)
        )
        faults.point("worker.split_recorded")
        await msg.ack()

    async def requeue(self, work: Work) -> None:
        """Publish a single task's manifest again without this delivery counting as one of its
        attempts (it ran beside a task that hung, and its actor was stopped), then ack."""
        manifest = work.manifest
        [task] = manifest.tasks
        again = manifest.model_copy(
            update={"tasks": [task.model_copy(update={"attempts": work.attempt - 1})]}
        )
        seq = work.msg.metadata.sequence.stream
        subject = task_subject(self.team, manifest.job, str(manifest.step))
        await self._publish(
            [(subject, again, msg_id("again", manifest.job, manifest.step, manifest.key, seq))]
        )
        faults.point("worker.requeued")
        await work.msg.ack()

    async def failed(self, work: Work, record: JobRecord, error: str, detail: str) -> None:
        """A single task's attempt failed: retry it after a backoff, or dead-letter it."""
        limit = record.spec.options.max_deliver
        task_id = work.manifest.tasks[0].task_id
        log.warning(
            "job %s step %d task %s attempt %d/%d failed: %s",
            work.manifest.job,
            work.manifest.step,
            task_id,
            work.attempt,
            limit,
            error,
        )
        if work.attempt < limit:
            await work.msg.nak(delay=record.spec.options.retry_backoff_s * 2 ** (work.attempt - 1))
        else:
            await self.dead_letter(work, error, detail)

    async def dead_letter(self, work: Work, error: str, detail: str) -> None:
        """Dead-letter a single task's manifest, announce `TaskFailed`, terminate the message."""
        failed = self._failure(work.manifest, Failure(error, detail), work.attempt)
        await self._letters(
            work.msg, [(DeadLetter(manifest=work.manifest, failure=failed), failed)]
        )
        await work.msg.term()

    def _failure(self, single: TaskManifest, failure: Failure, attempts: int) -> TaskFailed:
        return TaskFailed(
            job=single.job,
            step=single.step,
            task_id=single.tasks[0].task_id,
            error=failure.error,
            traceback=failure.detail,
            attempts=attempts,
            worker=self.worker,
            root=single.tasks[0].root,
        )

    async def unreadable(self, msg: Any, error: str) -> None:
        """A message no manifest can be read from (another schema version, or damaged): kept as
        it came in the dead-letter stream, and the tasks it names fail, so that the job ends."""
        where = parse_subject(msg.subject)
        job, step = where.job or "", int(where.step or 0)
        raw = peek(msg.data)
        named = [t.get("task_id") for t in raw.get("tasks") or [] if isinstance(t, dict)]
        ids = [i for i in named if isinstance(i, str)] or [
            str(raw.get("task_id") or raw.get("key") or "?")
        ]
        log.error("job %s step %d: unreadable manifest dead-lettered: %s", job, step, error)
        failures = [
            TaskFailed(
                job=job,
                step=step,
                task_id=task_id,
                error=f"unreadable manifest: {error}",
                attempts=msg.metadata.num_delivered,
                worker=self.worker,
            )
            for task_id in ids
        ]
        text = msg.data[:65536].decode("utf-8", "replace")
        letter = DeadLetter(raw=text, subject=msg.subject, failure=failures[0])
        await self._letters(msg, [(letter, f) for f in failures])
        await msg.term()

    async def _letters(self, msg: Any, letters: list[tuple[DeadLetter, TaskFailed]]) -> None:
        """Each dead letter (once per manifest), then each `TaskFailed`. Keyed by the delivered
        message (its stream sequence): a retried dead letter that fails again is a new dead
        letter, while a repeat of this very step is dropped as a duplicate."""
        if not letters:
            return
        seq = msg.metadata.sequence.stream
        dead: dict[str, tuple[str, DeadLetter, str]] = {}
        for letter, f in letters:
            mid = msg_id("dlq", f.job, f.step, f"{letter.failure.task_id}.{seq}")
            dead[mid] = (dlq_subject(self.team, f.job, str(f.step)), letter, mid)
        first = letters[0][1]
        with self._span("dead_letter", first.job, tasks=len(letters), error=first.error[:500]):
            await self._publish(list(dead.values()))
        faults.point("worker.dead_lettered")
        await self._publish(
            [
                (
                    event_subject(self.team, f.job, "task_failed"),
                    f,
                    msg_id("failed", f.job, f.step, f"{f.task_id}.{seq}"),
                )
                for _, f in letters
            ]
        )
        faults.point("worker.failure_announced")

    async def _announce(self, done: TasksDone, msg: Any) -> None:
        subject = event_subject(self.team, done.job, "task_done")
        await self._publish([(subject, done, msg_id("done", done.job, done.step, done.key))])
        faults.point("worker.announced")
        await msg.ack()
        faults.point("worker.acked")

    async def _done_record(self, manifest: TaskManifest) -> TasksDone | ManifestSplit | None:
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await self.done_kv.get(done_key(manifest.job, manifest.step, manifest.key))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        kind = TasksDone if "results" in peek(entry.value) else ManifestSplit
        return kind.from_json(entry.value)

    async def _record(self, manifest: TaskManifest, record: Message) -> bool:
        """Create the manifest's done record; False when one exists (the first writer won)."""
        from nats.js.errors import KeyWrongLastSequenceError

        try:
            await self.done_kv.create(
                done_key(manifest.job, manifest.step, manifest.key), record.to_json()
            )
        except KeyWrongLastSequenceError:
            return False
        return True

    def _span(self, name: str, job: str, **attributes: Any) -> Any:
        """A child span of the attempt at hand, in the job's trace."""
        extra = {f"gm.{k}": v for k, v in attributes.items()}
        return self.tracer.start_as_current_span(
            name, attributes={"gm.team": self.team, "gm.job": job, **extra}
        )

    async def _publish(self, items: list[tuple[str, Message, str]]) -> None:
        """Publish, with the trace context of the attempt at hand in each message's headers."""
        await self.publisher.publish_many(items, inject({}))

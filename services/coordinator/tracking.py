"""Job progress from events, and the slot policy: plain logic, no I/O.

Counting is by task id, so a repeated event (a redelivered manifest announcing itself again)
counts once, and events may arrive in any order (a worker's `TasksDone` can overtake the
planner's `JobStarted`). A job is finished when every task published to every step is done or
failed and every long id list (`IdsPart`) is complete. Two different parents making one task id
would merge two tasks into one: the job fails, saying which.

A continuous job (`services.coordinator.files`) ends only once stopped and drained; each of its
input files is followed on its own, and a finished file's tasks are folded into counts at once.

A finished job is compacted: its per-task sets become counts, and only the ids of its failed
tasks are kept (a dead letter can still be retried, or succeed late). After that, events about
tasks it already counted are re-announcements and change nothing, so an always-on coordinator
holds running jobs in full and finished ones in a few numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gristmill.bus import (
    FilesIngested,
    IdsPart,
    InputClosed,
    JobStarted,
    JobState,
    StepCounts,
    TaskFailed,
    TaskResult,
    TaskRetried,
    TasksDone,
)
from gristmill.telemetry import format_trace_id, trace_id_of
from services.coordinator.files import FileLedger, OpenFile
from services.coordinator.scaling.policy import ewma

__all__ = [
    "JobTracker",
    "StepTally",
    "WorkerInfo",
    "assign_slots",
    "collision_error",
    "even_split",
]

_UNKNOWN = "\0?"  # the parent of a task seen done before anyone said who made it


def collision_error(task_id: str, step: int, stage: str, first: str, second: str) -> str:
    """What a job that made one task id from two parents fails with (the SDK's executors say
    the same)."""
    return (
        f"task id {task_id!r} of step {step} '{stage}' was made from two parents, {first!r} and "
        f"{second!r}; give each output its own id, or leave task_id empty to have one derived"
    )


@dataclass
class StepTally:
    """What is known about one step of a job: per task while it runs, counts once compacted."""

    published: dict[str, str] = field(default_factory=dict)  # task id -> parent ("" first tasks)
    done: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # in, out, dropped
    failed: set[str] = field(default_factory=set)
    dropped_by: dict[str, int] = field(default_factory=dict)  # stage -> documents (all tasks)
    base: list[int] = field(default_factory=lambda: [0, 0, 0, 0, 0, 0])  # compacted counts
    rate: float | None = None  # tasks per second per slot (`ewma` of each task's run time)

    @property
    def backlog(self) -> int:
        """Published tasks neither done nor failed."""
        return len(self.published) - len(self.done) - len(self.failed)

    def counts(self, name: str) -> StepCounts:
        """This step's counts, compacted ones included."""
        published, done, failed, items_in, items_out, dropped = self.base
        return StepCounts(
            name=name,
            published=published + len(self.published),
            done=done + len(self.done),
            failed=failed + len(self.failed),
            items_in=items_in + sum(c[0] for c in self.done.values()),
            items_out=items_out + sum(c[1] for c in self.done.values()),
            items_dropped=dropped + sum(c[2] for c in self.done.values()),
            dropped_by=dict(sorted(self.dropped_by.items())),
        )

    def compact(self) -> None:
        """Fold the finished tasks into counts (failed ids stay: they may run again)."""
        counts = self.counts("")
        self.base = [
            counts.published - len(self.failed),
            counts.done,
            0,
            counts.items_in,
            counts.items_out,
            counts.items_dropped,
        ]
        self.published = {task: self.published[task] for task in self.failed}
        self.done = {}


class JobTracker:
    """Per-step counts of one job, built from its events."""

    def __init__(self, job: str):
        self.job = job
        self.started: JobStarted | None = None
        self.steps: dict[int, StepTally] = {}
        self.parts_expected: dict[tuple[int, str], int] = {}
        self.parts_seen: dict[tuple[int, str], set[int]] = {}
        self.error = ""  # why the job failed as a whole
        self.compacted = False
        self.retries = 0
        self.announced: str = ""  # the final state already published, if any
        self.finished_at: float | None = None
        self.waiting_for: str = ""  # set by assign_slots: a pool without a live worker
        self.ledger: FileLedger | None = None  # a continuous job's input files
        self.clock = time.time

    def _tally(self, step: int) -> StepTally:
        return self.steps.setdefault(step, StepTally())

    def _publish(self, step: int, ids: list[str], parent: str) -> None:
        tally = self._tally(step)
        for task_id in ids:
            first = tally.published.get(task_id, _UNKNOWN)
            if first == _UNKNOWN:  # new, or seen done before its parent said it made it
                tally.published[task_id] = parent
            elif first != parent and not self.error:
                stage = self._stage_name(step)
                self.error = collision_error(task_id, step, stage, first, parent)

    def _stage_name(self, step: int) -> str:
        steps = self.started.steps if self.started is not None else []
        if step < len(steps):
            return steps[step].name
        return f"outputs of {steps[-1].name}" if steps else "?"

    def _known(self, step: int, task_id: str) -> bool:
        """Whether a compacted job still tracks this task (it failed, or runs again)."""
        return not self.compacted or task_id in self._tally(step).published

    # -- events ------------------------------------------------------------------------------

    def on_started(self, started: JobStarted) -> None:
        """The planner's start event."""
        if self.started is not None:
            return
        self.started = started
        if started.continuous:
            self.ledger = FileLedger(len(started.steps) - 1)
        self._publish(started.first_step, started.initial, "")
        if started.initial_parts:
            self.parts_expected[started.first_step, ""] = started.initial_parts

    def on_files(self, ingested: FilesIngested) -> list[str]:
        """A continuous job took input files; returns the task ids of those new here."""
        if self.ledger is None:
            self.fail(f"files were announced for job {self.job}, which is not continuous")
            return []
        new = [f.task_id for f in ingested.files if self.ledger.add(f, ingested.step)]
        self._publish(ingested.step, new, "")
        return new

    def on_input_closed(self, closed: InputClosed) -> None:
        """A continuous job was stopped: it ends once its files are processed."""
        if self.ledger is not None:
            self.ledger.input_closed = True

    def _stale(self, root: str) -> bool:
        """Whether an event about a task of input file `root` is about a finished file."""
        return self.ledger is not None and bool(root) and not self.ledger.knows(root)

    def on_ids(self, part: IdsPart) -> None:
        """Part of a long id list: the tasks `part.owner` made (or the first tasks)."""
        if self.compacted and not self._known(part.step - 1, part.owner):
            return  # a repeat about a task already counted
        if self._stale(part.root):
            return
        self.parts_seen.setdefault((part.step, part.owner), set()).add(part.part)
        self._publish(part.step, part.ids, part.owner)
        if self.ledger is not None and part.root:
            self.ledger.published(part.root, part.step, part.ids)
            if part.step > self.ledger.last_step:
                self.ledger.outputs_listed(part.root, part.outputs)
            self._parts_check(part.root, part.step, part.owner)
            self._close(part.root)

    def _parts_check(self, root: str, step: int, owner: str) -> None:
        expected = self.parts_expected.get((step, owner))
        if expected is not None and len(self.parts_seen.get((step, owner), ())) >= expected:
            assert self.ledger is not None
            self.ledger.parts_done(root, f"{step}/{owner}")

    def on_done(self, done: TasksDone) -> bool:
        """A manifest's tasks finished; False if every one was counted already."""
        counted = [self.on_result(done.step, result, done.at) for result in done.results]
        return any(counted)

    def on_result(self, step: int, result: TaskResult, at: float = 0.0) -> bool:
        """One finished task (its done record made at `at`); False if it was counted already."""
        tally = self._tally(step)
        if result.task_id in tally.done or not self._known(step, result.task_id):
            return False
        if self._stale(result.root):
            return False
        tally.failed.discard(result.task_id)  # a dead letter retried with success
        tally.published.setdefault(result.task_id, _UNKNOWN)
        tally.done[result.task_id] = (result.items_in, result.items_out, result.items_dropped)
        tally.rate = ewma(tally.rate, 1.0 / max(result.wall_time_s, 1e-4))
        for stage, count in result.dropped_by.items():
            tally.dropped_by[stage] = tally.dropped_by.get(stage, 0) + count
        self._publish(step + 1, result.output_ids, result.task_id)
        if result.parts:
            self.parts_expected[step + 1, result.task_id] = result.parts
        if self.ledger is not None and result.root:
            self.ledger.published(result.root, step + 1, result.output_ids)
            self.ledger.finished_task(result.root, step, result.task_id, result, at)
            if result.parts:
                self._parts_check(result.root, step + 1, result.task_id)
            self._close(result.root)
        return True

    def _close(self, root: str) -> None:
        """Fold a finished input file's tasks into counts (it waits in `ledger.closing`)."""
        assert self.ledger is not None
        file = self.ledger.close_if_finished(root, self.clock())
        if file is not None:
            self._fold(file)

    def _fold(self, file: OpenFile) -> None:
        for task_id, step in file.tasks.items():
            tally = self.steps.get(step)
            if tally is None:
                continue
            counts = tally.done.pop(task_id, None)
            if tally.published.pop(task_id, None) is not None or counts is not None:
                tally.base[0] += 1
            if counts is not None:
                tally.base[1] += 1
                for at, value in enumerate(counts):
                    tally.base[3 + at] += value
            self.parts_expected.pop((step + 1, task_id), None)
            self.parts_seen.pop((step + 1, task_id), None)

    def on_failed(self, failed: TaskFailed) -> bool:
        """A dead-lettered task; False if it was known (or has since succeeded)."""
        tally = self._tally(failed.step)
        known = failed.task_id in tally.done or failed.task_id in tally.failed
        if known or not self._known(failed.step, failed.task_id) or self._stale(failed.root):
            return False
        tally.published.setdefault(failed.task_id, _UNKNOWN)
        tally.failed.add(failed.task_id)
        if self.ledger is not None and failed.root:
            self.ledger.failed_task(failed.root, failed.task_id)
        return True

    def on_retried(self, retried: TaskRetried) -> bool:
        """A dead letter published again: the task is pending once more."""
        tally = self._tally(retried.step)
        if retried.task_id not in tally.failed:
            return False
        tally.failed.discard(retried.task_id)
        self.retries += 1
        if self.ledger is not None and retried.root:
            self.ledger.retried(retried.root, retried.task_id)
        return True

    def fail(self, error: str) -> None:
        """The job cannot give a correct result (an event no one can read, say)."""
        self.error = self.error or error

    @property
    def compactable(self) -> bool:
        """Finished, with per-task state still to fold into counts."""
        return self.finished and any(
            t.done or len(t.published) > len(t.failed) for t in self.steps.values()
        )

    def compact(self) -> None:
        """Fold a finished job's tasks into counts (see the module docstring)."""
        if not self.finished:
            return
        for tally in self.steps.values():
            tally.compact()
        self.parts_expected.clear()
        self.parts_seen.clear()
        self.compacted = True

    # -- state -------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Started, and nothing published is left to run (or the job failed as a whole)."""
        if self.started is None:
            return False
        if self.error:
            return True
        if self.ledger is not None and not (self.ledger.input_closed and self.ledger.drained):
            return False
        last = len(self.started.steps)
        if any(t.backlog for s, t in self.steps.items() if s < last):
            return False
        return all(
            len(self.parts_seen.get(key, ())) >= parts for key, parts in self.parts_expected.items()
        )

    def seconds_per_task(self, step: int) -> float | None:
        """A task's measured run time on `step` (per slot, smoothed); None before one ran."""
        tally = self.steps.get(step)
        return None if tally is None or tally.rate is None else 1.0 / tally.rate

    def fan_out(self, step: int) -> float:
        """Tasks `step` got per task of the step before it finished (1.0 until one did)."""
        if self.started is None or step <= self.started.first_step:
            return 1.0
        before = self.steps.get(step - 1)
        here = self.steps.get(step)
        finished = before.counts("").done if before else 0
        if not finished or here is None:
            return 1.0
        return here.counts("").published / finished

    def step_backlog(self, step: int) -> int:
        """Tasks of `step` waiting or running."""
        tally = self.steps.get(step)
        return tally.backlog if tally else 0

    def state(self) -> JobState:
        """The job's `JobState` now."""
        started = self.started
        names = [s.name for s in started.steps] if started else []
        counts = [self.steps.get(i, StepTally()).counts(name) for i, name in enumerate(names)]
        failed = sum(c.failed for c in counts)
        if started is None:
            state = "pending"
        elif not self.finished:
            state = "running"
            self.finished_at = None  # a retried dead letter runs it again
        else:
            state = "failed" if self.error else "completed_with_failures" if failed else "completed"
            self.finished_at = self.finished_at or self.clock()
        dropped = sum(c.items_dropped for c in counts)
        out = counts[-1].items_out if counts else 0
        return JobState(
            job=self.job,
            state=state,
            pipeline=started.pipeline if started else "",
            tasks_published=sum(c.published for c in counts),
            tasks_done=sum(c.done for c in counts),
            tasks_failed=failed,
            items_in=out + dropped,
            items_out=out,
            items_dropped=dropped,
            steps=counts,
            retries=self.retries,
            submitted_at=started.submitted_at if started else 0.0,
            finished_at=self.finished_at if state not in ("pending", "running") else None,
            error=self.error or (self.waiting_for if state == "running" else ""),
            trace_id=format_trace_id(trace_id_of(self.job)),
            files=self.ledger.counts(self.clock()) if self.ledger is not None else None,
        )


@dataclass(frozen=True)
class WorkerInfo:
    """A live worker as its heartbeat describes it."""

    pool: str
    slots: int


def assign_slots(
    workers: dict[str, WorkerInfo], jobs: dict[str, JobTracker], split: str = "shared"
) -> dict[str, list[dict[str, Any]]]:
    """Which steps each worker pulls, with how many of its slots.

    Every step of an unfinished job from the first step that still has work onwards is active
    (so downstream steps are pulled the moment their first task appears); each worker of a
    step's pool gets every active step, each with all of its slots: who runs in them is the
    worker's fair share (`services.worker.fairshare`: teams by weight, a team's jobs by
    priority and usage), which a split made here would only undercut. Giving every worker every
    step keeps a job moving when a worker dies. A job with an active step no live worker can
    take says so in its state (`waiting_for`) until one joins.

    `split="even"` is the static baseline the autoscaling bench compares with: each step of a
    running job, done or not, gets an equal part of its pool's slots for the job's whole life,
    as dedicated slots on as few workers as they fill (one deployment per stage)."""
    active: list[tuple[str, int, str]] = []  # job, step, pool
    for job, tracker in sorted(jobs.items()):
        started = tracker.started
        if started is None or tracker.finished:
            continue
        upstream_busy = False
        for step in range(started.first_step, len(started.steps)):
            upstream_busy = upstream_busy or tracker.step_backlog(step) > 0
            if upstream_busy:
                active.append((job, step, started.steps[step].pool))
    pools = {info.pool for info in workers.values()}
    for job, tracker in jobs.items():
        missing = sorted({pool for j, _, pool in active if j == job and pool not in pools})
        tracker.waiting_for = ", ".join(f"no live {pool} worker" for pool in missing)
    if split == "even":  # fixed for the job's life: every step of it, done or not
        every: list[tuple[str, int, str]] = [
            (job, step, tracker.started.steps[step].pool)
            for job, tracker in sorted(jobs.items())
            if tracker.started is not None and not tracker.finished
            for step in range(tracker.started.first_step, len(tracker.started.steps))
        ]
        return even_split(workers, every)
    return {
        worker: [
            {"job": job, "step": step, "slots": info.slots}
            for job, step, pool in active
            if pool == info.pool
        ]
        for worker, info in sorted(workers.items())
    }


def even_split(
    workers: dict[str, WorkerInfo], active: list[tuple[str, int, str]]
) -> dict[str, list[dict[str, Any]]]:
    """Each (job, step, pool) an equal part of its pool's slots (largest remainder, the earlier
    steps first), laid out on the workers slot by slot in name order."""
    plan: dict[str, list[dict[str, Any]]] = {worker: [] for worker in sorted(workers)}
    for pool in sorted({info.pool for info in workers.values()}):
        units = [
            w for w, info in sorted(workers.items()) if info.pool == pool for _ in range(info.slots)
        ]
        steps = [(job, step) for job, step, p in active if p == pool]
        if not steps:
            continue
        base, extra = divmod(len(units), len(steps))
        at = 0
        for index, (job, step) in enumerate(steps):
            count = base + (1 if index < extra else 0)
            mine: dict[str, int] = {}
            for worker in units[at : at + count]:
                mine[worker] = mine.get(worker, 0) + 1
            at += count
            for worker, slots in mine.items():
                plan[worker].append({"job": job, "step": step, "slots": slots})
    return plan

"""Job progress from events, and the slot policy: plain logic, no I/O.

Counting is by task id, so a repeated event (a redelivered task announcing itself again) counts
once, and events may arrive in any order (a worker's `TaskDone` can overtake the planner's
`JobStarted`). A job is finished when every task published to every step is done or failed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gristmill.bus import JobStarted, JobState, StepCounts, TaskDone, TaskFailed

__all__ = ["JobTracker", "StepTally", "WorkerInfo", "assign_slots"]


@dataclass
class StepTally:
    """What is known about one step of a job."""

    published: set[str] = field(default_factory=set)
    done: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # in, out, dropped
    failed: dict[str, TaskFailed] = field(default_factory=dict)

    @property
    def backlog(self) -> int:
        """Published tasks neither done nor failed."""
        return len(self.published) - len(self.done) - len(self.failed)


class JobTracker:
    """Per-step counts of one job, built from its events."""

    def __init__(self, job: str):
        self.job = job
        self.started: JobStarted | None = None
        self.steps: dict[int, StepTally] = {}
        self.announced: str = ""  # the final state already published, if any
        self.finished_at: float | None = None
        self.waiting_for: str = ""  # set by assign_slots: a pool without a live worker

    def _tally(self, step: int) -> StepTally:
        return self.steps.setdefault(step, StepTally())

    def on_started(self, started: JobStarted) -> None:
        """The planner's start event."""
        self.started = started
        self._tally(started.first_step).published.update(started.initial)

    def on_done(self, done: TaskDone) -> bool:
        """A finished task; False if it was counted already."""
        tally = self._tally(done.step)
        if done.task_id in tally.done:
            return False
        tally.failed.pop(done.task_id, None)  # a dead letter retried with success
        tally.published.add(done.task_id)
        tally.done[done.task_id] = (done.items_in, done.items_out, done.items_dropped)
        self._tally(done.step + 1).published.update(done.output_ids)
        return True

    def on_failed(self, failed: TaskFailed) -> bool:
        """A dead-lettered task; False if it was known (or has since succeeded)."""
        tally = self._tally(failed.step)
        if failed.task_id in tally.done or failed.task_id in tally.failed:
            return False
        tally.published.add(failed.task_id)
        tally.failed[failed.task_id] = failed
        return True

    @property
    def finished(self) -> bool:
        """Started, and nothing published is left to run."""
        if self.started is None:
            return False
        last = len(self.started.steps)
        return all(t.backlog == 0 for s, t in self.steps.items() if s < last)

    def step_backlog(self, step: int) -> int:
        """Tasks of `step` waiting or running."""
        tally = self.steps.get(step)
        return tally.backlog if tally else 0

    def state(self) -> JobState:
        """The job's `JobState` now."""
        started = self.started
        names = [s.name for s in started.steps] if started else []
        counts = []
        for index, name in enumerate(names):
            tally = self.steps.get(index, StepTally())
            counts.append(
                StepCounts(
                    name=name,
                    published=len(tally.published),
                    done=len(tally.done),
                    failed=len(tally.failed),
                    items_in=sum(c[0] for c in tally.done.values()),
                    items_out=sum(c[1] for c in tally.done.values()),
                    items_dropped=sum(c[2] for c in tally.done.values()),
                )
            )
        failed = sum(c.failed for c in counts)
        if started is None:
            state = "pending"
        elif not self.finished:
            state = "running"
            self.finished_at = None  # a retried dead letter runs it again
        else:
            state = "completed_with_failures" if failed else "completed"
            self.finished_at = self.finished_at or time.time()
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
            submitted_at=started.submitted_at if started else 0.0,
            finished_at=self.finished_at if state not in ("pending", "running") else None,
            error=self.waiting_for if state == "running" else "",
        )


@dataclass(frozen=True)
class WorkerInfo:
    """A live worker as its heartbeat describes it."""

    pool: str
    slots: int


def assign_slots(
    workers: dict[str, WorkerInfo], jobs: dict[str, JobTracker]
) -> dict[str, list[dict[str, Any]]]:
    """Which steps each worker pulls, with how many of its slots.

    Every step of an unfinished job from the first step that still has work onwards is active
    (so downstream steps are pulled the moment their first task appears); each worker of a
    step's pool gets every active step, its slots shared in proportion to backlog + 1, at least
    one each. Giving every worker every step keeps a job moving when a worker dies. A job with
    an active step no live worker can take says so in its state (`waiting_for`) until one
    joins."""
    active: list[tuple[str, int, str, int]] = []  # job, step, pool, weight
    for job, tracker in sorted(jobs.items()):
        started = tracker.started
        if started is None or tracker.finished:
            continue
        upstream_busy = False
        for step in range(started.first_step, len(started.steps)):
            backlog = tracker.step_backlog(step)
            upstream_busy = upstream_busy or backlog > 0
            if upstream_busy:
                active.append((job, step, started.steps[step].pool, backlog + 1))
    pools = {info.pool for info in workers.values()}
    for job, tracker in jobs.items():
        missing = sorted({pool for j, _, pool, _ in active if j == job and pool not in pools})
        tracker.waiting_for = ", ".join(f"no live {pool} worker" for pool in missing)
    plan: dict[str, list[dict[str, Any]]] = {}
    for worker, info in sorted(workers.items()):
        mine = [a for a in active if a[2] == info.pool]
        total = sum(a[3] for a in mine)
        plan[worker] = [
            {"job": job, "step": step, "slots": max(1, round(info.slots * weight / total))}
            for job, step, _, weight in mine
        ]
    return plan

"""What the coordinator answers about jobs, beyond their counts: progress over time, backlog,
failures, traces, why a document was dropped, and the numbers `/metrics` exports.

`JobViews` reads the coordinator's trackers and the team's streams and store; it changes
nothing. The HTTP API (`services.coordinator.http`) and the NATS verbs (`api.why`) both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gristmill.bus import DeadLetter, JobState, MessageError, WorkerState
from gristmill.bus.client import replay
from gristmill.bus.jobs import consumer_name
from gristmill.bus.streams import TeamLayout
from gristmill.bus.subjects import check_token, dlq_filter
from gristmill.store import TaskStore
from gristmill.telemetry import format_trace_id, trace_id_of
from gristmill.telemetry.spanstore import read_spans
from gristmill.telemetry.view import job_trace
from services.coordinator.tracking import JobTracker

__all__ = ["HISTORY_SAMPLES", "Backlog", "JobViews", "find_fate"]

# Samples of a job's progress kept for its throughput chart (one a second: ten minutes).
HISTORY_SAMPLES = 600
SAMPLE_EVERY_S = 1.0


@dataclass(frozen=True)
class Backlog:
    """A step's consumer: messages not yet delivered, and delivered but not acknowledged."""

    step: int
    name: str
    pending: int
    ack_pending: int


def find_fate(store: TaskStore, team: str, job: str, doc_id: str) -> dict[str, Any] | None:
    """What became of document `doc_id` in `job`: its drop record (stage, reason, score,
    threshold, the id it duplicates), or the file a writer put it in; None when the job's
    records do not name it."""
    kept: dict[str, Any] | None = None
    for record in store.fates(team, job):
        if record.get("fate") == "dropped" and record.get("id") == doc_id:
            return record
        if kept is None and record.get("fate") == "kept" and doc_id in record.get("ids", ()):
            kept = {k: v for k, v in record.items() if k != "ids"}
            kept["id"] = doc_id
    return kept


class JobViews:
    """Read-only views of one coordinator's jobs (`jobs(team)` gives a team's trackers)."""

    def __init__(
        self,
        js: Callable[[], Any],
        store: TaskStore,
        jobs: Callable[[str], dict[str, JobTracker]],
        workers: Callable[[str], dict[str, WorkerState]],
        scaling: Callable[[], dict[str, Any]] | None = None,
    ):
        self._js = js
        self.store = store
        self._jobs = jobs
        self._workers = workers
        self._scaling = scaling or dict
        self.history: dict[tuple[str, str], deque[dict[str, Any]]] = {}

    # -- progress ----------------------------------------------------------------------------

    def sample(self, team: str) -> None:
        """Note the progress of the team's running jobs (and a last sample of ended ones)."""
        now = time.time()
        for job, tracker in self._jobs(team).items():
            series = self.history.get((team, job))
            if tracker.finished and series is not None and series[-1].get("final"):
                continue
            state = tracker.state()
            if series is None:
                if state.finished:
                    continue  # replayed: nothing ran while this coordinator watched
                series = self.history[team, job] = deque(maxlen=HISTORY_SAMPLES)
            series.append(
                {
                    "t": now,
                    "tasks_done": state.tasks_done,
                    "items_in": state.items_in,
                    "items_out": state.items_out,
                    "steps": [s.items_in for s in state.steps],
                    "final": state.finished,
                }
            )

    def forget(self, team: str, job: str) -> None:
        """Drop what is kept of an archived job."""
        self.history.pop((team, job), None)

    def throughput(self, team: str, job: str, window_s: float = 10.0) -> list[float]:
        """Documents per second into each step over the last `window_s` seconds."""
        series = self.history.get((team, job))
        if not series or len(series) < 2:
            return []
        last = series[-1]
        first = next((s for s in series if last["t"] - s["t"] <= window_s), series[0])
        span = last["t"] - first["t"]
        if span <= 0:
            return []
        return [(b - a) / span for a, b in zip(first["steps"], last["steps"], strict=False)]

    def states(self, team: str) -> list[JobState]:
        """The team's jobs, oldest submission first."""
        return sorted((t.state() for t in self._jobs(team).values()), key=lambda s: s.submitted_at)

    def state(self, team: str, job: str) -> JobState | None:
        """One job's state, if this coordinator knows the job."""
        tracker = self._jobs(team).get(job)
        return tracker.state() if tracker is not None else None

    async def detail(self, team: str, job: str) -> dict[str, Any] | None:
        """A job's state with its history, backlog and failures (the dashboard's view)."""
        state = self.state(team, job)
        if state is None:
            return None
        backlog, failures = await asyncio.gather(self.backlog(team, job), self.failures(team, job))
        series = self.history.get((team, job), ())
        return {
            **state.model_dump(mode="json", by_alias=True),
            "history": [
                {k: s[k] for k in ("t", "tasks_done", "items_in", "items_out")} for s in series
            ],
            "backlog": [b.__dict__ for b in backlog],
            "failures": failures,
        }

    async def backlog(self, team: str, job: str) -> list[Backlog]:
        """Each live step consumer's backlog (none once the job ended)."""
        from nats.js.errors import NotFoundError

        tracker = self._jobs(team).get(job)
        started = tracker.started if tracker is not None else None
        if started is None or tracker is None or tracker.finished:
            return []
        stream = TeamLayout(team).tasks_stream

        async def one(step: int) -> Backlog | None:
            with contextlib.suppress(NotFoundError, TimeoutError):
                info = await self._js().consumer_info(stream, consumer_name(job, step))
                name = started.steps[step].name
                return Backlog(step, name, info.num_pending, info.num_ack_pending)
            return None

        found = await asyncio.gather(
            *(one(s) for s in range(started.first_step, len(started.steps)))
        )
        return [b for b in found if b is not None]

    async def failures(self, team: str, job: str) -> list[dict[str, Any]]:
        """The job's dead letters: task, step, error, traceback, attempts, worker."""
        check_token("job", job)
        names = self._step_names(team, job)
        failures: dict[tuple[int, str], dict[str, Any]] = {}
        async for msg in replay(self._js(), dlq_filter(team, job)):
            try:
                failure = DeadLetter.from_json(msg.data).failure
            except MessageError:
                continue
            failures[failure.step, failure.task_id] = {
                "task_id": failure.task_id,
                "step": failure.step,
                "step_name": names[failure.step] if failure.step < len(names) else "",
                "error": failure.error,
                "traceback": failure.traceback,
                "attempts": failure.attempts,
                "worker": failure.worker,
            }
        return list(failures.values())

    def _step_names(self, team: str, job: str) -> list[str]:
        tracker = self._jobs(team).get(job)
        started = tracker.started if tracker is not None else None
        return [s.name for s in started.steps] if started is not None else []

    # -- traces and fates --------------------------------------------------------------------

    async def trace(self, team: str, job: str, task: str | None = None) -> dict[str, Any]:
        """The job's trace as `gristmill trace --json` prints it (only `task`'s spans when
        given)."""
        check_token("job", job)
        return job_trace(job, await read_spans(self._js(), team, job), task)

    async def why(self, team: str, job: str, doc_id: str) -> dict[str, Any] | None:
        """What became of a document in a job (see `find_fate`), with the job's trace id."""
        check_token("job", job)
        fate = await asyncio.to_thread(find_fate, self.store, team, job, doc_id)
        if fate is None:
            return None
        return {**fate, "job": job, "trace_id": format_trace_id(trace_id_of(job))}

    def workers(self, team: str) -> list[WorkerState]:
        """The team's live workers."""
        return sorted(self._workers(team).values(), key=lambda w: w.worker)

    def scaling(self) -> dict[str, Any]:
        """The pools' autoscaling bounds and the last scaling decisions, newest first."""
        return self._scaling()

    def desired_workers(self) -> dict[str, int]:
        """Workers wanted per pool by the last decision (empty before the first)."""
        decisions = self._scaling().get("decisions") or []
        return dict(decisions[0]["workers"]) if decisions else {}

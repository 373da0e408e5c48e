"""The coordinator's NATS verbs (`gm.<team>.api.status|why|retry|gc|workers`): each a thin
handler that parses the request, asks the coordinator, and answers an `ApiReply`.

A base of `CoordinatorService`, kept apart so that the service's module holds its loops only;
the attributes below are the service's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from faststream.nats import NatsMessage

from gristmill.bus import (
    ApiReply,
    GcQuery,
    InputWatch,
    JobState,
    MessageError,
    RetryQuery,
    StatusQuery,
    WhyQuery,
    WorkerState,
)
from gristmill.bus.client import Publisher
from gristmill.bus.jobs import archived_key, watch_key
from gristmill.config import ServiceSettings
from gristmill.errors import GristmillError
from services.coordinator.api import JobViews
from services.coordinator.retry import retry_task
from services.coordinator.scaling.cycle import ScalingCycle
from services.coordinator.tracking import JobTracker

__all__ = ["STATUS_WAIT_S", "ApiVerbs"]

log = logging.getLogger("gristmill.coordinator")

STATUS_WAIT_S = 20.0


class ApiVerbs:
    """The request handlers of the coordinator (see the module docstring)."""

    settings: ServiceSettings
    jobs: dict[str, dict[str, JobTracker]]
    views: JobViews
    scaling: ScalingCycle
    _caught_up: dict[str, asyncio.Event]
    _kv: dict[tuple[str, str], Any]
    _archived: dict[str, int]
    _publisher: Publisher | None

    @property
    def _js(self) -> Any:
        raise NotImplementedError

    def live_workers(self, team: str) -> dict[str, WorkerState]:
        raise NotImplementedError

    def all_workers(self) -> dict[str, WorkerState]:
        raise NotImplementedError

    async def collect(self, team: str, older_than_s: float) -> list[str]:
        raise NotImplementedError

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
                if asked in jobs:
                    states = [jobs[asked].state()]
                else:
                    summary = await self._summary(team, asked)
                    if summary is None:
                        return ApiReply(
                            ok=False, error=f"no job {asked!r} in team {team}"
                        ).to_json()
                    states = [summary]
            else:
                states = sorted((t.state() for t in jobs.values()), key=lambda s: s.submitted_at)
            states = [await self._with_watch(team, state) for state in states]
            workers = sorted(self.live_workers(team).values(), key=lambda w: w.worker)
            data = {
                "jobs": [s.model_dump(mode="json", by_alias=True) for s in states],
                "workers": [w.model_dump(mode="json", by_alias=True) for w in workers],
                "archived": self._archived[team],
            }
            return ApiReply(ok=True, job=asked, data=data).to_json()

        return status

    async def _with_watch(self, team: str, state: JobState) -> JobState:
        """A continuous job's state with the planner's last look at its input."""
        from nats.js.errors import KeyNotFoundError

        if state.files is None or state.finished:
            return state
        try:
            watch = InputWatch.from_json(
                (await self._kv[team, "ingest"].get(watch_key(state.job))).value
            )
        except (KeyNotFoundError, MessageError):
            return state
        files = state.files.model_copy(update={"waiting": watch.waiting, "changed": watch.changed})
        return state.model_copy(update={"files": files})

    async def _summary(self, team: str, job: str) -> JobState | None:
        from nats.js.errors import KeyNotFoundError

        with contextlib.suppress(KeyNotFoundError, MessageError, ValueError):
            entry = await self._kv[team, "jobs"].get(archived_key(job))
            return JobState.from_json(entry.value)
        return None

    async def _workers_handler(self, msg: NatsMessage) -> bytes:
        return ApiReply(ok=True, data=self.workers_view()).to_json()

    def workers_view(self) -> dict[str, Any]:
        """Each live worker (pool, slots, steps, state) and the last scaling decisions."""
        workers = sorted(self.all_workers().values(), key=lambda w: w.worker)
        starting = [
            {
                "worker": name,
                "pool": pool,
                "slots": 0,
                "running": 0,
                "status": "starting",
                "steps": [],
            }
            for name, pool in sorted(self.scaling.starting.items())
        ]
        return {
            "workers": [w.model_dump(mode="json", by_alias=True) for w in workers] + starting,
            **self.scaling.view(),
        }

    def _why_handler(self, team: str) -> Any:
        async def why(msg: NatsMessage) -> bytes:
            try:
                query = WhyQuery.from_json(msg.body or b"{}")
                fate = await self.views.why(team, query.job, query.doc)
            except GristmillError as exc:
                return ApiReply(ok=False, error=str(exc)).to_json()
            if fate is None:
                error = f"job {query.job!r} has no record of document {query.doc!r}"
                if query.job not in self.jobs[team]:
                    error = f"no job {query.job!r} in team {team}"
                return ApiReply(ok=False, job=query.job, error=error).to_json()
            return ApiReply(ok=True, job=query.job, data=fate).to_json()

        return why

    def _retry_handler(self, team: str) -> Any:
        async def retry(msg: NatsMessage) -> bytes:
            try:
                query = RetryQuery.from_json(msg.body or b"{}")
                await self.retry(team, query)
            except (GristmillError, MessageError) as exc:
                log.info("team %s: refused to retry: %s", team, exc)
                return ApiReply(ok=False, error=str(exc)).to_json()
            return ApiReply(ok=True, job=query.job).to_json()

        return retry

    async def retry(self, team: str, query: RetryQuery) -> None:
        """Run a dead-lettered task of `team` again (`services.coordinator.retry`)."""
        assert self._publisher is not None
        jobs = self._kv[team, "jobs"]
        task = await retry_task(self._js, self._publisher, jobs, team, query)
        log.info("team %s: task %s of job %s retried", team, task, query.job)

    def _gc_handler(self, team: str) -> Any:
        async def gc(msg: NatsMessage) -> bytes:
            try:
                query = GcQuery.from_json(msg.body or b"{}")
            except MessageError as exc:
                return ApiReply(ok=False, error=str(exc)).to_json()
            older = self.settings.retention_s if query.older_than_s is None else query.older_than_s
            try:
                await asyncio.wait_for(self._caught_up[team].wait(), STATUS_WAIT_S)
            except TimeoutError:
                return ApiReply(ok=False, error="the coordinator is still catching up").to_json()
            archived = await self.collect(team, older)
            return ApiReply(ok=True, data={"archived": archived}).to_json()

        return gc

"""Talking to a running service: submit, follow, read back outputs, dead letters.

`ServiceClient` is what the CLI and `ServiceExecutor` use; every call goes over NATS (requests to
the planner and the coordinator, JetStream reads of the events and dead-letter streams) and the
store, never to a service's process directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any

from gristmill.bus import (
    ApiReply,
    DeadLetter,
    JobSpec,
    JobStarted,
    JobState,
    StatusQuery,
    TaskDone,
)
from gristmill.bus.client import publish, replay, request
from gristmill.bus.jobs import JobRecord, consumer_name, job_key, msg_id
from gristmill.bus.streams import TeamLayout
from gristmill.bus.subjects import dlq_filter, event_subject, task_subject
from gristmill.errors import GristmillError
from gristmill.store import TaskStore
from gristmill.tasks import Task

__all__ = ["JobRejected", "ServiceClient", "new_request_id"]


class JobRejected(GristmillError):
    """The planner refused a submission; the message is its reason."""


def new_request_id() -> str:
    """A fresh submission id (retrying with the same one never makes a second job)."""
    return uuid.uuid4().hex


class ServiceClient:
    """An open connection to a service for one team."""

    def __init__(self, nc: Any, team: str = "default"):
        self.nc = nc
        self.js = nc.jetstream()
        self.team = team
        self._store: TaskStore | None = None

    @classmethod
    async def connect(cls, url: str, team: str = "default") -> ServiceClient:
        """Connect to the NATS server at `url`."""
        import nats

        try:
            nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=2)
        except Exception as exc:
            raise GristmillError(
                f"cannot reach the gristmill service's NATS server at {url}: {exc}"
            ) from exc
        return cls(nc, team)

    async def close(self) -> None:
        """Close the connection."""
        await self.nc.drain()

    async def info(self) -> dict[str, Any]:
        """The service's settings clients need (store root, whether it runs submitted code)."""
        return _ok(await request(self.nc, self.team, "info")).data

    async def store(self) -> TaskStore:
        """The service's store."""
        if self._store is None:
            self._store = TaskStore((await self.info())["store"])
        return self._store

    async def submit(self, spec: JobSpec, retries: int = 3) -> str:
        """Submit; returns the job id. A lost reply is retried with the same request id."""
        for attempt in range(retries):
            try:
                reply = await request(self.nc, self.team, "submit", spec, timeout_s=60.0)
                break
            except GristmillError:
                if attempt == retries - 1:
                    raise
        if not reply.ok:
            raise JobRejected(reply.error)
        assert reply.job is not None
        return reply.job

    async def status(self, job: str | None = None) -> list[JobState]:
        """The state of one job, or of every job the coordinator knows."""
        reply = _ok(await request(self.nc, self.team, "status", StatusQuery(job=job)))
        return [JobState.model_validate(raw) for raw in reply.data["jobs"]]

    async def wait(
        self,
        job: str,
        timeout_s: float | None = None,
        on_progress: Callable[[JobState], None] | None = None,
        poll_s: float = 0.2,
    ) -> JobState:
        """Wait for the job's final state (from the events stream: nothing is missed);
        `on_progress` sees the coordinator's counts meanwhile."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        final: asyncio.Future[JobState] = asyncio.get_running_loop().create_future()

        async def follow() -> None:
            subject = event_subject(self.team, job, "job_state")
            while True:  # a long job outlives one replay's idle limit: follow again
                async for msg in replay(self.js, subject, idle_s=60.0):
                    state = JobState.from_json(msg.data)
                    if state.finished:
                        final.set_result(state)
                        return

        follower = asyncio.create_task(follow())
        try:
            while not final.done():
                if deadline is not None and time.monotonic() > deadline:
                    raise GristmillError(f"job {job} did not finish within {timeout_s:g} s")
                if follower.done():
                    follower.result()  # it can only have stopped by failing: raise that
                if on_progress is not None:
                    with contextlib.suppress(GristmillError):  # a coordinator catching up
                        states = await self.status(job)
                        if states:
                            on_progress(states[0])
                await asyncio.wait([final], timeout=poll_s)
            return final.result()
        finally:
            follower.cancel()

    async def started(self, job: str) -> JobStarted:
        """The planner's start event of `job`."""
        async for msg in replay(self.js, event_subject(self.team, job, "job_started")):
            return JobStarted.from_json(msg.data)
        raise GristmillError(f"job {job} has no start event")

    async def done_events(self, job: str) -> list[TaskDone]:
        """Every `TaskDone` of the job, one per task (a re-announcement is left out)."""
        seen: dict[tuple[int, str], TaskDone] = {}
        async for msg in replay(self.js, event_subject(self.team, job, "task_done")):
            done = TaskDone.from_json(msg.data)
            seen.setdefault((done.step, done.task_id), done)
        return list(seen.values())

    async def outputs(self, job: str) -> list[Task[Any]]:
        """The last step's output tasks, in the order `LocalExecutor` returns them (depth
        first from the first tasks, each task's outputs in the order its stage made them)."""
        started = await self.started(job)
        by_task = {(d.step, d.task_id): d for d in await self.done_events(job)}
        last = len(started.steps) - 1
        ordered: list[Any] = []
        stack = [(started.first_step, task_id) for task_id in reversed(started.initial)]
        while stack:
            step, task_id = stack.pop()
            done = by_task.get((step, task_id))
            if done is None:
                continue  # failed, so it has no outputs
            if step == last:
                ordered.extend(done.outputs)
            else:
                stack.extend((step + 1, child) for child in reversed(done.output_ids))
        store = await self.store()
        return [store.get(ref) for ref in ordered]

    async def dead_letters(self, job: str | None = None) -> list[DeadLetter]:
        """Dead letters of one job, or of all the team's jobs, oldest first."""
        subject = dlq_filter(self.team, job)
        return [DeadLetter.from_json(m.data) async for m in replay(self.js, subject)]

    async def retry(self, letter: DeadLetter) -> None:
        """Run a dead-lettered task again (its step's consumer is recreated if it expired)."""
        from nats.js import api

        manifest = letter.manifest
        layout = TeamLayout(self.team)
        jobs = await self.js.key_value(layout.bucket("jobs"))
        record = JobRecord.from_json((await jobs.get(job_key(manifest.job))).value)
        await self.js.add_consumer(
            layout.tasks_stream,
            api.ConsumerConfig(
                durable_name=consumer_name(manifest.job, manifest.step),
                filter_subject=task_subject(self.team, manifest.job, str(manifest.step)),
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=record.spec.options.ack_wait_s,
                max_deliver=-1,
                max_ack_pending=-1,
            ),
        )
        await publish(
            self.js,
            task_subject(self.team, manifest.job, str(manifest.step)),
            manifest,
            msg_id("retry", manifest.job, manifest.step, manifest.task_id, letter.failure.attempts),
        )


def _ok(reply: ApiReply) -> ApiReply:
    if not reply.ok:
        raise GristmillError(reply.error)
    return reply

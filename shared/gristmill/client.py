"""Talking to a running service: submit, follow, read back outputs, dead letters, collect.

`ServiceClient` is what the CLI and `ServiceExecutor` use; every call goes over NATS (requests to
the planner and the coordinator, JetStream reads of the events and dead-letter streams) and the
store, never to a service's process directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gristmill.bus import (
    ApiReply,
    DataRef,
    DeadLetter,
    GcQuery,
    IdsPart,
    JobSpec,
    JobStarted,
    JobState,
    MessageError,
    RetryQuery,
    StatusQuery,
    TaskFailed,
    TaskResult,
    TasksDone,
    WorkerState,
)
from gristmill.bus.broker import nats_servers
from gristmill.bus.client import replay, request
from gristmill.bus.subjects import dlq_filter, event_subject
from gristmill.config import state_dir
from gristmill.credentials import CredentialError, Credentials, resolve_credentials
from gristmill.errors import GristmillError
from gristmill.store import TaskStore
from gristmill.tasks import Task

__all__ = ["JobRejected", "ServiceClient", "ServiceStatus", "new_request_id"]

log = logging.getLogger("gristmill.client")


class JobRejected(GristmillError):
    """The planner refused a submission; the message is its reason."""


def new_request_id() -> str:
    """A fresh submission id (retrying with the same one never makes a second job)."""
    return uuid.uuid4().hex


class ServiceStatus:
    """What `status` answers: job states, live workers, how many jobs were archived."""

    def __init__(self, jobs: list[JobState], workers: list[WorkerState], archived: int):
        self.jobs = jobs
        self.workers = workers
        self.archived = archived


class ServiceClient:
    """An open connection to a service for one team (the team its credentials are of)."""

    def __init__(self, nc: Any, team: str = "default"):
        self.nc = nc
        self.js = nc.jetstream()
        self.team = team
        self._store: TaskStore | None = None

    @classmethod
    async def connect(
        cls,
        url: str,
        team: str | None = None,
        credentials: str | Path | Credentials | None = None,
    ) -> ServiceClient:
        """Connect to the NATS server at `url` as the team of `credentials` (found as
        `gristmill.credentials.resolve_credentials` says when not given)."""
        import nats

        found = resolve_credentials(credentials, team, url, state_dir())
        if found.team is None:
            raise CredentialError(f"{found.where} are a service's; a client needs a team's")

        rejected: list[Exception] = []

        async def refused(exc: Exception) -> None:  # what the server refused, said once
            if "authorization violation" in str(exc).lower():
                rejected.append(exc)
                return
            log.warning("team %s: the NATS server refused an operation: %s", found.team, exc)

        try:
            nc = await nats.connect(
                nats_servers(url),
                connect_timeout=5,
                max_reconnect_attempts=5,
                allow_reconnect=True,
                error_cb=refused,
                name=f"gristmill-team-{found.team}",
                **found.connect_options(),
            )
        except Exception as exc:
            if rejected or "authorization violation" in str(exc).lower():
                raise CredentialError(
                    f"the NATS server at {url} rejected the credentials in {found.where} "
                    f"(team {found.team}): authorization violation"
                ) from None
            raise GristmillError(
                f"cannot reach the gristmill service's NATS server at {url}: {exc}"
            ) from exc
        return cls(nc, found.team)

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

    async def submit(self, spec: JobSpec, retries: int = 5, timeout_s: float = 60.0) -> str:
        """Submit; returns the job id. A lost reply (the planner died before answering, say)
        is retried with the same request id, after `timeout_s`."""
        size, limit = len(spec.to_json()), self.nc.max_payload
        if size > limit:
            raise GristmillError(
                f"the submission is {size} bytes, more than the NATS server takes in one "
                f"message ({limit}); pass fewer initial tasks, or inputs as directories or globs"
            )
        for attempt in range(retries):
            try:
                reply = await request(self.nc, self.team, "submit", spec, timeout_s=timeout_s)
                break
            except GristmillError:  # no answer: the planner may be starting again
                if attempt == retries - 1:
                    raise
                await asyncio.sleep(2.0**attempt)
        if not reply.ok:
            raise JobRejected(reply.error)
        assert reply.job is not None
        return reply.job

    async def status(self, job: str | None = None) -> list[JobState]:
        """The state of one job, or of every job the coordinator follows."""
        return (await self.service_status(job)).jobs

    async def service_status(self, job: str | None = None) -> ServiceStatus:
        """Job states (one job, or all), live workers, the number of archived jobs."""
        reply = _ok(await request(self.nc, self.team, "status", StatusQuery(job=job)))
        return ServiceStatus(
            [JobState.model_validate(raw) for raw in reply.data["jobs"]],
            [WorkerState.model_validate(raw) for raw in reply.data.get("workers", [])],
            int(reply.data.get("archived", 0)),
        )

    async def wait(
        self,
        job: str,
        timeout_s: float | None = None,
        on_progress: Callable[[JobState], None] | None = None,
        poll_s: float = 0.2,
        min_retries: int = 0,
    ) -> JobState:
        """Wait for the job's final state (from the events stream: nothing is missed);
        `on_progress` sees the coordinator's counts meanwhile. After `dlq retry`, pass the
        number of retries made so far as `min_retries` to wait for the job to end again."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        final: asyncio.Future[JobState] = asyncio.get_running_loop().create_future()

        async def follow() -> None:
            subject = event_subject(self.team, job, "job_state")
            while True:  # a long job outlives one replay's idle limit: follow again
                async for msg in replay(self.js, subject, idle_s=60.0):
                    state = JobState.from_json(msg.data)
                    if state.finished and state.retries >= min_retries:
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
        raise GristmillError(f"job {job} has no start event (unknown, or archived)")

    async def done_events(self, job: str) -> list[TasksDone]:
        """Every `TasksDone` of the job, one per manifest (a re-announcement is left out)."""
        seen: dict[tuple[int, str], TasksDone] = {}
        async for msg in replay(self.js, event_subject(self.team, job, "task_done")):
            with contextlib.suppress(MessageError):  # the coordinator failed what it names
                done = TasksDone.from_json(msg.data)
                seen.setdefault((done.step, done.key), done)
        return list(seen.values())

    async def results(self, job: str) -> dict[tuple[int, str], TaskResult]:
        """Every task's result, by (step, task id)."""
        found: dict[tuple[int, str], TaskResult] = {}
        for done in await self.done_events(job):
            for result in done.results:
                found.setdefault((done.step, result.task_id), result)
        return found

    async def failures(self, job: str) -> dict[tuple[int, str], TaskFailed]:
        """Every task that was dead-lettered at some point, by (step, task id)."""
        found: dict[tuple[int, str], TaskFailed] = {}
        async for msg in replay(self.js, event_subject(self.team, job, "task_failed")):
            with contextlib.suppress(MessageError):
                failed = TaskFailed.from_json(msg.data)
                found.setdefault((failed.step, failed.task_id), failed)
        return found

    async def _parts(self, job: str) -> dict[tuple[int, str], dict[int, IdsPart]]:
        found: dict[tuple[int, str], dict[int, IdsPart]] = {}
        async for msg in replay(self.js, event_subject(self.team, job, "ids")):
            part = IdsPart.from_json(msg.data)
            found.setdefault((part.step, part.owner), {})[part.part] = part
        return found

    async def outputs(self, job: str) -> list[Task[Any]]:
        """The last step's output tasks, in the order `LocalExecutor` returns them (depth
        first from the first tasks, each task's outputs in the order its stage made them).

        Every task must have finished or failed: a task with neither (its events lost, or the
        job archived) is an error, never a silently shorter list."""
        started = await self.started(job)
        results = await self.results(job)
        failed = await self.failures(job)
        parts = await self._parts(job)
        last = len(started.steps) - 1

        def listed(step: int, owner: str, inline: list[Any], count: int, what: str) -> list[Any]:
            if not count:
                return inline
            got = parts.get((step, owner), {})
            if len(got) < count:
                raise GristmillError(
                    f"job {job}: {len(got)} of the {count} parts listing the {what} of "
                    f"{owner or 'the planner'} are in the events stream"
                )
            field = "outputs" if what == "outputs" else "ids"
            return [x for n in range(count) for x in getattr(got[n], field)]

        initial = listed(started.first_step, "", started.initial, started.initial_parts, "ids")
        ordered: list[DataRef] = []
        stack = [(started.first_step, task_id) for task_id in reversed(initial)]
        while stack:
            step, task_id = stack.pop()
            result = results.get((step, task_id))
            if result is None:
                if (step, task_id) in failed:
                    continue  # dead-lettered, so it has no outputs
                raise GristmillError(
                    f"job {job}: task {task_id} of step {step} neither finished nor failed as far "
                    f"as the events stream says; its outputs cannot be read"
                )
            if step == last:
                ordered.extend(listed(step + 1, task_id, result.outputs, result.parts, "outputs"))
            else:
                children = listed(step + 1, task_id, result.output_ids, result.parts, "ids")
                stack.extend((step + 1, child) for child in reversed(children))
        store = await self.store()
        return [store.get(ref, self.team) for ref in ordered]

    async def dead_letters(self, job: str | None = None) -> list[DeadLetter]:
        """Dead letters of one job, or of all the team's jobs, oldest first."""
        subject = dlq_filter(self.team, job)
        return [DeadLetter.from_json(m.data) async for m in replay(self.js, subject)]

    async def retry(self, letter: DeadLetter) -> None:
        """Run a dead-lettered task again with all its attempts: its job reopens (a
        `TaskRetried` event) and ends again once the task has run. The coordinator does it,
        from its own copy of the dead letter (this only names the task)."""
        failure = letter.failure
        query = RetryQuery(job=failure.job, step=failure.step, task_id=failure.task_id)
        _ok(await request(self.nc, self.team, "retry", query, timeout_s=30.0))

    async def stop(self, job: str) -> int:
        """Stop continuous job `job` taking new files (it ends once those it took are
        processed); returns how many files it took."""
        from gristmill.bus import StopQuery

        reply = _ok(await request(self.nc, self.team, "stop", StopQuery(job=job), timeout_s=60.0))
        return int(reply.data.get("files", 0))

    async def notify(self, job: str, paths: list[str]) -> None:
        """Tell continuous job `job` that these files are complete and new (the planner takes
        each at once, if it is under the job's inputs and was not taken before)."""
        from gristmill.bus import IngestNotice
        from gristmill.bus.subjects import ingest_subject

        await self.nc.publish(ingest_subject(self.team, job), IngestNotice(paths=paths).to_json())
        await self.nc.flush()

    async def workers(self) -> dict[str, Any]:
        """Every live worker (pool, slots, steps, state), the pools' autoscaling bounds and the
        last scaling decisions with their reasons, newest first."""
        return _ok(await request(self.nc, self.team, "workers", StatusQuery())).data

    async def why(self, job: str, doc_id: str) -> dict[str, Any]:
        """What became of document `doc_id` in `job`: the coordinator's answer from the
        job's drop records (stage, reason, score, threshold, task, trace id) or, for a kept
        document, the file it is in."""
        from gristmill.bus import WhyQuery

        return _ok(await request(self.nc, self.team, "why", WhyQuery(job=job, doc=doc_id))).data

    async def trace(self, job_or_task: str) -> dict[str, Any]:
        """The trace of a job (or of the job a task id belongs to, only that task's spans), as
        `gristmill trace --json` prints it, read from the span store."""
        from gristmill.telemetry.spanstore import read_spans
        from gristmill.telemetry.view import job_trace

        job, task = job_or_task, None
        spans = await read_spans(self.js, self.team, job) if _is_token(job) else []
        if not spans:  # a task id? find its job among the stored spans
            everything = await read_spans(self.js, self.team)
            owners = {
                s["attributes"].get("gm.job")
                for s in everything
                if s.get("attributes", {}).get("gm.task") == job_or_task
            }
            if len(owners) == 1:
                [job] = owners
                task = job_or_task
                spans = [s for s in everything if s.get("attributes", {}).get("gm.job") == job]
            elif len(owners) > 1:
                jobs = ", ".join(sorted(str(o) for o in owners))
                raise GristmillError(
                    f"task {job_or_task!r} is in several jobs' traces ({jobs}); name the job"
                )
            else:
                raise GristmillError(
                    f"no spans stored for job or task {job_or_task!r} of team {self.team} (spans "
                    f"are kept for 7 days, 256 MiB per team; is GRISTMILL_TRACING off?)"
                )
        return job_trace(job, spans, task)

    async def gc(self, older_than_s: float | None = None) -> list[str]:
        """Archive the team's jobs finished more than `older_than_s` ago (default: the
        service's retention); returns the jobs archived."""
        query = GcQuery(older_than_s=older_than_s)
        reply = _ok(await request(self.nc, self.team, "gc", query, timeout_s=120.0))
        return list(reply.data["archived"])


def _is_token(name: str) -> bool:
    from gristmill.bus.subjects import check_token

    try:
        check_token("job", name)
    except GristmillError:
        return False
    return True


def _ok(reply: ApiReply) -> ApiReply:
    if not reply.ok:
        raise GristmillError(reply.error)
    return reply

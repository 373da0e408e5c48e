"""The planner: answers `gm.<team>.api.submit` (and `api.info`) for each team it serves.

A submission is validated and planned (`planning.plan_job`) off the event loop; a rejected one
gets an error reply and publishes nothing. An accepted one is made durable in an order that can
stop at any instruction and be taken up again:

1. the first manifests, stored (`plan`), and the job record pointing at them (KV);
2. one durable consumer per step;
3. `JobStarted` (`Nats-Msg-Id`), then the reply with the job id;
4. in the background: the long id list in `IdsPart`s, the manifests (`Nats-Msg-Id` each; a full
   stream makes it wait, never drop), then the `published` mark.

A planner that starts finds every job recorded but not marked published and finishes steps 2-4
(repeats are dropped by msg id, or found done by the workers), so a planner killed anywhere
never leaves a job that does not start, nor one that misses a manifest. Resubmitting a request
id answers with the same job and publishes nothing new.

A continuous job has no first manifests: once started, a `Watcher` (`services.planner.ingest`)
takes its input files as they arrive, until `gm.<team>.api.stop`; notifications of new files
come on `gm.<team>.ingest.<job>`. A planner that starts watches again every continuous job not
stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from faststream.nats import NatsMessage
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Status, StatusCode

from gristmill import faults, fs, telemetry
from gristmill.bus import (
    IDS_PER_PART,
    ApiReply,
    IdsPart,
    IngestNotice,
    JobSpec,
    JobStarted,
    JobState,
    MessageError,
    StopQuery,
    TaskManifest,
)
from gristmill.bus.broker import service_broker
from gristmill.bus.client import Publisher, kv_keys
from gristmill.bus.jobs import (
    JobRecord,
    archived_key,
    job_id_for,
    job_key,
    msg_id,
    published_key,
    state_key,
    stopped_key,
)
from gristmill.bus.streams import TeamLayout, ensure_layout, step_consumer
from gristmill.bus.subjects import (
    api_subject,
    event_subject,
    ingest_filter,
    parse_subject,
    task_subject,
)
from gristmill.config import ServiceSettings
from gristmill.credentials import service_credentials
from gristmill.errors import GristmillError
from gristmill.loops import cancel_all
from gristmill.pipeline.portable import CodeLoader
from gristmill.store import StoreWriteError, TaskStore
from services.planner.ingest import Watcher
from services.planner.planning import Planned, Rejected, plan_job
from services.planner.quotas import running_jobs_refusal, store_refusal

__all__ = ["PlannerService"]

log = logging.getLogger("gristmill.planner")

# Manifests published per batch (their acks are awaited together).
PUBLISH_BATCH = 512


class PlannerService:
    """The planner of one deployment; `broker` is its FastStream broker."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        # The planner's writes are a job's acceptance: an I/O error is tried again, backing off.
        self.store = TaskStore(settings.store_root, write_attempts=8)
        self.telemetry = telemetry.setup("planner", teams=settings.teams)
        self.broker = service_broker(
            settings.nats_url,
            self._reconnected,
            service_credentials("planner", settings.credentials),
            self.telemetry.provider,
        )
        # One per team, kept: a pipeline's code is loaded once, not at every submission.
        self._loaders = {team: _team_loader(self.store, team) for team in settings.teams}
        self._publishing: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._publisher: Publisher | None = None
        self._jobs: dict[str, Any] = {}  # each team's jobs bucket, bound once
        self._admission = {team: asyncio.Lock() for team in settings.teams}
        self._ingest: dict[str, Any] = {}  # each team's ingest bucket
        self.watchers: dict[tuple[str, str], Watcher] = {}
        self._watching: dict[tuple[str, str], asyncio.Task[None]] = {}
        for team in settings.teams:
            self.broker.subscriber(api_subject(team, "stop"), queue="planner")(
                self._stop_handler(team)
            )
            self.broker.subscriber(ingest_filter(team), queue="planner")(self._notice_handler(team))
            self.broker.subscriber(api_subject(team, "submit"), queue="planner")(
                self._submit_handler(team)
            )
            self.broker.subscriber(api_subject(team, "info"), queue="planner")(
                self._info_handler(team)
            )

    @property
    def _js(self) -> Any:
        return self.broker.config.connection_state.stream

    async def after_start(self) -> None:
        """Create each team's streams and buckets (idempotent), then finish what a planner
        before this one left half published."""
        nc = self.broker.config.connection_state.connection
        self.telemetry.attach_span_store(nc, asyncio.get_running_loop())
        self._publisher = await Publisher(nc).start()
        for team in self.settings.teams:
            layout = TeamLayout(team)
            await ensure_layout(self._js, layout, self.settings.stream_limits())
            self._jobs[team] = await self._js.key_value(layout.bucket("jobs"))
            self._ingest[team] = await self._js.key_value(layout.bucket("ingest"))
        for team in self.settings.teams:
            await self._resume(team)
            await self._resume_watching(team)
        log.info("planner ready for teams %s", ", ".join(self.settings.teams))

    async def _reconnected(self) -> None:
        log.info("connection back")

    async def before_stop(self) -> None:
        """Stop publishing (a planner started later finishes it)."""
        await cancel_all(list(self._publishing.values()) + list(self._watching.values()))
        await asyncio.to_thread(self.telemetry.flush)

    def _submit_handler(self, team: str) -> Any:
        async def submit(msg: NatsMessage) -> bytes:
            reply = await self.submit(team, msg.body)
            return reply.to_json()

        return submit

    def _info_handler(self, team: str) -> Any:
        async def info(msg: NatsMessage) -> bytes:
            data = {
                "store": self.settings.store_root,
                "trust_code": self.settings.trusts(team),
                "output_root": self.settings.output_root_of(team),
                "input_roots": list(self.settings.readable_roots_of(team)),
            }
            return ApiReply(ok=True, data=data).to_json()

        return info

    async def submit(self, team: str, payload: bytes) -> ApiReply:
        """Handle one submission for `team`. An accepted job's trace starts here: its root
        span is the submission (from receipt to the reply), with the planning under it."""
        received = time.time_ns()
        try:
            spec = JobSpec.from_json(payload)
        except MessageError as exc:
            return ApiReply(ok=False, error=str(exc))
        if spec.team != team:
            log.warning("refused a job of team %s sent to team %s's subject", spec.team, team)
            return ApiReply(ok=False, error=f"a job of team {spec.team!r} sent to team {team!r}")
        job = job_id_for(team, spec.request_id)
        if await self._known(team, job):
            return ApiReply(ok=True, job=job)  # a resubmitted request: that job, nothing new
        async with self._admission[team]:  # one at a time: two must not both take the last place
            refusal = await self._over_quota(team, job)
            if refusal is not None:
                log.info("refused a job of team %s: %s", team, refusal)
                return ApiReply(ok=False, error=refusal)
            try:
                planned = await self._plan(team, spec)
            except StoreWriteError as exc:
                log.error("a job of team %s could not be stored: %s", team, exc)
                return ApiReply(ok=False, error=f"the service could not store the job: {exc}")
            except Rejected as exc:
                log.info("rejected a job of team %s: %s", team, exc)
                return ApiReply(ok=False, error=str(exc))
            with self._job_span(team, job, received, len(planned.manifests)):
                await self._start(team, planned)
        return ApiReply(ok=True, job=job)

    async def _over_quota(self, team: str, job: str) -> str | None:
        """Why `team` may not start another job now (None: it may)."""
        policy = self.settings.policy(team)
        if policy.max_running_jobs is not None:
            running = await self._running(team)
            running.discard(job)
            refusal = running_jobs_refusal(team, policy.max_running_jobs, running)
            if refusal:
                return refusal
        if policy.max_store_bytes is not None:
            used = await asyncio.to_thread(fs.tree_size, self.store.team_root(team))
            return store_refusal(team, policy.max_store_bytes, used)
        return None

    async def _record_keys(self, team: str) -> list[str]:
        """The keys of the team's job records (`job.<id>`)."""
        return await kv_keys(self._js, TeamLayout(team).bucket("jobs"), "job.*")

    async def _running(self, team: str) -> set[str]:
        """The team's jobs that have a record and no final state."""
        from nats.js.errors import KeyNotFoundError

        jobs = self._jobs[team]
        running = set()
        for key in await self._record_keys(team):
            job = key.split(".", 1)[1]
            try:
                state = JobState.from_json((await jobs.get(state_key(job))).value)
            except (KeyNotFoundError, MessageError):
                running.add(job)  # not announced yet: it runs
                continue
            if not state.finished:
                running.add(job)
        return running

    @contextlib.contextmanager
    def _job_span(self, team: str, job: str, received: int, manifests: int) -> Iterator[None]:
        """The job's root span and its planning span (both from `received`), current inside."""
        asked = trace.get_current_span().get_span_context()  # the submitter's, if it sent one
        links = [Link(asked, {"gm.link": "submitted_by"})] if asked.is_valid else []
        attributes = {"gm.team": team, "gm.job": job}
        with telemetry.fixed_ids(telemetry.trace_id_of(job), telemetry.root_span_id(job)):
            root = self.telemetry.tracer.start_span(
                f"job {job}",
                Context(),
                links=links,
                start_time=received,
                attributes={**attributes, "gm.kind": "job"},
            )
        with trace.use_span(root, end_on_exit=True):
            plan = self.telemetry.tracer.start_span(
                "plan",
                start_time=received,
                attributes={**attributes, "gm.kind": "plan", "gm.manifests": manifests},
            )
            with trace.use_span(plan, end_on_exit=True, record_exception=True):
                yield

    async def _plan(self, team: str, spec: JobSpec) -> Planned:
        """Plan off the event loop (the store tries a failed write again itself)."""
        return await asyncio.to_thread(
            plan_job,
            spec,
            self.store,
            self.settings.output_root_of(team),
            self.settings.trusts(team),
            self._loaders[team],
            self.settings.readable_roots_of(team),
        )

    async def _known(self, team: str, job: str) -> bool:
        from nats.js.errors import KeyNotFoundError

        jobs = self._jobs[team]
        for key in (published_key(job), archived_key(job)):
            with contextlib.suppress(KeyNotFoundError):
                if (await jobs.get(key)).value:
                    return True
        return (team, job) in self._publishing

    async def _start(self, team: str, planned: Planned) -> None:
        """Steps 1-3 of the module docstring, then step 4 in the background."""
        lines = b"\n".join(m.to_json() for m in planned.manifests)
        plan = await asyncio.to_thread(self.store.put_plan, team, planned.record.job, lines)
        record = planned.record.model_copy(update={"plan": plan, "submitted_at": time.time()})
        jobs = self._jobs[team]
        await jobs.put(job_key(record.job), record.to_json())
        faults.point("planner.recorded")
        await self._begin(team, record, planned.manifests)

    async def _begin(self, team: str, record: JobRecord, manifests: list[TaskManifest]) -> None:
        """Consumers, `JobStarted`, and the background publishing of the manifests."""
        layout = TeamLayout(team)
        for step in range(record.first_step, len(record.steps)):
            consumer = step_consumer(team, record.job, step, record.spec.options.ack_wait_s)
            await self._js.add_consumer(layout.tasks_stream, consumer)
        faults.point("planner.consumers")
        ids = [m.key for m in manifests]
        long = len(ids) > IDS_PER_PART
        started = JobStarted(
            job=record.job,
            team=team,
            pipeline=str(record.spec.pipeline.get("name", "")),
            steps=record.steps,
            first_step=record.first_step,
            initial=[] if long else ids,
            initial_parts=-(-len(ids) // IDS_PER_PART) if long else 0,
            submitted_at=record.submitted_at,
            continuous=record.spec.continuous is not None,
            output=_output_of(record),
        )
        assert self._publisher is not None
        await self._publisher.publish(
            event_subject(team, record.job, "job_started"), started, f"started.{record.job}"
        )
        faults.point("planner.started")
        if record.spec.continuous is not None:
            await self._jobs[team].put(published_key(record.job), b"1")
            await self._watch(team, record)
            return
        task = asyncio.create_task(self._publish(team, record, manifests, long))
        self._publishing[team, record.job] = task
        task.add_done_callback(lambda _: self._publishing.pop((team, record.job), None))

    async def _publish(
        self, team: str, record: JobRecord, manifests: list[TaskManifest], long: bool
    ) -> None:
        assert self._publisher is not None
        job, step = record.job, record.first_step
        span = self.telemetry.tracer.start_span(
            "publish",
            telemetry.job_context(job),
            attributes={
                "gm.team": team,
                "gm.job": job,
                "gm.kind": "plan",
                "gm.manifests": len(manifests),
            },
        )
        with trace.use_span(span, end_on_exit=True):  # its log lines name the job's trace
            headers = telemetry.inject({})
            try:
                if long:
                    subject = event_subject(team, job, "ids")
                    ids = [m.key for m in manifests]
                    parts = [
                        IdsPart(
                            job=job,
                            step=step,
                            owner="",
                            part=n,
                            parts=-(-len(ids) // IDS_PER_PART),
                            ids=ids[at : at + IDS_PER_PART],
                        )
                        for n, at in enumerate(range(0, len(ids), IDS_PER_PART))
                    ]
                    await self._publisher.publish_many(
                        [(subject, p, msg_id("ids", job, step, "", p.part)) for p in parts]
                    )
                subject = task_subject(team, job, str(step))
                for at in range(0, len(manifests), PUBLISH_BATCH):
                    batch = manifests[at : at + PUBLISH_BATCH]
                    await self._publisher.publish_many(
                        [(subject, m, msg_id("task", job, step, m.key)) for m in batch], headers
                    )
                    faults.point("planner.manifests")
                jobs = self._jobs[team]
                await jobs.put(published_key(job), b"1")
                log.info("job %s: %d manifests published to step %d", job, len(manifests), step)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                log.exception("job %s: publishing its manifests failed; a restart finishes it", job)

    # -- continuous jobs ---------------------------------------------------------------------

    async def _watch(self, team: str, record: JobRecord) -> None:
        """Start watching a continuous job's input (once per job)."""
        if (team, record.job) in self.watchers:
            return
        assert self._publisher is not None
        watcher = Watcher(team, record, self.store, self._publisher, self._js, self._ingest[team])
        await watcher.start()
        self.watchers[team, record.job] = watcher
        self._watching[team, record.job] = asyncio.create_task(self._keep_watching(watcher))

    async def _keep_watching(self, watcher: Watcher) -> None:
        while True:
            try:
                await watcher.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # a listing that failed (the input unreachable): again later
                log.exception("job %s: watching its input failed; trying again", watcher.job)
                await asyncio.sleep(watcher.poll_s)

    async def _resume_watching(self, team: str) -> None:
        """Watch again every continuous job that was not stopped; finish stopping the others."""
        from nats.js.errors import KeyNotFoundError

        jobs = self._jobs[team]
        for key in await self._record_keys(team):
            try:
                record = JobRecord.from_json((await jobs.get(key)).value)
            except (KeyNotFoundError, MessageError):
                continue
            if record.spec.continuous is None:
                continue
            try:
                await jobs.get(stopped_key(record.job))
            except KeyNotFoundError:
                log.info("job %s: watching its input again", record.job)
                await self._watch(team, record)
                continue
            assert self._publisher is not None
            watcher = Watcher(
                team, record, self.store, self._publisher, self._js, self._ingest[team]
            )
            await watcher.stop()  # a stop cut short: its input_closed again (a repeat is harmless)

    def _stop_handler(self, team: str) -> Any:
        async def stop(msg: NatsMessage) -> bytes:
            try:
                query = StopQuery.from_json(msg.body or b"{}")
                files = await self.stop(team, query.job)
            except (GristmillError, MessageError) as exc:
                return ApiReply(ok=False, error=str(exc)).to_json()
            return ApiReply(ok=True, job=query.job, data={"files": files}).to_json()

        return stop

    async def stop(self, team: str, job: str) -> int:
        """Stop continuous job `job` taking files; returns how many it took."""
        watcher = self.watchers.get((team, job))
        if watcher is None:
            raise GristmillError(await self._why_not_watched(team, job))
        await self._jobs[team].put(stopped_key(job), b"1")
        files = await watcher.stop()
        task = self._watching.pop((team, job), None)
        if task is not None:
            await cancel_all([task])
        del self.watchers[team, job]
        log.info("job %s stopped: it took %d files", job, files)
        return files

    async def _why_not_watched(self, team: str, job: str) -> str:
        from nats.js.errors import KeyNotFoundError

        jobs = self._jobs[team]
        try:
            record = JobRecord.from_json((await jobs.get(job_key(job))).value)
        except (KeyNotFoundError, MessageError):
            return f"no job {job!r} in team {team}"
        if record.spec.continuous is None:
            return f"job {job} is not continuous: it ends by itself when its input is processed"
        return f"job {job} is stopped already"

    def _notice_handler(self, team: str) -> Any:
        async def notice(msg: NatsMessage) -> None:
            job = parse_subject(msg.raw_message.subject).job or ""
            try:
                paths = IngestNotice.from_json(msg.body).paths
            except MessageError as exc:
                log.warning("team %s: refused a notification for job %s: %s", team, job, exc)
                return
            watcher = self.watchers.get((team, job))
            if watcher is None:
                log.warning("team %s: a notification for job %s, which is not watched", team, job)
                return
            for problem in await watcher.notified(paths):
                log.warning("job %s: a notified file was not taken: %s", job, problem)

        return notice

    async def _resume(self, team: str) -> None:
        """Finish the jobs a planner before this one recorded but did not publish in full."""
        from nats.js.errors import KeyNotFoundError

        jobs = self._jobs[team]
        for key in await self._record_keys(team):
            job = key.split(".", 1)[1]
            with contextlib.suppress(KeyNotFoundError):
                await jobs.get(published_key(job))
                continue
            try:
                record = JobRecord.from_json((await jobs.get(key)).value)
                assert record.plan is not None, "a record written before its plan"
                lines = await asyncio.to_thread(self.store.get_bytes, record.plan, team)
                manifests = [TaskManifest.from_json(line) for line in lines.split(b"\n") if line]
            except Exception:
                log.exception("job %s: cannot take up its publishing", job)
                continue
            log.info("job %s: taking up the publishing of %d manifests", job, len(manifests))
            await self._begin(team, record, manifests)


def _output_of(record: JobRecord) -> str:
    """Where the job's last stage writes ("" when it names no `path`)."""
    stages = record.spec.pipeline.get("stages") or [{}]
    path = (stages[-1].get("params") or {}).get("path") if isinstance(stages[-1], dict) else None
    return path if isinstance(path, str) else ""


def _team_loader(store: TaskStore, team: str) -> CodeLoader:
    return CodeLoader(lambda sha: store.get_code(team, sha))

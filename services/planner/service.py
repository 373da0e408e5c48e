"""The planner: answers `gm.<team>.api.submit` (and `api.info`) for each team it serves.

A submission is validated and planned (`planning.plan_job`) off the event loop; a rejected one
gets an error reply and publishes nothing. An accepted one is made durable in an order that
can stop at any instruction and be repeated by the client resubmitting the same request id:
job record (KV put) -> one durable consumer per step -> first manifests (`Nats-Msg-Id`) ->
`JobStarted` event (`Nats-Msg-Id`) -> reply with the job id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from faststream.nats import NatsBroker, NatsMessage

from gristmill.bus import ApiReply, JobSpec, JobStarted, MessageError
from gristmill.bus.client import publish
from gristmill.bus.jobs import consumer_name, job_key, msg_id
from gristmill.bus.streams import TeamLayout, ensure_layout
from gristmill.bus.subjects import api_subject, event_subject, task_subject
from gristmill.config import ServiceSettings
from gristmill.pipeline.portable import CodeLoader
from gristmill.store import TaskStore
from services.planner.planning import Planned, Rejected, plan_job

__all__ = ["PlannerService"]

log = logging.getLogger("gristmill.planner")


class PlannerService:
    """The planner of one deployment; `broker` is its FastStream broker."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.store = TaskStore(settings.store_root)
        self.broker = NatsBroker(settings.nats_url, logger=None)
        # One per team, kept: a pipeline's code is loaded once, not at every submission.
        self._loaders = {team: _team_loader(self.store, team) for team in settings.teams}
        for team in settings.teams:
            submit = self.broker.subscriber(api_subject(team, "submit"), queue="planner")
            submit(self._submit_handler(team))
            info = self.broker.subscriber(api_subject(team, "info"), queue="planner")
            info(self._info_handler(team))

    async def after_start(self) -> None:
        """Create each team's streams and buckets (idempotent)."""
        js = self.broker.config.connection_state.stream
        for team in self.settings.teams:
            await ensure_layout(js, TeamLayout(team))
        log.info("planner ready for teams %s", ", ".join(self.settings.teams))

    def _submit_handler(self, team: str) -> Any:
        async def submit(msg: NatsMessage) -> bytes:
            reply = await self.submit(team, msg.body)
            return reply.to_json()

        return submit

    def _info_handler(self, team: str) -> Any:
        async def info(msg: NatsMessage) -> bytes:
            data = {"store": self.settings.store_root, "trust_code": self.settings.trust_code}
            return ApiReply(ok=True, data=data).to_json()

        return info

    async def submit(self, team: str, payload: bytes) -> ApiReply:
        """Handle one submission for `team`."""
        try:
            spec = JobSpec.from_json(payload)
        except MessageError as exc:
            return ApiReply(ok=False, error=str(exc))
        if spec.team != team:
            return ApiReply(ok=False, error=f"a job of team {spec.team!r} sent to team {team!r}")
        try:
            planned = await asyncio.to_thread(
                plan_job,
                spec,
                self.store,
                self.settings.output_root,
                self.settings.trust_code,
                self._loaders[team],
            )
        except Rejected as exc:
            log.info("rejected a job of team %s: %s", team, exc)
            return ApiReply(ok=False, error=str(exc))
        await self._start(team, planned)
        return ApiReply(ok=True, job=planned.record.job)

    async def _start(self, team: str, planned: Planned) -> None:
        from nats.js import api

        js = self.broker.config.connection_state.stream
        layout = TeamLayout(team)
        record = planned.record
        options = record.spec.options
        jobs = await js.key_value(layout.bucket("jobs"))
        await jobs.put(job_key(record.job), record.to_json())
        for step in range(record.first_step, len(record.steps)):
            await js.add_consumer(
                layout.tasks_stream,
                api.ConsumerConfig(
                    durable_name=consumer_name(record.job, step),
                    filter_subject=task_subject(team, record.job, str(step)),
                    ack_policy=api.AckPolicy.EXPLICIT,
                    ack_wait=options.ack_wait_s,
                    max_deliver=-1,  # workers dead-letter after max_deliver themselves
                    max_ack_pending=-1,
                ),
            )
        subject = task_subject(team, record.job, str(record.first_step))
        await asyncio.gather(
            *(
                publish(js, subject, m, msg_id("task", m.job, m.step, m.task_id))
                for m in planned.manifests
            )
        )
        started = JobStarted(
            job=record.job,
            team=team,
            pipeline=str(record.spec.pipeline.get("name", "")),
            steps=record.steps,
            first_step=record.first_step,
            initial=[m.task_id for m in planned.manifests],
            submitted_at=time.time(),
        )
        await publish(
            js, event_subject(team, record.job, "job_started"), started, f"started.{record.job}"
        )
        log.info(
            "job %s: %d tasks published to step %d",
            record.job,
            len(planned.manifests),
            record.first_step,
        )


def _team_loader(store: TaskStore, team: str) -> CodeLoader:
    return CodeLoader(lambda sha: store.get_code(team, sha))

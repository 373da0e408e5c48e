"""`ServiceExecutor`: runs a pipeline on a gristmill service and returns its outputs.

The plan's stages go to the service as a spec: installed stages by name, the user's own classes
by value (their module's source, stored once in the service's store; only a service that trusts
the submitter runs them). Initial tasks are written to the store, the job is submitted and
followed to its end, and the last step's outputs are read back in the order `LocalExecutor`
returns them.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from gristmill.bus import JobOptions, JobSpec, JobState
from gristmill.bus.jobs import job_id_for
from gristmill.client import ServiceClient, new_request_id
from gristmill.config import nats_url
from gristmill.errors import GristmillError
from gristmill.executors.base import BaseExecutor, StageTotals, prepare_initial_tasks
from gristmill.pipeline.portable import portable_spec, task_blobs
from gristmill.stages import FusedStage, ProcessingStage
from gristmill.tasks import Task

__all__ = ["JobFailed", "ServiceExecutor"]

AnyStage = ProcessingStage[Any, Any]
AnyTask = Task[Any]


class JobFailed(GristmillError):
    """Tasks of a job ended in the dead-letter stream."""


class ServiceExecutor(BaseExecutor):
    """Submits to the service at `url` (default: `GRISTMILL_NATS_URL`, else the embedded
    service `gristmill up` runs under the state dir) and waits.

    Config keys: `credentials` (a credentials file; default: `GRISTMILL_CREDENTIALS`, else
    the service's only team's), `team` (default: the credentials' team), `timeout_s` (default
    none), `priority` (among the team's jobs, higher first; default 0), `max_deliver`,
    `ack_wait_s`, `retry_backoff_s`, `task_timeout_s` (the job's retry policy),
    `allow_failures` (default False: a dead-lettered task raises `JobFailed`; True returns what
    succeeded), `submit_timeout_s` (how long to wait for the planner's answer before asking
    again, default 60). A job that fails as a whole (two tasks with one id) raises `JobFailed`.
    """

    config_keys = frozenset(
        {
            "credentials",
            "team",
            "priority",
            "timeout_s",
            "max_deliver",
            "ack_wait_s",
            "retry_backoff_s",
            "task_timeout_s",
            "allow_failures",
            "submit_timeout_s",
        }
    )

    def __init__(self, url: str | None = None, config: dict[str, Any] | None = None):
        super().__init__(config)
        self.url = url
        self.job: str | None = None
        self.state: JobState | None = None

    def execute(
        self, stages: list[AnyStage], initial_tasks: list[AnyTask] | None = None
    ) -> list[AnyTask]:
        """Run `stages` on the service; without `initial_tasks`, the service starts the job."""
        return asyncio.run(self._execute(stages, initial_tasks))

    async def _execute(
        self, stages: list[AnyStage], initial_tasks: list[AnyTask] | None
    ) -> list[AnyTask]:
        team = self.config.get("team")
        client = await ServiceClient.connect(
            nats_url(self.url), str(team) if team else None, self.config.get("credentials")
        )
        try:
            return await self._submit_and_wait(client, stages, initial_tasks)
        finally:
            await client.close()

    async def _submit_and_wait(
        self, client: ServiceClient, stages: list[AnyStage], initial_tasks: list[AnyTask] | None
    ) -> list[AnyTask]:
        members = [m for s in stages for m in (s.members if isinstance(s, FusedStage) else [s])]
        fuse = any(isinstance(s, FusedStage) for s in stages)
        spec, blobs = portable_spec("pipeline", members)
        _absolute_paths(spec)
        tasks = prepare_initial_tasks(initial_tasks) if initial_tasks is not None else []
        blobs.update(task_blobs(tasks))
        store = await client.store()
        for sha, blob in blobs.items():
            store.put_code(client.team, sha, blob.to_bytes())
        request_id = new_request_id()
        job = job_id_for(client.team, request_id)
        refs = [store.put(client.team, job, "initial", task) for task in tasks]
        policy = ("max_deliver", "ack_wait_s", "retry_backoff_s", "task_timeout_s", "priority")
        options = {key: self.config[key] for key in policy if key in self.config}
        submission = JobSpec(
            team=client.team,
            request_id=request_id,
            pipeline=spec,
            initial=refs,
            initial_ids=[task.task_id for task in tasks],
            code=sorted(blobs),
            options=JobOptions(fuse=fuse, **options),
        )
        self.job = await client.submit(
            submission, timeout_s=float(self.config.get("submit_timeout_s", 60.0))
        )
        timeout = self.config.get("timeout_s")
        self.state = await client.wait(self.job, timeout_s=timeout)
        self.totals = [
            StageTotals(
                stage_name=step.name,
                calls=step.done,
                tasks_in=step.done,
                items_out=step.items_out,
                items_in=step.items_in,
                items_dropped=step.items_dropped,
            )
            for step in self.state.steps
        ]
        if self.state.state == "failed":
            raise JobFailed(f"job {self.job} failed: {self.state.error}")
        if self.state.tasks_failed and not self.config.get("allow_failures", False):
            letters = await client.dead_letters(self.job)
            first = letters[0].failure if letters else None
            detail = (
                f"; first: step {first.step} task {first.task_id} after {first.attempts} "
                f"attempts: {first.error}\n{first.traceback}"
                if first
                else ""
            )
            raise JobFailed(f"job {self.job}: {self.state.tasks_failed} task(s) failed{detail}")
        return await client.outputs(self.job)


# Stage parameters naming local paths: the service resolves them where it runs, so a relative
# one is made absolute here, where the user wrote it.
_PATH_PARAMS = ("path", "drops_path", "output_path", "file_paths")


def _absolute_paths(spec: dict[str, Any]) -> None:
    for entry in spec.get("stages", []):
        params = entry.get("params", {})
        for key in _PATH_PARAMS:
            value = params.get(key)
            if isinstance(value, str):
                params[key] = _absolute(value)
            elif isinstance(value, list):
                params[key] = [_absolute(v) if isinstance(v, str) else v for v in value]


def _absolute(path: str) -> str:
    return path if "://" in path or os.path.isabs(path) else os.path.abspath(path)

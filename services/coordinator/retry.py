"""Running a dead-lettered task again (`gm.<team>.api.retry`), from the coordinator's own copy
of its dead letter: a team names the task, never sends the manifest.

The step's consumer is made again (the job's end removed it), the job reopens (`TaskRetried`)
and the manifest is published afresh with its attempts reset. Each retry has a fresh suffix in
its msg ids, so a second retry of the same task is a second run, not a duplicate.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from gristmill.bus import DeadLetter, MessageError, RetryQuery, TaskRetried
from gristmill.bus.client import Publisher, replay
from gristmill.bus.jobs import JobRecord, job_key, msg_id
from gristmill.bus.streams import TeamLayout, step_consumer
from gristmill.bus.subjects import dlq_subject, event_subject, task_subject
from gristmill.errors import GristmillError

__all__ = ["retry_task"]


async def retry_task(js: Any, publisher: Publisher, jobs: Any, team: str, query: RetryQuery) -> str:
    """Run the task `query` names again; returns its id. `jobs` is the team's jobs bucket."""
    from nats.js.errors import KeyNotFoundError

    letter = None
    async for raw in replay(js, dlq_subject(team, query.job, str(query.step))):
        with contextlib.suppress(MessageError):
            found = DeadLetter.from_json(raw.data)
            if found.failure.task_id == query.task_id and found.manifest is not None:
                letter = found
    if letter is None or letter.manifest is None:
        raise GristmillError(
            f"team {team} has no dead letter of task {query.task_id} of step {query.step} "
            f"of job {query.job}"
        )
    try:
        record = JobRecord.from_json((await jobs.get(job_key(query.job))).value)
    except (KeyNotFoundError, MessageError) as exc:
        raise GristmillError(f"job {query.job} has no record (archived?): {exc}") from None
    manifest = letter.manifest
    [task] = [t for t in manifest.tasks if t.task_id == query.task_id] or manifest.tasks[:1]
    consumer = step_consumer(team, query.job, query.step, record.spec.options.ack_wait_s)
    await js.add_consumer(TeamLayout(team).tasks_stream, consumer)
    once = uuid.uuid4().hex[:12]
    retried = TaskRetried(job=query.job, step=query.step, task_id=task.task_id, root=task.root)
    await publisher.publish(
        event_subject(team, query.job, "task_retried"),
        retried,
        msg_id("retried", query.job, query.step, task.task_id, once),
    )
    fresh = manifest.model_copy(update={"tasks": [task.model_copy(update={"attempts": 0})]})
    await publisher.publish(
        task_subject(team, query.job, str(query.step)),
        fresh,
        f"{msg_id('retry', query.job, query.step, task.task_id)}.{once}",
    )
    return task.task_id

"""The spans of a worker's task attempts: one per task per attempt, in its job's trace.

An attempt's span is a child of the job's root span (the submission) and has the id derived
from (job, step, task, attempt), so it links to the attempt before it (`previous_attempt`)
without asking anyone, and to the attempt of the task that made it (`parent_task`, from the
manifest; a first task links to the planner's span the message's `traceparent` names,
`published_by`). Store reads and writes, which the actor times, become child spans with the
actor's clock readings; the time a run held its slot is a `slot` span, and what the worker
publishes while settling is traced under the attempt of the manifest's first task. A failed
attempt carries its error as an `exception` event.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, Status, StatusCode, TraceFlags

from gristmill.bus.jobs import JobRecord
from gristmill.telemetry import (
    attempt_span_id,
    extract,
    fixed_ids,
    job_context,
    trace_id_of,
)
from services.worker.effects import Work

__all__ = ["AttemptSpans"]

# Reads shorter than this, after the first task of a manifest, get no span of their own (a
# fan-out's thousands of tiny tasks would double their spans for nothing to see).
READ_SPAN_NS = 1_000_000


def _context(job: str, span_id: int) -> SpanContext:
    return SpanContext(
        trace_id_of(job), span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )


class AttemptSpans:
    """Starts and ends the attempt spans of one worker."""

    def __init__(self, tracer: trace.Tracer, worker: str):
        self.tracer = tracer
        self.worker = worker

    def start(self, record: JobRecord, work: Work) -> list[Span]:
        """One started span per task of `work`'s manifest."""
        manifest = work.manifest
        job, step = manifest.job, manifest.step
        parent = job_context(job)
        published = trace.get_current_span(extract(getattr(work.msg, "headers", None)))
        queued = _queue_wait(work.msg)
        base = work.attempt - manifest.tasks[0].attempts  # deliveries of this message
        spans = []
        for entry in manifest.tasks:
            attempt = base + entry.attempts
            links = []
            if entry.parent_span:
                links.append(
                    Link(_context(job, int(entry.parent_span, 16)), {"gm.link": "parent_task"})
                )
            elif published.get_span_context().is_valid:
                links.append(Link(published.get_span_context(), {"gm.link": "published_by"}))
            if attempt > 1:
                before = attempt_span_id(job, step, entry.task_id, attempt - 1)
                links.append(Link(_context(job, before), {"gm.link": "previous_attempt"}))
            attributes: dict[str, Any] = {
                "gm.kind": "attempt",
                "gm.team": record.spec.team,
                "gm.job": job,
                "gm.step": step,
                "gm.step_name": manifest.step_name,
                "gm.task": entry.task_id,
                "gm.attempt": attempt,
                "gm.manifest": manifest.key,
                "gm.worker": self.worker,  # the pool is the resource's (gm.pool)
                "gm.queue_wait_s": queued,
            }
            with fixed_ids(span_id=attempt_span_id(job, step, entry.task_id, attempt)):
                span = self.tracer.start_span(
                    f"task {manifest.step_name}", parent, links=links, attributes=attributes
                )
            spans.append(span)
        return spans

    def ran(self, spans: list[Span], raw: list[dict[str, Any]], actor: str) -> None:
        """Record the actor's per-task results on the spans (not ended yet)."""
        if not spans or not spans[0].is_recording():
            return
        for index, (span, result) in enumerate(zip(spans, raw, strict=True)):
            span.set_attribute("gm.actor", actor)
            if not result["ok"]:
                self.failed(span, result["error"], result.get("traceback", ""))
                continue
            span.set_attributes(
                {
                    "gm.items_in": result["items_in"],
                    "gm.items_out": result["items_out"],
                    "gm.items_dropped": result["items_dropped"],
                    "gm.outputs": len(result["output_ids"]),
                }
            )
            read = result.get("read")
            if read:
                span.set_attribute("gm.bytes_read", read[2])
                # a group's tiny tasks read one shared payload: the first read is the one
                if index == 0 or read[1] - read[0] >= READ_SPAN_NS:
                    self._io(span, "store.read", read[0], read[1], {"gm.bytes": read[2]})
            write = result.get("write")
            if write:
                span.set_attribute("gm.bytes_written", write[2])
                self._io(
                    span,
                    "store.write",
                    write[0],
                    write[1],
                    {"gm.bytes": write[2], "gm.fates": write[3]},
                )
            span.set_status(Status(StatusCode.OK))

    def slot(self, span: Span, start: int, end: int, tasks: int) -> None:
        """The time a run held one of the worker's slots (its `tasks` tasks, of one or more
        manifests), as a child of the attempt span of its first task: slot-time per team, and
        what a task waited for a slot (the attempt's start to this one's)."""
        if span.is_recording():
            self._io(span, "slot", start, end, {"gm.tasks": tasks})

    def failed(self, span: Span, error: str, detail: str) -> None:
        """Mark an attempt failed, its error as an `exception` event."""
        kind, _, message = error.partition(": ")
        span.add_event(
            "exception",
            {
                "exception.type": kind,
                "exception.message": message or error,
                "exception.stacktrace": detail,
            },
        )
        span.set_status(Status(StatusCode.ERROR, error[:500]))

    def _io(self, span: Span, name: str, start: int, end: int, attributes: dict[str, Any]) -> None:
        own = getattr(span, "attributes", None) or {}
        attributes = {**attributes, **{k: own[k] for k in ("gm.team", "gm.job", "gm.task")}}
        child = self.tracer.start_span(
            name, trace.set_span_in_context(span), start_time=start, attributes=attributes
        )
        child.end(end_time=end)


def _queue_wait(msg: Any) -> float:
    """Seconds between the message's arrival in the stream and now (0 when unknown)."""
    try:
        stamp = float(msg.metadata.timestamp.timestamp())
    except Exception:
        return 0.0
    return max(0.0, time.time() - stamp)

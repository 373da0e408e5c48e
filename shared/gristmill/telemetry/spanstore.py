"""The embedded span store: the spans of every job, kept in the team's spans stream.

A service's finished spans that belong to a job (attributes `gm.team`, `gm.job`) are published
in batches to `gm.<team>.span.<job>.<service>` as JSON, in the form `gristmill trace --json`
prints. The stream is bounded in bytes and age and drops its oldest spans first
(`gristmill.bus.streams`), so the store needs no collection of its own. A span exported twice
(a retried export, an attempt run again under the same derived id) is read back once: the
last one stored wins.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import StatusCode

from gristmill.bus.subjects import span_subject, team_subjects
from gristmill.telemetry.tracing import format_span_id, format_trace_id

__all__ = ["SpanStoreExporter", "read_spans", "span_json"]

log = logging.getLogger("gristmill.telemetry")

# One message of spans stays well below the server's 1 MiB default payload.
CHUNK_BYTES = 256 << 10
EXPORT_TIMEOUT_S = 10.0

_STATUS = {StatusCode.OK: "ok", StatusCode.ERROR: "error", StatusCode.UNSET: "unset"}


def span_json(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as plain JSON: name, ids, times (ns since the epoch), status,
    attributes, events and links."""
    context = span.get_span_context()
    assert context is not None
    parent = span.parent
    return {
        "name": span.name,
        "trace_id": format_trace_id(context.trace_id),
        "span_id": format_span_id(context.span_id),
        "parent_span_id": format_span_id(parent.span_id) if parent is not None else None,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": _STATUS[span.status.status_code],
        "status_message": span.status.description or "",
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": e.name, "time_ns": e.timestamp, "attributes": dict(e.attributes or {})}
            for e in span.events
        ],
        "links": [
            {
                "trace_id": format_trace_id(link.context.trace_id),
                "span_id": format_span_id(link.context.span_id),
                "attributes": dict(link.attributes or {}),
            }
            for link in span.links
        ],
    }


class SpanStoreExporter(SpanExporter):
    """Publishes a job's spans to its team's spans stream, over the NATS connection `nc` whose
    event loop is `loop` (the export runs in the batch processor's thread)."""

    def __init__(self, nc: Any, loop: asyncio.AbstractEventLoop, service: str = ""):
        self.nc = nc
        self.js = nc.jetstream()
        self.loop = loop
        self.service = service

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        by_job: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for span in spans:
            attributes = span.attributes or {}
            team, job = attributes.get("gm.team"), attributes.get("gm.job")
            if isinstance(team, str) and isinstance(job, str) and team and job:
                by_job.setdefault((team, job), []).append(span_json(span))
        if not by_job or self.loop.is_closed():
            return SpanExportResult.SUCCESS
        messages = [
            (span_subject(team, job, self._kind(spans)), chunk)
            for (team, job), found in by_job.items()
            for chunk in _chunks(found)
        ]
        future = asyncio.run_coroutine_threadsafe(self._publish(messages), self.loop)
        try:
            future.result(EXPORT_TIMEOUT_S)
        except Exception as exc:  # the spans are lost, the work is not: say so and go on
            future.cancel()
            log.warning("could not store %d spans: %s", len(spans), exc)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _kind(self, spans: Sequence[ReadableSpan]) -> str:
        if self.service:
            return self.service
        resource = spans[0].resource.attributes if spans else {}
        kind = resource.get("gm.service", "span")
        return str(kind) if kind else "span"

    async def _publish(self, messages: list[tuple[str, bytes]]) -> None:
        await asyncio.gather(
            *(
                self.js.publish(
                    subject,
                    data,
                    headers={"Nats-Msg-Id": "span." + hashlib.sha256(data).hexdigest()[:32]},
                )
                for subject, data in messages
            )
        )

    def shutdown(self) -> None:
        pass


def _chunks(spans: list[dict[str, Any]]) -> list[bytes]:
    chunks: list[bytes] = []
    batch: list[str] = []
    size = 0
    for span in spans:
        text = json.dumps(span, separators=(",", ":"), default=str)
        if batch and size + len(text) + len(_WRAPPER) > CHUNK_BYTES:
            chunks.append(_encode(batch))
            batch, size = [], 0
        batch.append(text)
        size += len(text) + 1
    if batch:
        chunks.append(_encode(batch))
    return chunks


_WRAPPER = '{"spans":[]}'


def _encode(batch: list[str]) -> bytes:
    return ('{"spans":[' + ",".join(batch) + "]}").encode()


async def read_spans(js: Any, team: str, job: str | None = None) -> list[dict[str, Any]]:
    """Every stored span of `job` (of all the team's jobs when None), each once (the last
    stored copy), in start order."""
    from gristmill.bus.client import replay

    prefix = team_subjects(team)[:-1]
    subject = f"{prefix}span.{job}.*" if job else f"{prefix}span.>"
    spans: dict[str, dict[str, Any]] = {}
    async for msg in replay(js, subject):
        try:
            found = json.loads(msg.data)["spans"]
        except (ValueError, KeyError, TypeError):
            log.warning("skipping an unreadable span message on %s", msg.subject)
            continue
        for span in found:
            if isinstance(span, dict) and isinstance(span.get("span_id"), str):
                spans[span["span_id"]] = span
    return sorted(spans.values(), key=lambda s: (s.get("start_ns") or 0, s["span_id"]))

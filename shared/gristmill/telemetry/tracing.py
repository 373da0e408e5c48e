"""Setting up OpenTelemetry for a gristmill process, and the trace identities of a job.

A job is one trace. Its ids are derived from the job id, so every service (and every attempt
of every service) names the same spans without asking anyone: the trace id and the root span's
id from the job, a task attempt's span id from (job, step, task, attempt). A planner that
plans a job again, or a worker that runs an attempt again after a crash, exports a span with
the same id (the span store keeps the last), and a redelivered attempt can link to the one
before it without a lookup.

`setup()` makes the process's tracer provider: its resource names the service, worker, pool
and team; spans go over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, and to the span store once a service attaches its
NATS connection (`Telemetry.attach_span_store`). `GRISTMILL_TRACING=0` turns tracing off.

Trace context crosses NATS in W3C `traceparent` / `tracestate` headers: `inject` on what a
service publishes with nats-py, `extract` on what it receives (FastStream's own handlers use its
`NatsTelemetryMiddleware`, see `gristmill.bus.broker`).
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

__all__ = [
    "Telemetry",
    "attempt_span_id",
    "enabled",
    "extract",
    "fixed_ids",
    "format_span_id",
    "format_trace_id",
    "in_job",
    "inject",
    "job_context",
    "root_span_id",
    "setup",
    "trace_id_of",
]

log = logging.getLogger("gristmill.telemetry")

# How long finished spans wait before a batch is exported (OTel's default is 5 s; a person
# looking at a job that just ended should not wait that long for its last spans).
EXPORT_DELAY_MS = 500
MAX_QUEUED_SPANS = 1 << 16
EXPORT_BATCH = 2048


def enabled() -> bool:
    """Whether this process traces (`GRISTMILL_TRACING`, on unless `0`)."""
    return os.environ.get("GRISTMILL_TRACING", "1").lower() not in ("0", "false", "no", "off")


def _digest(*parts: object, size: int) -> int:
    text = "\0".join(str(p) for p in parts).encode()
    value = int.from_bytes(hashlib.sha256(text).digest()[:size], "big")
    return value or 1  # zero is OTel's invalid id


@functools.lru_cache(maxsize=4096)
def trace_id_of(job: str) -> int:
    """The trace id of `job` (128 bits)."""
    return _digest("gm-trace", job, size=16)


@functools.lru_cache(maxsize=4096)
def root_span_id(job: str) -> int:
    """The span id of `job`'s root span, its submission."""
    return _digest("gm-root", job, size=8)


def attempt_span_id(job: str, step: int, task_id: str, attempt: int) -> int:
    """The span id of attempt `attempt` (from 1) at task `task_id` of step `step`."""
    return _digest("gm-attempt", job, step, task_id, attempt, size=8)


def format_trace_id(value: int) -> str:
    """A trace id as W3C writes it (32 hex digits)."""
    return f"{value:032x}"


def format_span_id(value: int) -> str:
    """A span id as W3C writes it (16 hex digits)."""
    return f"{value:016x}"


@functools.lru_cache(maxsize=4096)
def job_context(job: str) -> Context:
    """A context whose current span is `job`'s root: spans started in it join the job's trace
    under its submission, wherever they run."""
    root = SpanContext(
        trace_id_of(job),
        root_span_id(job),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(root), Context())


@contextmanager
def in_job(job: str) -> Iterator[None]:
    """Make `job`'s root span current (so log lines name the job's trace) inside the block."""
    token = otel_context.attach(job_context(job))
    try:
        yield
    finally:
        otel_context.detach(token)


_wanted: contextvars.ContextVar[tuple[int | None, int | None]] = contextvars.ContextVar(
    "gm_wanted_ids", default=(None, None)
)


class _DerivedIds(RandomIdGenerator):
    """Random ids, except inside `fixed_ids` (the derived ids of a job's spans)."""

    def generate_span_id(self) -> int:
        wanted = _wanted.get()[1]
        return wanted if wanted is not None else super().generate_span_id()

    def generate_trace_id(self) -> int:
        wanted = _wanted.get()[0]
        return wanted if wanted is not None else super().generate_trace_id()


@contextmanager
def fixed_ids(trace_id: int | None = None, span_id: int | None = None) -> Iterator[None]:
    """Give the span started inside this block these ids (the trace id only matters for a
    span without a parent)."""
    token = _wanted.set((trace_id, span_id))
    try:
        yield
    finally:
        _wanted.reset(token)


def inject(headers: dict[str, str], context: Context | None = None) -> dict[str, str]:
    """Add `context`'s (default: the current) W3C trace headers to `headers`; returns them."""
    propagate.inject(headers, context=context)
    return headers


def extract(headers: Mapping[str, str] | None) -> Context:
    """The trace context W3C headers carry (an empty context when they carry none)."""
    return propagate.extract(dict(headers or {}))


class Telemetry:
    """A process's tracing: its `tracer`, and where its spans go."""

    def __init__(self, service: str, provider: TracerProvider | None):
        self.service = service
        self.provider = provider
        self.tracer: trace.Tracer = (
            provider.get_tracer("gristmill") if provider is not None else trace.NoOpTracer()
        )
        self._store_attached = False

    @property
    def enabled(self) -> bool:
        """Whether spans are recorded at all."""
        return self.provider is not None

    def attach_span_store(self, nc: Any, loop: Any) -> None:
        """Also export to the span store, over the NATS connection `nc` (whose event loop is
        `loop`); once per process."""
        from gristmill.telemetry.spanstore import SpanStoreExporter

        if self.provider is None or self._store_attached:
            return
        self.provider.add_span_processor(_batches(SpanStoreExporter(nc, loop)))
        self._store_attached = True

    def flush(self, timeout_ms: int = 10_000) -> bool:
        """Export every finished span now (not from the event loop the span store uses)."""
        return self.provider.force_flush(timeout_ms) if self.provider is not None else True

    def shutdown(self) -> None:
        """Flush and stop the exporters."""
        if self.provider is not None:
            self.provider.shutdown()


def setup(
    service: str,
    *,
    worker: str = "",
    pool: str = "",
    teams: tuple[str, ...] = (),
    force: bool | None = None,
) -> Telemetry:
    """The tracing of one gristmill process (`service`: planner, coordinator, worker, client).
    `force` overrides `GRISTMILL_TRACING`."""
    if not (enabled() if force is None else force):
        return Telemetry(service, None)
    attributes = {
        "service.name": f"gristmill-{service}",
        "gm.service": service,
        "gm.team": ",".join(teams),
    }
    if worker:
        attributes["gm.worker"] = worker
        attributes["service.instance.id"] = worker
    if pool:
        attributes["gm.pool"] = pool
    provider = TracerProvider(resource=Resource.create(attributes), id_generator=_DerivedIds())
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # The exporter reads the endpoint, headers and timeout from the standard variables.
        provider.add_span_processor(_batches(OTLPSpanExporter()))
        log.info("%s exports spans over OTLP/HTTP", service)
    return Telemetry(service, provider)


def _batches(exporter: Any) -> BatchSpanProcessor:
    """A batch processor for `exporter`: OTel's `OTEL_BSP_*` variables where set, else a short
    delay and room for a fan-out's burst of spans (OTel's default queue, 2,048, would drop
    spans of a job that finishes thousands of tasks a second)."""
    options: dict[str, int] = {}
    for variable, name, value in (
        ("OTEL_BSP_SCHEDULE_DELAY", "schedule_delay_millis", EXPORT_DELAY_MS),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "max_queue_size", MAX_QUEUED_SPANS),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "max_export_batch_size", EXPORT_BATCH),
    ):
        if variable not in os.environ:
            options[name] = value
    return BatchSpanProcessor(exporter, **options)  # type: ignore[arg-type]


class TraceLogFilter(logging.Filter):
    """Adds ` trace=<trace id>` (`%(trace)s`) to a log record made inside a span, so every
    line about a job's task names the job's trace."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        record.trace = f" trace={format_trace_id(context.trace_id)}" if context.is_valid else ""
        return True


def configure_logging(level: int = logging.INFO) -> None:
    """A service's log format: time, logger, the trace of the task at hand, message."""
    handler = logging.StreamHandler()
    handler.addFilter(TraceLogFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s%(trace)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])

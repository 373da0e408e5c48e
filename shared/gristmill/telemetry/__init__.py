"""Traces of jobs: OpenTelemetry set up once per process, trace context over NATS headers, the
embedded span store, and the waterfall `gristmill trace` prints (see `tracing`, `spanstore`,
`view`)."""

from gristmill.telemetry.tracing import (
    Telemetry,
    TraceLogFilter,
    attempt_span_id,
    configure_logging,
    enabled,
    extract,
    fixed_ids,
    format_span_id,
    format_trace_id,
    in_job,
    inject,
    job_context,
    root_span_id,
    setup,
    trace_id_of,
)

__all__ = [
    "Telemetry",
    "TraceLogFilter",
    "attempt_span_id",
    "configure_logging",
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

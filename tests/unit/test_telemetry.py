"""gristmill.telemetry: derived trace ids, W3C context, the span store's JSON and batching, and
the waterfall `gristmill trace` prints. No servers: a fake NATS connection and an in-memory
exporter stand in for them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, Status, StatusCode, TraceFlags

from gristmill.telemetry import (
    Telemetry,
    TraceLogFilter,
    attempt_span_id,
    enabled,
    extract,
    fixed_ids,
    format_span_id,
    format_trace_id,
    inject,
    job_context,
    root_span_id,
    setup,
    spanstore,
    trace_id_of,
)
from gristmill.telemetry.spanstore import SpanStoreExporter, span_json
from gristmill.telemetry.view import critical_path, for_task, trace_document, waterfall


def _sha(text: str, size: int) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:size], "big")


@pytest.fixture
def telemetry(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Telemetry, InMemorySpanExporter]]:
    """A real SDK provider (no OTLP), its finished spans kept in memory."""
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    telemetry = setup("test", force=True)
    assert telemetry.provider is not None
    exporter = InMemorySpanExporter()
    telemetry.provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield telemetry, exporter
    telemetry.shutdown()


# -- derived ids -------------------------------------------------------------------------------


def test_trace_id_is_the_first_16_bytes_of_a_sha256_of_the_job():
    expected = int.from_bytes(hashlib.sha256(b"gm-trace\0JOB").digest()[:16], "big")
    assert trace_id_of("JOB") == expected
    assert format_trace_id(trace_id_of("JOB")) == "a3df881e7b746b599e0d4218ccf36594"


def test_root_and_attempt_span_ids_are_8_bytes_of_a_sha256_of_their_parts():
    assert root_span_id("JOB") == _sha("gm-root\0JOB", 8)
    assert attempt_span_id("JOB", 2, "t1", 3) == _sha("gm-attempt\0JOB\0002\0t1\0003", 8)
    assert format_span_id(root_span_id("JOB")) == "0519c9d6490651dd"
    assert format_span_id(attempt_span_id("JOB", 2, "t1", 3)) == "6e666920340d2b06"


def test_derived_ids_are_the_same_every_time_and_differ_per_input():
    assert (trace_id_of("j1"), root_span_id("j1")) == (trace_id_of("j1"), root_span_id("j1"))
    assert trace_id_of("j1") != trace_id_of("j2")
    assert root_span_id("j1") != root_span_id("j2")
    attempts = {
        attempt_span_id("j1", 1, "t1", 1),
        attempt_span_id("j2", 1, "t1", 1),
        attempt_span_id("j1", 2, "t1", 1),
        attempt_span_id("j1", 1, "t2", 1),
        attempt_span_id("j1", 1, "t1", 2),
    }
    assert len(attempts) == 5
    assert attempt_span_id("j1", 1, "t1", 1) == attempt_span_id("j1", 1, "t1", 1)


def test_ids_are_written_as_w3c_hex():
    assert format_trace_id(255) == "000000000000000000000000000000ff"
    assert format_span_id(255) == "00000000000000ff"


# -- spans with derived ids ----------------------------------------------------------------------


def test_a_span_started_in_fixed_ids_gets_those_ids(telemetry):
    tracer = telemetry[0].tracer
    with fixed_ids(trace_id_of("j1"), root_span_id("j1")):
        span = tracer.start_span("submit")
    span.end()
    context = span.get_span_context()
    assert (context.trace_id, context.span_id) == (trace_id_of("j1"), root_span_id("j1"))
    assert span.parent is None


def test_a_span_started_after_fixed_ids_gets_random_ids(telemetry):
    tracer = telemetry[0].tracer
    with fixed_ids(trace_id_of("j1"), root_span_id("j1")):
        pass
    span = tracer.start_span("later")
    context = span.get_span_context()
    assert context.is_valid
    assert (context.trace_id, context.span_id) != (trace_id_of("j1"), root_span_id("j1"))


def test_a_span_in_job_context_joins_the_job_trace_under_its_root(telemetry):
    tracer = telemetry[0].tracer
    with fixed_ids(span_id=attempt_span_id("j1", 1, "t1", 1)):
        span = tracer.start_span("attempt", context=job_context("j1"))
    span.end()
    context = span.get_span_context()
    assert (context.trace_id, context.span_id) == (
        trace_id_of("j1"),
        attempt_span_id("j1", 1, "t1", 1),
    )
    assert span.parent is not None
    assert (span.parent.trace_id, span.parent.span_id, span.parent.is_remote) == (
        trace_id_of("j1"),
        root_span_id("j1"),
        True,
    )


def test_inject_writes_the_job_context_as_a_traceparent_header():
    headers = {"Nats-Msg-Id": "m1"}
    returned = inject(headers, job_context("JOB"))
    assert returned is headers
    assert headers == {
        "Nats-Msg-Id": "m1",
        "traceparent": "00-a3df881e7b746b599e0d4218ccf36594-0519c9d6490651dd-01",
    }


def test_extract_reads_back_what_inject_wrote():
    context = trace.get_current_span(extract(inject({}, job_context("j1")))).get_span_context()
    assert (context.trace_id, context.span_id, context.is_remote, context.trace_flags.sampled) == (
        trace_id_of("j1"),
        root_span_id("j1"),
        True,
        True,
    )


def test_inject_defaults_to_the_current_span(telemetry):
    tracer = telemetry[0].tracer
    with tracer.start_as_current_span("publish") as span:
        headers = inject({})
    context = span.get_span_context()
    assert headers == {
        "traceparent": f"00-{format_trace_id(context.trace_id)}-{format_span_id(context.span_id)}-{context.trace_flags:02x}"
    }


@pytest.mark.parametrize("headers", [None, {}, {"Nats-Msg-Id": "m1"}])
def test_extract_without_a_traceparent_gives_no_span(headers):
    assert not trace.get_current_span(extract(headers)).get_span_context().is_valid


# -- switching tracing off -----------------------------------------------------------------------


def test_setup_not_forced_records_nothing():
    telemetry = setup("test", force=False)
    assert (telemetry.enabled, telemetry.provider) == (False, None)
    assert isinstance(telemetry.tracer, trace.NoOpTracer)
    assert not telemetry.tracer.start_span("x").is_recording()
    assert telemetry.flush() is True


@pytest.mark.parametrize("value", ["0", "false", "OFF", "no"])
def test_gristmill_tracing_off_turns_tracing_off(monkeypatch, value):
    monkeypatch.setenv("GRISTMILL_TRACING", value)
    assert enabled() is False
    assert setup("test").enabled is False


@pytest.mark.parametrize("value", ["1", "yes", None])
def test_tracing_is_on_unless_turned_off(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("GRISTMILL_TRACING", raising=False)
    else:
        monkeypatch.setenv("GRISTMILL_TRACING", value)
    assert enabled() is True


def test_setup_names_the_service_worker_pool_and_teams(monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    made = setup("worker", worker="w1", pool="gpu", teams=("web", "code"), force=True)
    assert made.provider is not None
    attributes = dict(made.provider.resource.attributes)
    assert {k: v for k, v in attributes.items() if not k.startswith("telemetry.")} == {
        "service.name": "gristmill-worker",
        "service.instance.id": "w1",
        "gm.service": "worker",
        "gm.team": "web,code",
        "gm.worker": "w1",
        "gm.pool": "gpu",
    }
    made.shutdown()


# -- logs ----------------------------------------------------------------------------------------


def _record() -> logging.LogRecord:
    return logging.LogRecord("gristmill", logging.INFO, __file__, 1, "hello", None, None)


def test_trace_log_filter_names_the_trace_inside_a_span(telemetry):
    tracer = telemetry[0].tracer
    record = _record()
    with fixed_ids(trace_id_of("JOB")), tracer.start_as_current_span("work"):
        assert TraceLogFilter().filter(record) is True
    assert record.trace == " trace=a3df881e7b746b599e0d4218ccf36594"


def test_trace_log_filter_adds_nothing_outside_a_span():
    record = _record()
    assert TraceLogFilter().filter(record) is True
    assert record.trace == ""


# -- the span store: JSON ------------------------------------------------------------------------


def _remote(job: str, span_id: int) -> SpanContext:
    return SpanContext(
        trace_id_of(job), span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )


def test_span_json_of_a_failed_attempt(telemetry):
    tracer, exporter = telemetry[0].tracer, telemetry[1]
    with fixed_ids(span_id=attempt_span_id("j1", 1, "t1", 2)):
        span = tracer.start_span(
            "attempt",
            context=job_context("j1"),
            attributes={"gm.job": "j1", "gm.attempt": 2},
            links=[
                Link(
                    _remote("j1", attempt_span_id("j1", 1, "t1", 1)),
                    {"gm.link": "previous_attempt"},
                )
            ],
            start_time=1_000,
        )
    span.add_event("exception", {"exception.type": "ValueError"}, timestamp=1_500)
    span.set_status(Status(StatusCode.ERROR, "ValueError: boom"))
    span.end(end_time=2_000)
    [finished] = exporter.get_finished_spans()
    assert span_json(finished) == {
        "name": "attempt",
        "trace_id": format_trace_id(trace_id_of("j1")),
        "span_id": format_span_id(attempt_span_id("j1", 1, "t1", 2)),
        "parent_span_id": format_span_id(root_span_id("j1")),
        "start_ns": 1_000,
        "end_ns": 2_000,
        "status": "error",
        "status_message": "ValueError: boom",
        "attributes": {"gm.job": "j1", "gm.attempt": 2},
        "events": [
            {"name": "exception", "time_ns": 1_500, "attributes": {"exception.type": "ValueError"}}
        ],
        "links": [
            {
                "trace_id": format_trace_id(trace_id_of("j1")),
                "span_id": format_span_id(attempt_span_id("j1", 1, "t1", 1)),
                "attributes": {"gm.link": "previous_attempt"},
            }
        ],
    }


def test_span_json_of_a_root_span_has_no_parent_and_unset_status(telemetry):
    tracer, exporter = telemetry[0].tracer, telemetry[1]
    with fixed_ids(trace_id_of("j1"), root_span_id("j1")):
        tracer.start_span("submit", start_time=5).end(end_time=7)
    [finished] = exporter.get_finished_spans()
    assert span_json(finished) == {
        "name": "submit",
        "trace_id": format_trace_id(trace_id_of("j1")),
        "span_id": format_span_id(root_span_id("j1")),
        "parent_span_id": None,
        "start_ns": 5,
        "end_ns": 7,
        "status": "unset",
        "status_message": "",
        "attributes": {},
        "events": [],
        "links": [],
    }


# -- the span store: chunks ----------------------------------------------------------------------


def _fake_spans(count: int, pad: int) -> list[dict[str, Any]]:
    return [{"span_id": f"{i:016x}", "pad": "x" * (pad + i % 7)} for i in range(count)]


def test_chunks_of_a_few_spans_are_one_message():
    assert spanstore._chunks([{"a": 1}, {"b": [2, 3]}]) == [b'{"spans":[{"a":1},{"b":[2,3]}]}']


def test_chunks_split_a_large_list_below_chunk_bytes_and_keep_every_span():
    spans = _fake_spans(400, 2_000)  # about 800 KB
    chunks = spanstore._chunks(spans)
    assert len(chunks) == 4
    assert max(len(c) for c in chunks) <= spanstore.CHUNK_BYTES
    assert [s for c in chunks for s in json.loads(c)["spans"]] == spans


def test_chunks_stay_within_chunk_bytes_at_the_boundary(monkeypatch):
    # Two spans whose texts and separating comma fill CHUNK_BYTES exactly: with the envelope
    # '{"spans":[' ... ']}' (12 bytes) they no longer fit in one message.
    monkeypatch.setattr(spanstore, "CHUNK_BYTES", 100)
    first, second = {"p": "x" * 41}, {"p": "y" * 42}  # 49 and 50 characters of JSON
    chunks = spanstore._chunks([first, second])
    assert [len(c) for c in chunks] == [61, 62]


# -- the span store: export ----------------------------------------------------------------------


class FakeJetStream:
    """Records what is published; fails when told to."""

    def __init__(self, error: Exception | None = None):
        self.published: list[tuple[str, bytes, dict[str, str]]] = []
        self.error = error

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        if self.error is not None:
            raise self.error
        self.published.append((subject, data, headers))


class FakeNats:
    def __init__(self, js: FakeJetStream):
        self.js = js

    def jetstream(self) -> FakeJetStream:
        return self.js


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own, as a service's loop runs beside the
    batch processor's export thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


def _job_spans(telemetry, names_and_jobs: list[tuple[str, dict[str, str]]]) -> list[Any]:
    tracer, exporter = telemetry[0].tracer, telemetry[1]
    for name, attributes in names_and_jobs:
        tracer.start_span(name, attributes=attributes).end()
    return list(exporter.get_finished_spans())


def _message(spans: list[Any]) -> bytes:
    return json.dumps({"spans": [span_json(s) for s in spans]}, separators=(",", ":")).encode()


def _msg_id(data: bytes) -> dict[str, str]:
    return {"Nats-Msg-Id": "span." + hashlib.sha256(data).hexdigest()[:32]}


def test_export_publishes_each_jobs_spans_to_its_subject(telemetry, loop):
    spans = _job_spans(
        telemetry,
        [
            ("a", {"gm.team": "web", "gm.job": "j1"}),
            ("b", {"gm.team": "web", "gm.job": "j2"}),
            ("c", {"gm.team": "web", "gm.job": "j1"}),
            ("no job", {"gm.team": "web"}),
        ],
    )
    js = FakeJetStream()
    result = SpanStoreExporter(FakeNats(js), loop).export(spans)
    j1, j2 = _message([spans[0], spans[2]]), _message([spans[1]])
    assert result is SpanExportResult.SUCCESS
    assert sorted(js.published) == [
        ("gm.web.span.j1.test", j1, _msg_id(j1)),
        ("gm.web.span.j2.test", j2, _msg_id(j2)),
    ]


def test_export_names_the_service_it_was_given(telemetry, loop):
    spans = _job_spans(telemetry, [("a", {"gm.team": "web", "gm.job": "j1"})])
    js = FakeJetStream()
    SpanStoreExporter(FakeNats(js), loop, service="worker").export(spans)
    assert [subject for subject, _, _ in js.published] == ["gm.web.span.j1.worker"]


def test_export_sends_one_message_per_chunk(telemetry, loop, monkeypatch):
    monkeypatch.setattr(spanstore, "CHUNK_BYTES", 1_000)
    spans = _job_spans(telemetry, [(f"s{i}", {"gm.team": "web", "gm.job": "j1"}) for i in range(6)])
    js = FakeJetStream()
    SpanStoreExporter(FakeNats(js), loop).export(spans)
    stored = [json.loads(data)["spans"] for _, data, _ in js.published]
    assert len(stored) > 1
    assert sorted(s["name"] for chunk in stored for s in chunk) == [
        "s0",
        "s1",
        "s2",
        "s3",
        "s4",
        "s5",
    ]


def test_export_of_spans_without_a_job_publishes_nothing(telemetry, loop):
    spans = _job_spans(telemetry, [("a", {"gm.team": "web"}), ("b", {"gm.job": "j1"}), ("c", {})])
    js = FakeJetStream()
    assert SpanStoreExporter(FakeNats(js), loop).export(spans) is SpanExportResult.SUCCESS
    assert js.published == []


def test_export_that_cannot_publish_fails_and_says_so(telemetry, loop, caplog):
    spans = _job_spans(telemetry, [("a", {"gm.team": "web", "gm.job": "j1"})])
    exporter = SpanStoreExporter(FakeNats(FakeJetStream(ConnectionError("nats down"))), loop)
    with caplog.at_level(logging.WARNING, "gristmill.telemetry"):
        assert exporter.export(spans) is SpanExportResult.FAILURE
    assert caplog.messages == ["could not store 1 spans: nats down"]


def test_export_after_the_loop_closed_drops_the_spans_quietly(telemetry):
    spans = _job_spans(telemetry, [("a", {"gm.team": "web", "gm.job": "j1"})])
    closed = asyncio.new_event_loop()
    closed.close()
    js = FakeJetStream()
    assert SpanStoreExporter(FakeNats(js), closed).export(spans) is SpanExportResult.SUCCESS
    assert js.published == []


# -- the view ------------------------------------------------------------------------------------

S = 1_000_000_000  # ns per second


def _span(
    span_id: str, name: str, start: float, end: float, parent: str | None = "a", **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "span_id": span_id * 16,
        "parent_span_id": parent and parent * 16,
        "start_ns": int(start * S),
        "end_ns": int(end * S),
        "status": "ok",
        "attributes": {},
        "events": [],
        "links": [],
        **extra,
    }


def _attempt(
    task: str, attempt: int, step: int, step_name: str, worker: str | None
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gm.kind": "attempt",
        "gm.task": task,
        "gm.attempt": attempt,
        "gm.step": step,
        "gm.step_name": step_name,
    }
    if worker is not None:
        attributes["gm.worker"] = worker
    return attributes


def _links(kind: str, span_id: str) -> list[dict[str, Any]]:
    return [{"trace_id": "0" * 32, "span_id": span_id * 16, "attributes": {"gm.link": kind}}]


# A job: submitted (a), planned (b); task t1 failed once (c) and ran again (d); t3 (f) ran
# beside it; t2 (e), made by t1, ended last, and wrote what it made (g).
SPANS = [
    _span("a", "submit", 0, 4, parent=None, attributes={"gm.kind": "job"}),
    _span("b", "plan", 0, 1, attributes={"gm.kind": "plan"}),
    _span(
        "c",
        "attempt",
        1,
        2,
        attributes=_attempt("t1", 1, 1, "read", "w1"),
        status="error",
        events=[
            {
                "name": "exception",
                "time_ns": 2 * S,
                "attributes": {"exception.type": "ValueError", "exception.message": "boom"},
            }
        ],
    ),
    _span("f", "attempt", 1, 1.5, attributes=_attempt("t3", 1, 1, "read", None)),
    _span(
        "d",
        "attempt",
        2,
        3,
        attributes=_attempt("t1", 2, 1, "read", "w2"),
        links=_links("previous_attempt", "c"),
    ),
    _span(
        "e",
        "attempt",
        3,
        4,
        attributes=_attempt("t2", 1, 2, "jsonl_writer", "w2"),
        links=_links("parent_task", "d"),
    ),
    _span("g", "store.write", 3.5, 4, parent="e"),
]


def test_critical_path_runs_back_from_the_last_attempt_through_retries_and_parents():
    assert critical_path(SPANS) == {"a" * 16, "b" * 16, "c" * 16, "d" * 16, "e" * 16}


def test_critical_path_without_attempts_is_the_job_and_its_plan():
    assert critical_path(SPANS[:2]) == {"a" * 16, "b" * 16}


def test_for_task_keeps_its_attempts_and_what_is_under_them():
    assert [s["span_id"][0] for s in for_task(SPANS, "t1")] == ["c", "d"]
    assert [s["span_id"][0] for s in for_task(SPANS, "t2")] == ["e", "g"]
    assert for_task(SPANS, "t9") == []


def test_trace_document_marks_the_critical_spans():
    document = trace_document("ab" * 16, SPANS)
    assert document["trace_id"] == "ab" * 16
    assert [(s["span_id"][0], s["critical"]) for s in document["spans"]] == [
        ("a", True),
        ("b", True),
        ("c", True),
        ("f", False),
        ("d", True),
        ("e", True),
        ("g", False),
    ]
    assert [{k: v for k, v in s.items() if k != "critical"} for s in document["spans"]] == SPANS


def test_waterfall_draws_the_span_tree_on_one_time_axis():
    assert waterfall(trace_document("ab" * 16, SPANS), width=8).splitlines() == [
        "trace abababababababababababababababab",
        "* submit                                 |████████|    4.000s",
        "*   plan                                 |██      |    1.000s",
        "*   task t1 #1 step 1 read on w1         |  ██    |    1.000s ERROR",
        "      ! ValueError: boom",
        "    task t3 #1 step 1 read on ?          |  █     |    0.500s",
        "*   task t1 #2 step 1 read on w2         |    ██  |    1.000s",
        "*   task t2 #1 step 2 jsonl_writer on w2 |      ██|    1.000s",
        "      store.write                        |       █|    0.500s",
        "* critical path; 7 spans over 4.000 s",
    ]


def test_waterfall_shortens_long_task_ids_and_step_names():
    span = _span(
        "a",
        "attempt",
        0,
        1,
        parent=None,
        attributes=_attempt("t" * 20, 1, 3, "read_jsonl+word_count_filter", "w1"),
    )
    assert (
        waterfall({"trace_id": "ab" * 16, "spans": [span]}, width=4).splitlines()[1]
        == "  task tttttttttttttttt #1 step 3 read_jsonl+word_count... on w1 |████|    1.000s"
    )


def test_waterfall_of_no_spans_says_so():
    assert (
        waterfall({"trace_id": "ab" * 16, "spans": []})
        == "trace abababababababababababababababab\n(no spans stored yet)"
    )

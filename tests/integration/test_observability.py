"""Traces, `why`, metrics and the HTTP API of a running service: a real nats-server, real Ray,
the services as processes, and a small OTLP/HTTP receiver the test runs (the service exports
to it through the standard `OTEL_EXPORTER_OTLP_ENDPOINT`)."""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from gristmill import Pipeline
from gristmill.cli import main
from gristmill.embedded import EmbeddedService
from gristmill.executors.service import ServiceExecutor
from gristmill.stages.text.filters import (
    ScoreFilter,
    UrlsFilter,
    WordCountFilter,
)
from gristmill.stages.text.filters.repetition import RepeatedLinesFilter
from gristmill.stages.text.io import JsonlReader, JsonlWriter
from gristmill.telemetry import attempt_span_id, format_span_id, root_span_id
from gristmill.workflows import ExactDeduplicationWorkflow

from service_helpers import client_call, doc_ids, service_under, until
from service_stages import PoisonOn, SplitRows

pytestmark = pytest.mark.integration


class Receiver:
    """An OTLP/HTTP traces endpoint on loopback that keeps the span ids it is sent."""

    def __init__(self) -> None:
        self.spans: dict[str, str] = {}  # span id -> name
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with receiver.lock:
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            for span in scope.spans:
                                receiver.spans[span.span_id.hex()] = span.name
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()
                self.wfile.write(b"")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def received(self) -> dict[str, str]:
        with self.lock:
            return dict(self.spans)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("observed")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.server.shutdown()


@pytest.fixture(scope="module")
def service(base: Path, receiver: Receiver) -> Iterator[EmbeddedService]:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}
    with service_under(base, workers=2, slots=2, child_env=env) as running:
        yield running


def get(service: EmbeddedService, path: str) -> Any:
    """An HTTP GET with the first team's bearer token."""
    from gristmill.credentials import read_credentials

    token = read_credentials(service.credentials()).http_token
    request = urllib.request.Request(
        service.http_url + path, headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        body = answer.read()
    return json.loads(body) if path.startswith("/api") else body.decode()


def corpus(directory: Path, rows: dict[str, list[str]]) -> Path:
    directory.mkdir()
    for name, texts in rows.items():
        lines = [{"id": f"{name}-{n}", "text": t} for n, t in enumerate(texts)]
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return directory


@pytest.fixture(scope="module")
def traced_job(service: EmbeddedService, base: Path) -> tuple[str, list[dict[str, Any]]]:
    """A job whose first step fans each file out into one task per document, and whose second
    step meets one poisoned document (two attempts, then its dead letter). Its trace once every
    attempt's span is stored."""
    texts = {f"part{p}": [f"doc {p} {n}" for n in range(4)] for p in range(3)}
    texts["part1"][2] = "POISON"
    source = corpus(base / "traced-in", texts)
    pipeline = Pipeline(
        "traced",
        [
            JsonlReader(file_paths=str(source)),
            SplitRows(),
            PoisonOn("POISON"),
            JsonlWriter(path=str(base / "traced-out")),
        ],
    )
    config = {"max_deliver": 2, "retry_backoff_s": 0.05, "allow_failures": True}
    executor = ServiceExecutor(service.url, config=config)
    pipeline.run(executor)
    assert executor.state is not None
    assert executor.job is not None
    assert (executor.state.tasks_done, executor.state.tasks_failed) == (3 + 11, 1)
    assert len(doc_ids(base / "traced-out")) == 11

    def stored() -> list[dict[str, Any]] | None:
        spans = client_call(service, lambda c: c.trace(executor.job))["spans"]
        attempts = [s for s in spans if s["attributes"].get("gm.kind") == "attempt"]
        ended = {(s["attributes"]["gm.task"], s["attributes"]["gm.attempt"]) for s in attempts}
        # 3 first tasks + 12 children + the poisoned child's second attempt (at least)
        return (
            spans if len(ended) >= 16 and any(s["name"] == "dead_letter" for s in spans) else None
        )

    return executor.job, until(stored, "every attempt's span in the span store")


def test_a_job_is_one_trace_whose_spans_cover_every_attempt(
    traced_job: tuple[str, list[dict[str, Any]]],
) -> None:
    job, spans = traced_job
    by_id = {s["span_id"]: s for s in spans}
    trace_ids = {s["trace_id"] for s in spans}
    expected_trace = hashlib.sha256(f"gm-trace\0{job}".encode()).hexdigest()[:32]
    assert trace_ids == {expected_trace}

    root = format_span_id(root_span_id(job))
    [job_span] = [s for s in spans if s["parent_span_id"] is None]
    assert (job_span["span_id"], job_span["name"]) == (root, f"job {job}")
    assert sorted(s["name"] for s in spans if s["parent_span_id"] == root and s["attributes"]["gm.kind"] != "attempt") == ["plan", "publish"]  # fmt: skip
    [publish] = [s for s in spans if s["name"] == "publish" and s["parent_span_id"] == root]

    attempts = [s for s in spans if s["attributes"].get("gm.kind") == "attempt"]
    assert {s["parent_span_id"] for s in attempts} == {root}  # every attempt under the job
    for span in attempts:  # each has the id derived from what it is
        a = span["attributes"]
        derived = attempt_span_id(job, a["gm.step"], a["gm.task"], a["gm.attempt"])
        assert span["span_id"] == format_span_id(derived)
        assert a["gm.team"] == "default"
        assert a["gm.job"] == job
        assert a["gm.worker"].startswith("cpu-")
        assert a["gm.actor"]
        assert a["gm.queue_wait_s"] >= 0

    first = [s for s in attempts if s["attributes"]["gm.step"] == 1]
    children = [s for s in attempts if s["attributes"]["gm.step"] == 2]
    assert len(first) == 3
    assert all(s["status"] == "ok" for s in first)
    for span in first:  # planner -> worker: the message's traceparent named the publish span
        assert [(x["span_id"], x["attributes"]) for x in span["links"]] == [
            (publish["span_id"], {"gm.link": "published_by"})
        ]
        assert span["attributes"]["gm.items_in"] == 1  # one file
        assert span["attributes"]["gm.outputs"] == 4
        under = sorted(c["name"] for c in spans if c["parent_span_id"] == span["span_id"])
        assert [name for name in under if name != "slot"] == [
            "publish",
            "store.read",
            "store.write",
        ]
        assert span["attributes"]["gm.bytes_written"] > 0
    # each run's slot-time is one span under its first task: every task's run, counted once
    first_ids = {s["span_id"] for s in first}
    slots = [s for s in spans if s["name"] == "slot" and s["parent_span_id"] in first_ids]
    assert sum(s["attributes"]["gm.tasks"] for s in slots) == 3
    assert all(s["end_ns"] > s["start_ns"] for s in slots)

    # worker -> worker: every child's attempts link to the attempt of the task that made it
    made_by: dict[str, set[str]] = {}
    for span in children:
        [parent] = [x for x in span["links"] if x["attributes"]["gm.link"] == "parent_task"]
        assert by_id[parent["span_id"]] in first
        made_by.setdefault(parent["span_id"], set()).add(span["attributes"]["gm.task"])
    assert sorted(len(tasks) for tasks in made_by.values()) == [4, 4, 4]

    ok = {(s["attributes"]["gm.task"]) for s in children if s["status"] == "ok"}
    assert len(ok) == 11
    [poisoned] = {s["attributes"]["gm.task"] for s in children if s["status"] == "error"}
    tries = sorted(
        (s for s in children if s["attributes"]["gm.task"] == poisoned),
        key=lambda s: s["attributes"]["gm.attempt"],
    )
    assert [(s["attributes"]["gm.attempt"], s["status"]) for s in tries] == [
        (1, "error"),
        (2, "error"),
    ]
    for span in tries:  # the failing attempts carry the exception, traceback included
        [event] = span["events"]
        assert event["name"] == "exception"
        assert event["attributes"]["exception.type"] == "StageError"
        assert "ValueError: poisoned batch" in event["attributes"]["exception.message"]
        assert 'raise ValueError(f"poisoned batch' in event["attributes"]["exception.stacktrace"]
    # a redelivered attempt links to the attempt before it
    assert {"span_id": tries[0]["span_id"], "trace_id": expected_trace, "attributes": {"gm.link": "previous_attempt"}} in tries[1]["links"]  # fmt: skip
    [letter] = [s for s in spans if s["name"] == "dead_letter"]
    assert letter["parent_span_id"] == tries[1]["span_id"]

    critical = [s for s in traced_job_document(spans) if s["critical"]]
    assert {s["name"] for s in critical} >= {f"job {job}", "plan", "publish"}


def traced_job_document(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from gristmill.telemetry.view import trace_document

    return trace_document("t", spans)["spans"]


def test_the_same_spans_arrive_over_otlp(
    traced_job: tuple[str, list[dict[str, Any]]], receiver: Receiver
) -> None:
    _, spans = traced_job
    wanted = {s["span_id"]: s["name"] for s in spans}
    until(
        lambda: wanted.items() <= receiver.received().items(),
        "the job's spans at the OTLP receiver",
    )
    received = receiver.received()
    assert {k: received[k] for k in wanted} == wanted


def test_trace_prints_a_waterfall_and_json(
    traced_job: tuple[str, list[dict[str, Any]]],
    service: EmbeddedService,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
) -> None:
    job, spans = traced_job
    monkeypatch.setenv("GRISTMILL_NATS_URL", service.url)
    assert main(["trace", job]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith("trace ")
    assert lines[1].startswith(f"* job {job} ")
    assert sum("ValueError: poisoned batch" in line for line in lines) == 2
    assert lines[-1].startswith("* critical path; ")

    assert main(["trace", job, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document) == {"trace_id", "spans"}
    assert {s["span_id"] for s in document["spans"]} >= {s["span_id"] for s in spans}
    assert set(document["spans"][0]) >= {"name", "span_id", "parent_span_id", "start_ns", "end_ns", "status", "attributes", "events", "critical"}  # fmt: skip

    task = next(s["attributes"]["gm.task"] for s in spans if s["status"] == "error")
    assert main(["trace", task, "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    attempts = [s for s in one["spans"] if s["attributes"].get("gm.kind") == "attempt"]
    assert {s["attributes"]["gm.task"] for s in attempts} == {task}
    assert len(attempts) == 2
    ids = {s["span_id"] for s in attempts}
    assert all(s["parent_span_id"] in ids for s in one["spans"] if s not in attempts)
    assert get(service, f"/api/jobs/{job}/trace?task={task}")["spans"] == [
        {k: v for k, v in s.items() if k != "critical"} | {"critical": s["critical"]}
        for s in one["spans"]
    ]


WORDS = "the quick brown fox jumps over the lazy dog while the cat sleeps"


@pytest.fixture(scope="module")
def why_job(service: EmbeddedService, base: Path) -> str:
    """A job with three filters and an exact-dedup step over a corpus made for them."""
    rows = {
        "a": [
            WORDS,  # a-0 kept
            "too short",  # a-1 word_count
            "see https://www.example.com/some/long/path/index.html and "
            "https://example.org/another/page.html " + WORDS,  # a-2 urls_ratio
            "\n".join([WORDS] * 5),  # a-3 repeated_lines
            WORDS,  # a-4 exact duplicate of a-0
        ]
    }
    source = corpus(base / "why-in", rows)
    dedup = ExactDeduplicationWorkflow(
        [JsonlReader(file_paths=str(source))], str(base / "dups"), str(base / "dedup-cache")
    )
    executor = ServiceExecutor(service.url)
    assert dedup.run(executor) == 1
    pipeline = Pipeline(
        "why",
        [
            JsonlReader(file_paths=str(source)),
            ScoreFilter(WordCountFilter(min_words=5)),
            ScoreFilter(UrlsFilter(max_url_to_text_ratio=0.2)),
            ScoreFilter(RepeatedLinesFilter(max_repeated_line_fraction=0.7)),
            dedup.removal_stage(),
            JsonlWriter(path=str(base / "why-out")),
        ],
    )
    pipeline.run(executor)
    assert executor.job is not None
    assert doc_ids(base / "why-out") == ["a-0"]
    return executor.job


def test_why_answers_through_the_service(
    why_job: str, service: EmbeddedService, base: Path
) -> None:
    def why(doc: str) -> dict[str, Any]:
        return client_call(service, lambda c: c.why(why_job, doc))

    text = dict(enumerate(json.loads(line)["text"] for line in (base / "why-in" / "a.jsonl").read_text().splitlines()))  # fmt: skip
    kept = why("a-0")
    assert kept["fate"] == "kept"
    [out] = list((base / "why-out").glob("*.jsonl"))
    assert kept["file"] == str(out)

    for doc, definition, stage in (
        ("a-1", WordCountFilter(min_words=5), "word_count"),
        ("a-2", UrlsFilter(max_url_to_text_ratio=0.2), "urls_ratio"),
        ("a-3", RepeatedLinesFilter(max_repeated_line_fraction=0.7), "repeated_lines"),
    ):
        fate = why(doc)
        score = definition.score_document(text[int(doc[2:])])
        assert not definition.keep_document(score)
        assert (fate["fate"], fate["stage"], fate["score"]) == (
            "dropped",
            stage,
            pytest.approx(score),
        )
        assert fate["job"] == why_job
        assert len(fate["trace_id"]) == 32
        assert fate["task"]

    dup = why("a-4")
    assert (dup["fate"], dup["duplicate_of"], dup["reason"]) == ("dropped", "a-0", "exact duplicate of a-0")  # fmt: skip

    assert get(service, f"/api/why/a-3?job={why_job}")["stage"] == "repeated_lines"
    with pytest.raises(Exception, match="has no record of document 'nope'"):
        why("nope")


def test_why_on_the_command_line(
    why_job: str, service: EmbeddedService, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("GRISTMILL_NATS_URL", service.url)
    assert main(["why", "a-1", "--job", why_job]) == 0
    line = capsys.readouterr().out
    assert line.startswith(
        "a-1: dropped by stage 'word_count': word_count rejected it (score 2, threshold "
    )
    assert main(["why", "nope", "--job", why_job]) == 2
    assert capsys.readouterr().err == (
        f"gristmill: error: job '{why_job}' has no record of document 'nope'\n"
    )


def test_metrics_agree_with_status(
    traced_job: tuple[str, list[dict[str, Any]]], why_job: str, service: EmbeddedService
) -> None:
    families = {f.name: f for f in text_string_to_metric_families(get(service, "/metrics"))}
    states = client_call(service, lambda c: c.status())
    assert {traced_job[0], why_job} <= {s.job for s in states}

    def sample(family: str, job: str, **labels: str) -> float:
        [value] = [
            s.value
            for s in families[family].samples
            if s.labels.get("job") == job
            and all(s.labels.get(k) == v for k, v in labels.items())
            and not s.name.endswith("_created")
        ]
        return float(value)

    for state in states:
        for index, step in enumerate(state.steps):
            at = {"step": str(index), "step_name": step.name, "team": "default"}
            tasks = "gristmill_step_tasks"
            documents = "gristmill_step_documents"
            assert sample(tasks, state.job, state="done", **at) == step.done
            assert sample(tasks, state.job, state="failed", **at) == step.failed
            assert sample(documents, state.job, kind="out", **at) == step.items_out
            assert sample(documents, state.job, kind="dropped", **at) == step.items_dropped
            for stage, count in step.dropped_by.items():
                at_stage = {**at, "stage": stage}
                assert sample("gristmill_step_dropped_documents", state.job, **at_stage) == count
        assert sample("gristmill_dead_letters", state.job) == state.tasks_failed
    jobs = {s.labels["state"]: s.value for s in families["gristmill_jobs"].samples}
    assert jobs["completed_with_failures"] == sum(
        s.state == "completed_with_failures" for s in states
    )
    workers = {s.labels["pool"]: s.value for s in families["gristmill_workers"].samples}
    assert workers["cpu"] == 2
    api = get(service, "/api/jobs")["jobs"]
    assert [j["job"] for j in api] == [s.job for s in states]
    detail = get(service, f"/api/jobs/{traced_job[0]}")
    [failure] = detail["failures"]
    assert "ValueError: poisoned batch" in failure["error"]
    assert failure["attempts"] == 2
    assert [w["worker"] for w in get(service, "/api/workers")["workers"]] == ["cpu-0", "cpu-1"]

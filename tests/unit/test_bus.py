"""The bus contract: subjects build and parse one way; messages are strict and versioned."""

from __future__ import annotations

import json
import re

import pytest

from gristmill.bus import (
    ApiReply,
    DataRef,
    DeadLetter,
    JobSpec,
    JobStarted,
    JobState,
    MessageError,
    StatusQuery,
    StepInfo,
    TaskDone,
    TaskFailed,
    TaskManifest,
    api_subject,
    event_subject,
    parse_subject,
    task_subject,
    team_subjects,
)
from gristmill.bus.subjects import (
    Subject,
    SubjectError,
    dlq_filter,
    dlq_subject,
    event_filter,
    span_subject,
)

SHA = "a" * 64


def test_subjects_have_the_documented_shapes() -> None:
    assert task_subject("web", "job-1", "step_2") == "gm.web.task.job-1.step_2"
    assert event_subject("web", "job-1", "task_done") == "gm.web.event.job-1.task_done"
    assert api_subject("web", "submit") == "gm.web.api.submit"
    assert team_subjects("web") == "gm.web.>"


def test_subjects_parse_back_to_their_parts() -> None:
    assert parse_subject("gm.web.task.job-1.s0") == Subject("web", "task", job="job-1", step="s0")
    assert parse_subject("gm.web.event.job-1.job_state") == Subject("web", "event", job="job-1", event="job_state")  # fmt: skip
    assert parse_subject("gm.web.api.status") == Subject("web", "api", verb="status")
    assert dlq_subject("web", "job-1", "s0") == "gm.web.dlq.job-1.s0"
    assert parse_subject("gm.web.dlq.job-1.s0") == Subject("web", "dlq", job="job-1", step="s0")
    assert span_subject("web", "job-1", "attempt") == "gm.web.span.job-1.attempt"
    assert parse_subject("gm.web.span.job-1.attempt") == Subject("web", "span", job="job-1", event="attempt")  # fmt: skip
    assert event_filter("web") == "gm.web.event.*.>"
    assert dlq_filter("web", "job-1") == "gm.web.dlq.job-1.>"


@pytest.mark.parametrize("bad", ["Web", "a.b", "a*", ">", "", "has space", "-lead", "x" * 65])
def test_tokens_that_nats_would_misread_are_refused(bad: str) -> None:
    with pytest.raises(SubjectError, match=re.escape(f"team {bad!r} cannot be used in a subject")):
        task_subject(bad, "job", "s0")


@pytest.mark.parametrize(
    "bad", ["gm.web.task.job", "nats.web.api.x", "gm.web.other.x.y", "gm.web.api.a.b"]
)
def test_foreign_subjects_are_refused(bad: str) -> None:
    with pytest.raises(SubjectError, match="not a gristmill subject"):
        parse_subject(bad)


def _ref() -> DataRef:
    return DataRef(uri="file:///store/web/j/0/t.task", rows=3, bytes=120, sha256=SHA)


def test_messages_round_trip_through_json_with_their_schema_version() -> None:
    manifest = TaskManifest(job="j1", step=0, step_name="reader", task_id="t1", inputs=[_ref()])
    payload = manifest.to_json()
    assert json.loads(payload)["schema"] == 1
    assert TaskManifest.from_json(payload) == manifest
    for message in (
        TaskDone(
            job="j1",
            step=1,
            task_id="t",
            outputs=[_ref()],
            output_ids=["c1"],
            items_in=3,
            items_out=2,
            items_dropped=1,
            wall_time_s=0.5,
            attempt=1,
        ),
        TaskFailed(job="j1", step=1, task_id="t", error="ValueError: x", attempts=5),
        JobState(job="j1", state="completed_with_failures", tasks_failed=1),
        JobSpec(team="web", request_id="r1", pipeline={"name": "p", "stages": []}, output="/o"),
        JobStarted(
            job="j1",
            team="web",
            pipeline="p",
            steps=[StepInfo(name="reader", pool="cpu")],
            first_step=0,
            initial=["t1"],
            submitted_at=1.0,
        ),
        DeadLetter(
            manifest=manifest,
            failure=TaskFailed(job="j1", step=0, task_id="t1", error="E: x", attempts=2),
        ),
        ApiReply(ok=False, error="no"),
        StatusQuery(job="j1"),
    ):
        assert type(message).from_json(message.to_json()) == message


def test_another_schema_version_is_refused_naming_both() -> None:
    payload = json.loads(_ref().to_json())
    payload["schema"] = 2
    with pytest.raises(MessageError, match=r"invalid DataRef: schema: Value error, message schema 2 is not the one this gristmill speaks \(1\)"):  # fmt: skip
        DataRef.from_json(json.dumps(payload))


def test_unknown_fields_bad_checksums_and_bad_names_are_refused() -> None:
    payload = json.loads(_ref().to_json())
    with pytest.raises(
        MessageError, match=r"invalid DataRef: extra: Extra inputs are not permitted"
    ):
        DataRef.from_json(json.dumps({**payload, "extra": 1}))
    with pytest.raises(MessageError, match=r"invalid DataRef: sha256: String should match pattern"):
        DataRef.from_json(json.dumps({**payload, "sha256": "xyz"}))
    with pytest.raises(MessageError, match=r"invalid JobSpec: team: Value error, team 'Web Team' cannot be used in a subject"):  # fmt: skip
        JobSpec.from_json(json.dumps({"team": "Web Team", "request_id": "r", "pipeline": {}}))
    with pytest.raises(MessageError, match=r"invalid JobSpec: \(message\): Value error, initial has 1 tasks but initial_ids 0"):  # fmt: skip
        JobSpec.from_json(json.dumps({"team": "web", "request_id": "r", "pipeline": {}, "initial": [json.loads(_ref().to_json())]}))  # fmt: skip
    with pytest.raises(MessageError, match=r"invalid TaskManifest: \(message\): Invalid JSON"):
        TaskManifest.from_json(b"{not json")


def test_messages_are_frozen() -> None:
    ref = _ref()
    with pytest.raises(ValueError, match="frozen"):
        ref.rows = 4  # type: ignore[misc]

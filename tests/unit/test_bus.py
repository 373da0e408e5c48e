"""The bus contract: subjects build and parse one way; messages are strict and versioned."""

from __future__ import annotations

import json
import re

import pytest

from gristmill.bus import (
    MAX_GROUP,
    ApiReply,
    DataRef,
    DeadLetter,
    GcQuery,
    IdsPart,
    JobSpec,
    JobStarted,
    JobState,
    ManifestSplit,
    MessageError,
    RetryQuery,
    StatusQuery,
    StepInfo,
    TaskEntry,
    TaskFailed,
    TaskManifest,
    TaskResult,
    TaskRetried,
    TasksDone,
    WorkerState,
    api_subject,
    event_subject,
    parse_subject,
    peek,
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
    entry = TaskEntry(task_id="t1", inputs=[_ref()], parents=["p"], attempts=2)
    manifest = TaskManifest(job="j1", step=0, step_name="reader", key="t1", tasks=[entry])
    payload = manifest.to_json()
    assert json.loads(payload)["schema"] == 5
    assert TaskManifest.from_json(payload) == manifest
    result = TaskResult(
        task_id="t", output_ids=["c1"], items_in=3, items_out=2, items_dropped=1, wall_time_s=0.5
    )
    for message in (
        TasksDone(job="j1", step=1, key="t", results=[result], attempt=1, worker="cpu-0"),
        IdsPart(job="j1", step=2, owner="t", part=0, parts=3, ids=["a", "b"]),
        ManifestSplit(job="j1", step=1, key="g1", task_ids=["a", "b"]),
        TaskFailed(job="j1", step=1, task_id="t", error="ValueError: x", attempts=5),
        TaskRetried(job="j1", step=1, task_id="t"),
        JobState(job="j1", state="completed_with_failures", tasks_failed=1, retries=1),
        JobSpec(team="web", request_id="r1", pipeline={"name": "p", "stages": []}, output="/o"),
        JobStarted(
            job="j1",
            team="web",
            pipeline="p",
            steps=[StepInfo(name="reader", pool="cpu", task_timeout_s=30.0)],
            first_step=0,
            initial=["t1"],
            submitted_at=1.0,
        ),
        DeadLetter(
            manifest=manifest,
            failure=TaskFailed(job="j1", step=0, task_id="t1", error="E: x", attempts=2),
        ),
        DeadLetter(
            raw='{"schema": 4}',
            subject="gm.web.task.j1.0",
            failure=TaskFailed(job="j1", step=0, task_id="t1", error="E: x", attempts=1),
        ),
        WorkerState(worker="cpu-0", pool="cpu", slots=2, running=1, steps=["j1/1"], at=5.0),
        GcQuery(older_than_s=0),
        ApiReply(ok=False, error="no"),
        StatusQuery(job="j1"),
        RetryQuery(job="j1", step=1, task_id="t1"),
        DataRef(inline="YWJj", rows=1, bytes=3, sha256=SHA),
    ):
        assert type(message).from_json(message.to_json()) == message


def test_another_schema_version_is_refused_naming_both() -> None:
    payload = json.loads(_ref().to_json())
    payload["schema"] = 1
    with pytest.raises(MessageError, match=r"invalid DataRef: schema: Value error, message schema 1 is not the one this gristmill speaks \(5\)"):  # fmt: skip
        DataRef.from_json(json.dumps(payload))
    assert peek(json.dumps(payload)) == payload  # what it was about can still be named
    assert peek(b"{not json") == {}


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


def test_a_ref_names_a_stored_object_or_carries_its_bytes_never_both() -> None:
    both = {"uri": "/s/x", "inline": "YQ==", "rows": 1, "bytes": 1, "sha256": SHA}
    with pytest.raises(MessageError, match=r"invalid DataRef: \(message\): Value error, a DataRef names a stored object \(uri\) or carries its bytes \(inline\)"):  # fmt: skip
        DataRef.from_json(json.dumps(both))
    with pytest.raises(MessageError, match=r"a DataRef names a stored object"):
        DataRef.from_json(json.dumps({"rows": 1, "bytes": 1, "sha256": SHA}))


@pytest.mark.parametrize("bad", ["../escape", "a/b", ".hidden", "a..b", ""])
def test_task_ids_that_could_name_a_path_are_refused_in_every_message(bad: str) -> None:
    message = f"id {bad!r} cannot be a task id: use 1-128 letters, digits, '_', '-' or '.', starting with a letter or digit, and no '..'"  # fmt: skip
    tasks = [{"task_id": bad, "inputs": []}, {"task_id": "ok", "inputs": []}]
    with pytest.raises(MessageError, match=re.escape(f"invalid TaskManifest: tasks.0.task_id: Value error, task {message}")):  # fmt: skip
        TaskManifest.from_json(json.dumps({"job": "j1", "step": 0, "step_name": "s", "key": "k", "tasks": tasks}))  # fmt: skip
    with pytest.raises(
        MessageError, match=re.escape(f"initial_ids: Value error, initial task {message}")
    ):
        JobSpec.from_json(json.dumps({"team": "web", "request_id": "r", "pipeline": {}, "initial": [json.loads(_ref().to_json())], "initial_ids": [bad]}))  # fmt: skip


def test_a_single_task_manifest_is_keyed_by_its_task_and_a_group_holds_at_most_64() -> None:
    entry = TaskEntry(task_id="t1", inputs=[_ref()])
    with pytest.raises(ValueError, match=r"a single-task manifest is keyed by its task id, not 'other'"):  # fmt: skip
        TaskManifest(job="j1", step=0, step_name="s", key="other", tasks=[entry])
    shape = {"job": "j1", "step": 0, "step_name": "s", "key": "g1"}
    group = [{"task_id": f"t{i}", "inputs": []} for i in range(MAX_GROUP + 1)]
    with pytest.raises(MessageError, match=r"invalid TaskManifest: tasks: List should have at most 64 items"):  # fmt: skip
        TaskManifest.from_json(json.dumps({**shape, "tasks": group}))
    with pytest.raises(MessageError, match=r"invalid TaskManifest: tasks: List should have at least 1 item"):  # fmt: skip
        TaskManifest.from_json(json.dumps({**shape, "tasks": []}))


def test_messages_are_frozen() -> None:
    ref = _ref()
    with pytest.raises(ValueError, match="frozen"):
        ref.rows = 4  # type: ignore[misc]

"""What became of a document: drop records and kept-file notes, as writers and filters make
them, the store keeps them, the coordinator finds them, and `gristmill why` prints them; and
the coordinator's progress samples behind the throughput chart."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest

from gristmill.bus import JobStarted, JobState, StepCounts, StepInfo, TaskResult, TasksDone
from gristmill.service_cli import _drops_table, describe_fate
from gristmill.stages.text.io.writing import JsonlWriter
from gristmill.store import TaskStore
from gristmill.tasks import DocumentBatch, drop_groups, drops_by_stage, iter_drops, record_drops
from services.coordinator import api
from services.coordinator.api import JobViews, find_fate
from services.coordinator.tracking import JobTracker

DROPPED = {
    "id": "d1",
    "stage": "WordCountFilter",
    "reason": "score < 50",
    "score": 12,
    "threshold": 50,
    "step": 1,
    "task": "t1",
    "fate": "dropped",
}
KEPT = {"file": "/out/t1.jsonl", "ids": ["d2", "d3"], "step": 1, "task": "t1", "fate": "kept"}


@pytest.fixture
def store(tmp_path: Path) -> TaskStore:
    return TaskStore(str(tmp_path))


# -- find_fate -----------------------------------------------------------------------------------


def test_find_fate_of_a_dropped_document_is_its_drop_record(store):
    store.put_fates("web", "j1", 1, "m1", [DROPPED, KEPT])
    assert find_fate(store, "web", "j1", "d1") == DROPPED


def test_find_fate_of_a_kept_document_names_its_file_without_the_id_list(store):
    store.put_fates("web", "j1", 1, "m1", [DROPPED, KEPT])
    assert find_fate(store, "web", "j1", "d3") == {
        "file": "/out/t1.jsonl",
        "step": 1,
        "task": "t1",
        "fate": "kept",
        "id": "d3",
    }


def test_find_fate_of_an_unknown_document_or_job_is_none(store):
    store.put_fates("web", "j1", 1, "m1", [DROPPED, KEPT])
    assert find_fate(store, "web", "j1", "d9") is None
    assert find_fate(store, "web", "j2", "d1") is None


def test_find_fate_of_a_document_kept_then_dropped_later_is_the_drop(store):
    dropped_later = {
        "id": "d2",
        "stage": "exact_duplicate_removal",
        "reason": "exact duplicate of d3",
        "duplicate_of": "d3",
        "step": 3,
        "task": "t7",
        "fate": "dropped",
    }
    store.put_fates("web", "j1", 1, "m1", [KEPT])
    store.put_fates("web", "j1", 3, "m2", [dropped_later])
    assert find_fate(store, "web", "j1", "d2") == dropped_later


def test_fates_come_step_by_step_past_step_nine(store):
    store.put_fates("web", "j1", 10, "m1", [{**KEPT, "step": 10}])
    store.put_fates("web", "j1", 2, "m1", [{**KEPT, "step": 2}])
    assert [record["step"] for record in store.fates("web", "j1")] == [2, 10]


# -- progress samples and throughput -------------------------------------------------------------

STEPS = [
    StepInfo(name="file_partitioning", pool="cpu"),
    StepInfo(name="read+filter", pool="cpu"),
    StepInfo(name="jsonl_writer", pool="cpu"),
]


def _started(job: str) -> JobStarted:
    return JobStarted(
        job=job,
        team="web",
        pipeline="quality",
        steps=STEPS,
        first_step=1,
        initial=["a", "b"],
        submitted_at=1.0,
    )


def _done(
    tracker: JobTracker, task_id: str, step: int, outputs: list[str], counts: tuple[int, int, int]
) -> None:
    result = TaskResult(
        task_id=task_id,
        output_ids=outputs,
        items_in=counts[0],
        items_out=counts[1],
        items_dropped=counts[2],
        wall_time_s=0.1,
    )
    tracker.on_done(TasksDone(job=tracker.job, step=step, key=task_id, results=[result], attempt=1))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The time `JobViews` samples at: set `clock[0]`."""
    now = [0.0]
    monkeypatch.setattr(api, "time", SimpleNamespace(time=lambda: now[0]))
    return now


def _views(store: TaskStore, trackers: dict[str, JobTracker]) -> JobViews:
    return JobViews(
        js=lambda: None,
        store=store,
        jobs=lambda team: trackers if team == "web" else {},
        workers=lambda team: {},
    )


def test_throughput_is_documents_into_each_step_per_second_over_the_window(store, clock):
    tracker = JobTracker("j1")
    tracker.on_started(_started("j1"))
    views = _views(store, {"j1": tracker})
    clock[0] = 100.0
    views.sample("web")
    _done(tracker, "a", 1, ["wa"], (50, 40, 10))
    clock[0] = 104.0
    views.sample("web")
    _done(tracker, "b", 1, ["wb"], (30, 30, 0))
    _done(tracker, "wa", 2, [], (40, 40, 0))
    clock[0] = 108.0
    views.sample("web")
    assert views.throughput("web", "j1") == [0.0, 10.0, 5.0]
    assert views.throughput("web", "j1", window_s=5.0) == [0.0, 7.5, 10.0]


def test_a_finished_job_gets_one_final_sample_and_no_more(store, clock):
    tracker = JobTracker("j1")
    tracker.on_started(_started("j1"))
    views = _views(store, {"j1": tracker})
    clock[0] = 100.0
    views.sample("web")
    for task_id, step, outputs in (
        ("a", 1, ["wa"]),
        ("b", 1, ["wb"]),
        ("wa", 2, []),
        ("wb", 2, []),
    ):
        _done(tracker, task_id, step, outputs, (40, 35, 5) if step == 1 else (35, 35, 0))
    clock[0] = 101.0
    views.sample("web")
    clock[0] = 102.0
    views.sample("web")
    assert list(views.history["web", "j1"]) == [
        {
            "t": 100.0,
            "tasks_done": 0,
            "items_in": 0,
            "items_out": 0,
            "steps": [0, 0, 0],
            "final": False,
        },
        {
            "t": 101.0,
            "tasks_done": 4,
            "items_in": 80,
            "items_out": 70,
            "steps": [0, 80, 70],
            "final": True,
        },
    ]
    assert views.throughput("web", "j1") == [0.0, 80.0, 70.0]


def test_a_job_already_finished_when_first_seen_is_not_sampled(store, clock):
    tracker = JobTracker("j1")
    tracker.on_started(_started("j1"))
    for task_id, step, outputs in (
        ("a", 1, ["wa"]),
        ("b", 1, ["wb"]),
        ("wa", 2, []),
        ("wb", 2, []),
    ):
        _done(tracker, task_id, step, outputs, (1, 1, 0))
    views = _views(store, {"j1": tracker})
    views.sample("web")
    assert views.history == {}
    assert views.throughput("web", "j1") == []


def test_throughput_needs_two_samples(store, clock):
    tracker = JobTracker("j1")
    tracker.on_started(_started("j1"))
    views = _views(store, {"j1": tracker})
    views.sample("web")
    assert views.throughput("web", "j1") == []
    assert views.throughput("web", "unknown") == []


# -- gristmill why and the drops table -----------------------------------------------------------


def test_describe_fate_of_a_kept_document():
    fate = {
        "file": "/out/t1.jsonl",
        "step": 1,
        "task": "t1",
        "fate": "kept",
        "id": "d3",
        "job": "j1",
        "trace_id": "ab" * 16,
    }
    assert (
        describe_fate("d3", fate)
        == "d3: kept, in /out/t1.jsonl [step 1, task t1, trace abababababababababababababababab]"
    )


def test_describe_fate_of_a_score_filter_drop():
    assert (
        describe_fate("d1", DROPPED)
        == "d1: dropped by stage 'WordCountFilter': score < 50 (score 12, threshold 50) [step 1, task t1]"
    )


def test_describe_fate_of_a_drop_record_from_a_file_has_no_place():
    record = {
        "id": "d1",
        "stage": "AlphaFilter",
        "reason": "alpha < 0.5",
        "score": 0.25,
        "threshold": 0.5,
    }
    assert (
        describe_fate("d1", record)
        == "d1: dropped by stage 'AlphaFilter': alpha < 0.5 (score 0.25, threshold 0.5)"
    )


def test_describe_fate_of_an_exact_duplicate():
    fate = {
        "id": "d4",
        "stage": "exact_duplicate_removal",
        "reason": "exact duplicate of d3",
        "duplicate_of": "d3",
        "step": 3,
        "task": "t7",
        "fate": "dropped",
    }
    assert (
        describe_fate("d4", fate)
        == "d4: dropped by stage 'exact_duplicate_removal': exact duplicate of d3 [step 3, task t7]"
    )


def test_drops_table_lists_each_steps_stages_largest_first():
    state = JobState(
        job="j1",
        state="completed",
        steps=[
            StepCounts(name="file_partitioning"),
            StepCounts(
                name="read+filter",
                dropped_by={"exact_duplicate_removal": 5, "WordCountFilter": 15, "AlphaFilter": 5},
            ),
            StepCounts(name="a" * 41, dropped_by={"X": 1200}),
        ],
    )
    assert _drops_table(state).splitlines() == [
        "step                                        dropped by               documents",
        "1 read+filter                               WordCountFilter                 15",
        "1 read+filter                               AlphaFilter                      5",
        "1 read+filter                               exact_duplicate_removal          5",
        "2 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...  X                             1200",
    ]


def test_drops_table_of_a_job_without_drops_is_empty():
    assert (
        _drops_table(JobState(job="j1", state="completed", steps=[StepCounts(name="read")])) == ""
    )


# -- what writers and filters note ---------------------------------------------------------------


def test_writer_notes_which_ids_went_into_which_file(tmp_path):
    batch = DocumentBatch(
        task_id="t1", dataset_name="web", data=pa.table({"id": ["a", "b"], "text": ["x", "y"]})
    )
    out = JsonlWriter(path=str(tmp_path)).process(batch)
    assert out.data == [f"{tmp_path}/t1.jsonl"]
    assert out._metadata["written"] == [{"file": f"{tmp_path}/t1.jsonl", "ids": ["a", "b"]}]


def test_writer_notes_ids_as_strings_even_when_it_does_not_write_them(tmp_path):
    batch = DocumentBatch(
        task_id="t1", dataset_name="web", data=pa.table({"id": [7, 8], "text": ["x", "y"]})
    )
    out = JsonlWriter(path=str(tmp_path), fields=["text"]).process(batch)
    assert out._metadata["written"] == [{"file": f"{tmp_path}/t1.jsonl", "ids": ["7", "8"]}]
    assert (tmp_path / "t1.jsonl").read_text() == '{"text":"x"}\n{"text":"y"}\n'


def test_writer_notes_nothing_without_an_id_column_or_documents(tmp_path):
    no_ids = DocumentBatch(task_id="t1", dataset_name="web", data=pa.table({"text": ["x"]}))
    empty = DocumentBatch(
        task_id="t2", dataset_name="web", data=pa.table({"id": pa.array([], pa.string())})
    )
    assert "written" not in JsonlWriter(path=str(tmp_path)).process(no_ids)._metadata
    assert "written" not in JsonlWriter(path=str(tmp_path)).process(empty)._metadata


def test_duplicate_drops_carry_the_id_they_duplicate():
    task = DocumentBatch(task_id="t1", data=pa.table({"id": ["d3"]}))
    record_drops(
        task, "exact_duplicate_removal", ["d4", "d5"], "exact duplicate of d3", duplicate_of="d3"
    )
    assert drop_groups(task) == [
        {
            "stage": "exact_duplicate_removal",
            "reason": "exact duplicate of d3",
            "ids": ["d4", "d5"],
            "duplicate_of": "d3",
        }
    ]
    assert list(iter_drops(drop_groups(task))) == [
        {
            "id": "d4",
            "stage": "exact_duplicate_removal",
            "reason": "exact duplicate of d3",
            "duplicate_of": "d3",
        },
        {
            "id": "d5",
            "stage": "exact_duplicate_removal",
            "reason": "exact duplicate of d3",
            "duplicate_of": "d3",
        },
    ]


def test_drops_by_stage_counts_documents_over_every_group():
    task = DocumentBatch(task_id="t1", data=pa.table({"id": ["k"]}))
    record_drops(task, "WordCountFilter", ["d1", "d2"], "score < 50", [1, 2], 50)
    record_drops(task, "exact_duplicate_removal", ["d4"], "exact duplicate of k", duplicate_of="k")
    record_drops(task, "WordCountFilter", ["d6"], "score < 50", [3], 50)
    assert drops_by_stage(drop_groups(task)) == {"WordCountFilter": 3, "exact_duplicate_removal": 1}
    assert drops_by_stage([]) == {}

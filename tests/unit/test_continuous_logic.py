"""The pure logic of continuous jobs: which listed files are taken, how the coordinator follows
each input file (out of order, repeated, failed, retried), and its snapshots."""

from __future__ import annotations

from gristmill.bus import (
    FilesIngested,
    IngestedFile,
    InputClosed,
    JobStarted,
    StepInfo,
    TaskFailed,
    TaskResult,
    TaskRetried,
    TasksDone,
)
from services.coordinator.snapshot import dump, load
from services.coordinator.tracking import JobTracker
from services.planner.ingest import InputLook, notified_path_problem

# -- the stable-size rule ---------------------------------------------------------------------


def test_a_file_is_taken_once_two_listings_in_a_row_see_it_unchanged() -> None:
    look = InputLook()
    first = look.look({"/in/a.jsonl": (10, 1.0, "")}, now=100.0)
    assert (first.take, first.waiting) == ([], 1)
    growing = look.look({"/in/a.jsonl": (20, 2.0, "")}, now=105.0)
    assert (growing.take, growing.waiting) == ([], 1)
    stable = look.look({"/in/a.jsonl": (20, 2.0, "")}, now=110.0)
    assert stable.take == [("/in/a.jsonl", (20, 2.0, ""), 100.0)]  # arrival: first sighting


def test_a_taken_file_that_changes_is_reported_once_and_never_taken_again() -> None:
    look = InputLook({"/in/a.jsonl": (20, 2.0, "")})
    assert look.look({"/in/a.jsonl": (20, 2.0, "")}, now=1.0).changed == []
    changed = look.look({"/in/a.jsonl": (30, 3.0, "")}, now=2.0)
    assert (changed.take, changed.changed) == ([], ["/in/a.jsonl"])
    again = look.look({"/in/a.jsonl": (30, 3.0, "")}, now=3.0)
    assert (again.take, again.changed) == ([], [])


def test_a_file_that_vanishes_between_listings_starts_over() -> None:
    look = InputLook()
    look.look({"/in/a.jsonl": (5, 1.0, "")}, now=1.0)
    look.look({}, now=2.0)
    assert look.look({"/in/a.jsonl": (5, 1.0, "")}, now=3.0).take == []


def test_notified_paths_must_be_visible_and_under_the_inputs() -> None:
    inputs, ext = ["/data/in"], [".jsonl"]
    assert notified_path_problem("/data/in/x/a.jsonl", inputs, ext) == ""
    assert notified_path_problem("/data/in/../secret.jsonl", inputs, ext) == (
        "'/data/in/../secret.jsonl' is not under the job's inputs (/data/in)"
    )
    assert notified_path_problem("/data/in/.a.jsonl.tmp", inputs, ext) == (
        "'/data/in/.a.jsonl.tmp' is a hidden name (starting with '.' or '_')"
    )
    assert notified_path_problem("/data/in/a.csv", inputs, ext).endswith("(/data/in)")
    assert notified_path_problem("/data/in/b/c.jsonl", ["/data/in/*/c.jsonl"], ext) == ""


# -- following files --------------------------------------------------------------------------

ROOT_A, ROOT_B = "a" * 32, "b" * 32


def _tracker(now: list[float]) -> JobTracker:
    tracker = JobTracker("j1")
    tracker.clock = lambda: now[0]
    steps = [StepInfo(name="partition", pool="cpu"), StepInfo(name="read", pool="cpu")]
    steps.append(StepInfo(name="write", pool="cpu"))
    tracker.on_started(
        JobStarted(
            job="j1",
            team="t",
            pipeline="p",
            steps=steps,
            first_step=1,
            submitted_at=0.0,
            continuous=True,
        )
    )
    return tracker


def _file(root: str, seen_at: float) -> FilesIngested:
    entry = IngestedFile(path=f"/in/{root[0]}.jsonl", size=10, task_id=root, seen_at=seen_at)
    return FilesIngested(job="j1", step=1, files=[entry])


def _done(step: int, task: str, root: str, out: list[str], at: float, kept: int = 3) -> TasksDone:
    result = TaskResult(
        task_id=task,
        output_ids=out,
        items_in=5,
        items_out=kept,
        items_dropped=5 - kept,
        wall_time_s=0.1,
        root=root,
    )
    return TasksDone(job="j1", step=step, key=task, results=[result], attempt=1, at=at)


def test_a_file_is_done_when_every_task_it_led_to_is_done_even_out_of_order() -> None:
    now = [100.0]
    tracker = _tracker(now)
    assert tracker.on_files(_file(ROOT_A, seen_at=90.0)) == [ROOT_A]
    assert tracker.on_files(_file(ROOT_A, seen_at=90.0)) == []  # a repeated announcement
    # The child finishes before its parent says it made it.
    assert tracker.on_done(_done(2, "c1", ROOT_A, ["o1"], at=95.0))
    state = tracker.state()
    assert state.files is not None
    assert (state.files.seen, state.files.done, state.files.pending) == (1, 0, 1)
    assert state.files.lag_s == 10.0
    assert tracker.on_done(_done(1, ROOT_A, ROOT_A, ["c1"], at=93.0, kept=5))
    state = tracker.state()
    assert state.files is not None
    assert (state.files.done, state.files.pending, state.files.lag_s) == (1, 0, 0.0)
    assert state.files.last_latency_s == 5.0  # 90 -> 95: the last of its tasks
    assert (state.items_in, state.items_out, state.items_dropped) == (5, 3, 2)
    # Folded: no task id of it is kept, the counts are.
    assert tracker.steps[1].published == {}
    assert tracker.steps[2].done == {}
    assert (state.steps[1].done, state.steps[2].done) == (1, 1)
    assert [c.root for c in tracker.ledger.closing.values()] == [ROOT_A]  # type: ignore[union-attr]


def test_events_about_a_finished_file_change_nothing() -> None:
    now = [100.0]
    tracker = _tracker(now)
    tracker.on_files(_file(ROOT_A, 90.0))
    tracker.on_done(_done(1, ROOT_A, ROOT_A, ["c1"], 91.0, kept=5))
    tracker.on_done(_done(2, "c1", ROOT_A, ["o1"], 92.0))
    before = tracker.state()
    assert not tracker.on_done(_done(2, "c1", ROOT_A, ["o1"], 99.0))  # a re-announcement
    assert not tracker.on_done(_done(1, ROOT_A, ROOT_A, ["c1"], 99.0, kept=5))
    assert tracker.state() == before


def test_a_stopped_job_ends_once_its_files_are_done_and_their_lineage_written() -> None:
    now = [100.0]
    tracker = _tracker(now)
    tracker.on_files(_file(ROOT_A, 90.0))
    tracker.on_input_closed(InputClosed(job="j1", files=1, at=95.0))
    assert tracker.state().state == "running"
    tracker.on_done(_done(1, ROOT_A, ROOT_A, ["c1"], 91.0, kept=5))
    tracker.on_done(_done(2, "c1", ROOT_A, ["o1"], 92.0))
    assert tracker.state().state == "running"  # its lineage is not written yet
    assert tracker.ledger is not None
    tracker.ledger.forget(ROOT_A)
    assert tracker.state().state == "completed"


def test_a_file_with_a_dead_letter_is_failed_until_a_retry_finishes_it() -> None:
    now = [100.0]
    tracker = _tracker(now)
    tracker.on_files(_file(ROOT_B, 90.0))
    tracker.on_done(_done(1, ROOT_B, ROOT_B, ["c9"], 91.0, kept=5))
    failed = TaskFailed(job="j1", step=2, task_id="c9", error="boom", attempts=5, root=ROOT_B)
    assert tracker.on_failed(failed)
    state = tracker.state()
    assert state.files is not None
    assert (state.files.failed, state.files.pending, state.files.done) == (1, 0, 0)
    assert tracker.on_retried(TaskRetried(job="j1", step=2, task_id="c9", root=ROOT_B))
    assert tracker.state().files.pending == 1  # type: ignore[union-attr]
    tracker.on_done(_done(2, "c9", ROOT_B, ["o9"], 99.0))
    state = tracker.state()
    assert state.files is not None
    assert (state.files.failed, state.files.done, state.tasks_failed) == (0, 1, 0)


def test_a_snapshot_gives_back_the_same_state_and_the_same_answers_to_what_follows() -> None:
    now = [100.0]
    tracker = _tracker(now)
    tracker.on_files(_file(ROOT_A, 90.0))
    tracker.on_files(_file(ROOT_B, 91.0))
    tracker.on_done(_done(1, ROOT_A, ROOT_A, ["c1"], 92.0, kept=5))
    tracker.on_done(_done(2, "c1", ROOT_A, ["o1"], 93.0))
    tracker.on_done(_done(2, "c2", ROOT_B, ["o2"], 94.0))  # early: its parent not yet done
    snapshot = load(dump({"j1": tracker}, applied=41))
    assert snapshot is not None
    assert snapshot.applied == 41
    restored = snapshot.jobs["j1"]
    restored.clock = tracker.clock
    assert restored.state() == tracker.state()
    for one in (tracker, restored):
        one.on_done(_done(1, ROOT_B, ROOT_B, ["c2"], 95.0, kept=5))
    assert restored.state() == tracker.state()
    assert restored.state().files.done == 2  # type: ignore[union-attr]
    assert load(b'{"version": 0}') is None  # another version: replay everything instead

"""The coordinator's pure logic: job progress counted from events, and the slot policy."""

from __future__ import annotations

import hashlib
import time

import pytest

from gristmill.bus import (
    IdsPart,
    JobStarted,
    JobState,
    StepCounts,
    StepInfo,
    TaskFailed,
    TaskResult,
    TaskRetried,
    TasksDone,
)
from services.coordinator.tracking import JobTracker, WorkerInfo, assign_slots

# A planned job: partitioning ran in the planner (step 0), workers run steps 1 and 2.
STEPS = [
    StepInfo(name="file_partitioning", pool="cpu"),
    StepInfo(name="read+filter", pool="cpu"),
    StepInfo(name="jsonl_writer", pool="cpu"),
]


def started(
    job: str = "j1",
    initial: tuple[str, ...] = ("a", "b"),
    first_step: int = 1,
    steps: list[StepInfo] | None = None,
) -> JobStarted:
    return JobStarted(
        job=job,
        team="web",
        pipeline="quality",
        steps=STEPS if steps is None else steps,
        first_step=first_step,
        initial=list(initial),
        submitted_at=1000.0,
    )


def done(
    task_id: str,
    step: int,
    outputs: tuple[str, ...] = (),
    counts: tuple[int, int, int] = (0, 0, 0),
    job: str = "j1",
    attempt: int = 1,
    dropped_by: dict[str, int] | None = None,
) -> TasksDone:
    items_in, items_out, items_dropped = counts
    result = TaskResult(
        task_id=task_id,
        output_ids=list(outputs),
        items_in=items_in,
        items_out=items_out,
        items_dropped=items_dropped,
        wall_time_s=0.5,
        dropped_by=dropped_by or {},
    )
    return TasksDone(job=job, step=step, key=task_id, results=[result], attempt=attempt)


def failed(task_id: str, step: int, job: str = "j1") -> TaskFailed:
    return TaskFailed(job=job, step=step, task_id=task_id, error="ValueError: bad", attempts=5)


def counts_of(tracker: JobTracker) -> list[tuple[str, int, int, int]]:
    """(name, published, done, failed) of every step: what most tests compare."""
    return [(s.name, s.published, s.done, s.failed) for s in tracker.state().steps]


def finished_job(job: str = "j1") -> JobTracker:
    """A job whose two initial tasks each made one output, all written."""
    tracker = JobTracker(job)
    tracker.on_started(started(job))
    tracker.on_done(done("a", 1, ("a0",), job=job))
    tracker.on_done(done("b", 1, ("b0",), job=job))
    tracker.on_done(done("a0", 2, ("a0.jsonl",), job=job))
    tracker.on_done(done("b0", 2, ("b0.jsonl",), job=job))
    return tracker


# -- counting ---------------------------------------------------------------------------------


def test_a_job_without_its_start_event_is_pending_and_never_finished() -> None:
    tracker = JobTracker("j1")
    tracker.on_done(done("a", 1))
    assert not tracker.finished
    # the trace id is the job's, derived from its id (sha256 of "gm-trace\0j1", 16 bytes)
    trace_id = hashlib.sha256(b"gm-trace\0j1").hexdigest()[:32]
    assert tracker.state() == JobState(job="j1", state="pending", trace_id=trace_id)


def test_a_repeated_task_done_counts_once() -> None:
    tracker = JobTracker("j1")
    tracker.on_started(started())
    assert tracker.on_done(done("a", 1, ("a0",), counts=(1, 10, 2))) is True
    assert tracker.on_done(done("a", 1, ("a0",), counts=(1, 10, 2), attempt=2)) is False
    assert counts_of(tracker) == [
        ("file_partitioning", 0, 0, 0),
        ("read+filter", 2, 1, 0),
        ("jsonl_writer", 1, 0, 0),
    ]
    assert tracker.state().steps[1] == StepCounts(
        name="read+filter", published=2, done=1, items_in=1, items_out=10, items_dropped=2
    )


def test_a_repeat_with_other_outputs_does_not_publish_them() -> None:
    tracker = JobTracker("j1")
    tracker.on_started(started())
    tracker.on_done(done("a", 1, ("a0",)))
    tracker.on_done(done("a", 1, ("a0", "a1"), attempt=2))
    assert tracker.step_backlog(2) == 1


def test_task_done_arriving_before_job_started_is_counted() -> None:
    tracker = JobTracker("j1")
    tracker.on_done(done("a", 1, ("a0",)))
    tracker.on_started(started())
    assert counts_of(tracker) == [
        ("file_partitioning", 0, 0, 0),
        ("read+filter", 2, 1, 0),
        ("jsonl_writer", 1, 0, 0),
    ]
    assert tracker.step_backlog(1) == 1
    assert not tracker.finished


def test_a_childs_task_done_before_its_parents_counts_the_child_once() -> None:
    tracker = JobTracker("j1")
    tracker.on_started(started())
    tracker.on_done(done("a0", 2, ("a0.jsonl",)))
    assert tracker.step_backlog(2) == 0
    tracker.on_done(done("a", 1, ("a0",)))
    assert counts_of(tracker)[2] == ("jsonl_writer", 1, 1, 0)
    assert tracker.step_backlog(2) == 0
    tracker.on_done(done("b", 1))
    assert tracker.finished


def test_finished_only_when_every_published_task_of_every_step_is_done_or_failed() -> None:
    tracker = JobTracker("j1")
    tracker.on_started(started())
    seen = [tracker.finished]
    for event in (
        done("a", 1, ("a0", "a1")),
        done("a0", 2, ("a0.jsonl",)),
        failed("b", 1),
        done("a1", 2, ("a1.jsonl",)),
    ):
        if isinstance(event, TasksDone):
            tracker.on_done(event)
        else:
            tracker.on_failed(event)
        seen.append(tracker.finished)
    assert seen == [False, False, False, False, True]


def test_the_last_steps_outputs_are_not_waited_for() -> None:
    tracker = finished_job()
    assert tracker.step_backlog(3) == 2  # the written files, which no step runs
    assert tracker.finished
    assert [s.name for s in tracker.state().steps] == [s.name for s in STEPS]


def test_a_job_that_published_nothing_is_finished_at_once() -> None:
    tracker = JobTracker("j1")
    tracker.on_started(started(initial=()))
    assert tracker.finished
    assert tracker.state().state == "completed"


def test_all_done_is_completed_and_a_dead_letter_makes_completed_with_failures() -> None:
    clean = finished_job()
    assert clean.state().state == "completed"
    tracker = JobTracker("j1")
    tracker.on_started(started())
    tracker.on_done(done("a", 1, ("a0",)))
    tracker.on_done(done("a0", 2, ("a0.jsonl",)))
    assert tracker.on_failed(failed("b", 1)) is True
    assert tracker.on_failed(failed("b", 1)) is False
    state = tracker.state()
    assert (state.state, state.tasks_done, state.tasks_failed) == ("completed_with_failures", 2, 1)
    assert state.finished


def test_a_failed_task_later_done_moves_from_failed_to_done() -> None:
    tracker = JobTracker("j1")
    tracker.on_started(started())
    tracker.on_done(done("a", 1))
    tracker.on_failed(failed("b", 1))
    assert tracker.state().state == "completed_with_failures"
    assert tracker.on_done(done("b", 1, ("b0",), attempt=6)) is True  # the dead letter, retried
    assert counts_of(tracker)[1] == ("read+filter", 2, 2, 0)
    assert tracker.state().state == "running"  # its output is new work
    tracker.on_done(done("b0", 2, ("b0.jsonl",)))
    state = tracker.state()
    assert (state.state, state.tasks_done, state.tasks_failed) == ("completed", 3, 0)


def test_a_failure_reported_after_the_task_succeeded_is_ignored() -> None:
    tracker = JobTracker("j1")
    tracker.on_started(started())
    tracker.on_done(done("a", 1))
    assert tracker.on_failed(failed("a", 1)) is False
    assert counts_of(tracker)[1] == ("read+filter", 2, 1, 0)


def test_job_state_counts_every_step_and_takes_items_out_from_the_last() -> None:
    tracker = JobTracker("j1")
    tracker.on_started(started())
    tracker.on_done(done("a", 1, ("a0",), (1, 40, 10), dropped_by={"WordCountFilter": 10}))
    by = {"WordCountFilter": 5, "UrlsFilter": 15}
    tracker.on_done(done("b", 1, ("b0",), (1, 30, 20), dropped_by=by))
    tracker.on_done(done("b", 1, ("b0",), (1, 30, 20), dropped_by=by))  # a repeat: once
    tracker.on_done(done("a0", 2, ("a0.jsonl",), counts=(40, 40, 0)))
    trace_id = tracker.state().trace_id
    assert tracker.state() == JobState(
        job="j1",
        state="running",
        pipeline="quality",
        tasks_published=4,
        tasks_done=3,
        tasks_failed=0,
        items_in=70,
        items_out=40,
        items_dropped=30,
        steps=[
            StepCounts(name="file_partitioning"),
            StepCounts(
                name="read+filter",
                published=2,
                done=2,
                items_in=2,
                items_out=70,
                items_dropped=30,
                dropped_by={"UrlsFilter": 15, "WordCountFilter": 15},
            ),
            StepCounts(name="jsonl_writer", published=2, done=1, items_in=40, items_out=40),
        ],
        submitted_at=1000.0,
        finished_at=None,
        trace_id=trace_id,
    )
    tracker.on_done(done("b0", 2, ("b0.jsonl",), counts=(30, 29, 1)))
    final = tracker.state()
    assert final.finished_at is not None
    assert final.model_copy(update={"finished_at": None}) == JobState(
        job="j1",
        state="completed",
        pipeline="quality",
        tasks_published=4,
        tasks_done=4,
        tasks_failed=0,
        items_in=100,
        items_out=69,
        items_dropped=31,
        steps=[
            StepCounts(name="file_partitioning"),
            StepCounts(
                name="read+filter",
                published=2,
                done=2,
                items_in=2,
                items_out=70,
                items_dropped=30,
                dropped_by={"UrlsFilter": 15, "WordCountFilter": 15},
            ),
            StepCounts(
                name="jsonl_writer",
                published=2,
                done=2,
                items_in=70,
                items_out=69,
                items_dropped=1,
            ),
        ],
        submitted_at=1000.0,
        trace_id=trace_id,
    )


def test_finished_at_does_not_move_when_the_state_is_asked_again() -> None:
    tracker = finished_job()
    first = tracker.state().finished_at
    assert first is not None
    assert tracker.state().finished_at == first
    assert tracker.finished_at == first


def test_a_job_that_runs_again_after_finishing_reports_its_last_finish(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1500.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    tracker = JobTracker("j1")
    tracker.on_started(started())
    tracker.on_done(done("a", 1))
    tracker.on_failed(failed("b", 1))
    assert tracker.state().finished_at == 1500.0
    clock[0] = 2500.0
    tracker.on_done(done("b", 1, ("b0",), attempt=6))
    assert tracker.state().finished_at is None
    tracker.on_done(done("b0", 2))
    assert tracker.state().finished_at == 2500.0


def test_two_parents_making_one_task_id_fail_the_job_naming_both() -> None:
    tracker = JobTracker("j1")
    tracker.on_started(started())
    tracker.on_done(done("a", 1, ("same",)))
    tracker.on_done(done("a", 1, ("same",), attempt=2))  # the same parent again: fine
    assert tracker.state().state == "running"
    tracker.on_done(done("b", 1, ("same",)))
    state = tracker.state()
    assert tracker.finished
    assert (state.state, state.error) == (
        "failed",
        "task id 'same' of step 2 'jsonl_writer' was made from two parents, 'a' and 'b'; give "
        "each output its own id, or leave task_id empty to have one derived",
    )


def test_a_group_manifest_counts_each_of_its_tasks_once() -> None:
    tracker = JobTracker("j1")
    tracker.on_started(started(initial=("a", "b", "c")))
    results = [
        TaskResult(task_id=t, items_in=1, items_out=1, items_dropped=0, wall_time_s=0.1)
        for t in ("a", "b")
    ]
    group = TasksDone(job="j1", step=1, key="g1", results=results, attempt=1)
    assert tracker.on_done(group) is True
    assert tracker.on_done(group) is False
    assert counts_of(tracker)[1] == ("read+filter", 3, 2, 0)
    assert tracker.step_backlog(1) == 1


def test_a_long_id_list_is_waited_for_until_every_part_has_arrived() -> None:
    tracker = JobTracker("j1")
    tracker.on_started(started(initial=()).model_copy(update={"initial_parts": 2}))
    assert not tracker.finished  # no initial task is known yet, but two parts are to come
    tracker.on_ids(IdsPart(job="j1", step=1, owner="", part=1, parts=2, ids=["c"]))
    tracker.on_done(done("c", 1))
    assert not tracker.finished
    tracker.on_ids(IdsPart(job="j1", step=1, owner="", part=0, parts=2, ids=["a", "b"]))
    assert tracker.step_backlog(1) == 2
    fanned = TaskResult(
        task_id="a", parts=2, items_in=1, items_out=3, items_dropped=0, wall_time_s=1
    )
    tracker.on_done(TasksDone(job="j1", step=1, key="a", results=[fanned], attempt=1))
    tracker.on_done(done("b", 1))
    assert not tracker.finished  # a's outputs are listed in two parts, none seen yet
    tracker.on_ids(IdsPart(job="j1", step=2, owner="a", part=0, parts=2, ids=["a0", "a1"]))
    tracker.on_ids(IdsPart(job="j1", step=2, owner="a", part=1, parts=2, ids=["a2"]))
    assert tracker.step_backlog(2) == 3
    for child in ("a0", "a1", "a2"):
        tracker.on_done(done(child, 2))
    assert tracker.finished
    assert counts_of(tracker)[1:] == [("read+filter", 3, 3, 0), ("jsonl_writer", 3, 3, 0)]


def test_a_retried_dead_letter_reopens_the_job_until_the_task_ends_again() -> None:
    tracker = JobTracker("j1")
    tracker.on_started(started())
    tracker.on_done(done("a", 1))
    tracker.on_failed(failed("b", 1))
    assert tracker.state().state == "completed_with_failures"
    assert tracker.on_retried(TaskRetried(job="j1", step=1, task_id="b")) is True
    assert tracker.on_retried(TaskRetried(job="j1", step=1, task_id="a")) is False  # not failed
    assert (tracker.state().state, tracker.step_backlog(1)) == ("running", 1)
    tracker.on_failed(failed("b", 1))  # it failed again: a new dead letter ends the job again
    state = tracker.state()
    assert (state.state, state.tasks_failed, state.retries) == ("completed_with_failures", 1, 1)


def _compacted_twin(events: list[object]) -> tuple[JobTracker, JobTracker]:
    """The same events applied to a tracker that compacts whenever it is finished, and to one
    that never does."""
    full, compact = JobTracker("j1"), JobTracker("j1")
    for tracker in (full, compact):
        for event in events:
            if isinstance(event, JobStarted):
                tracker.on_started(event)
            elif isinstance(event, TasksDone):
                tracker.on_done(event)
            elif isinstance(event, TaskFailed):
                tracker.on_failed(event)
            elif isinstance(event, TaskRetried):
                tracker.on_retried(event)
            if tracker is compact and tracker.compactable:
                tracker.compact()
    return full, compact


def test_a_compacted_job_keeps_its_counts_and_only_its_failed_ids() -> None:
    events: list[object] = [
        started(),
        done("a", 1, ("a0", "a1"), counts=(1, 20, 5)),
        failed("b", 1),
        done("a0", 2, ("a0.jsonl",), counts=(10, 10, 0)),
        done("a1", 2, ("a1.jsonl",), counts=(10, 9, 1)),
    ]
    full, compact = _compacted_twin(events)
    assert compact.compacted
    assert not full.compacted
    assert _untimed(compact.state()) == _untimed(full.state())
    assert sum(len(t.published) + len(t.done) for t in compact.steps.values()) == 1  # "b"
    assert compact.on_done(done("a0", 2, ("a0.jsonl",), attempt=2)) is False  # a repeat
    assert compact.on_failed(failed("a", 1)) is False
    assert _untimed(compact.state()) == _untimed(full.state())


def test_a_compacted_job_reopens_like_a_full_one_for_a_retry_and_a_late_success() -> None:
    events: list[object] = [
        started(),
        done("a", 1, ("a0",)),
        failed("b", 1),
        done("a0", 2, ("a0.jsonl",)),
        TaskRetried(job="j1", step=1, task_id="b"),
        done("b", 1, ("b0",), attempt=6),
    ]
    full, compact = _compacted_twin(events)
    assert _untimed(compact.state()) == _untimed(full.state())
    assert compact.state().state == "running"  # b's output is new work
    for tracker in (full, compact):
        tracker.on_done(done("b0", 2, ("b0.jsonl",)))
    assert _untimed(compact.state()) == _untimed(full.state())
    assert (compact.state().state, compact.state().tasks_done) == ("completed", 4)


def _untimed(state: JobState) -> JobState:
    return state.model_copy(update={"finished_at": None})


# -- slots ------------------------------------------------------------------------------------

# Partitioning ran in the planner; a GPU step between the reader and the writer.
GPU_STEPS = [
    StepInfo(name="file_partitioning", pool="cpu"),
    StepInfo(name="read", pool="cpu"),
    StepInfo(name="embed", pool="gpu", gpus=1.0),
    StepInfo(name="write", pool="cpu"),
]


def running(job: str, initial: tuple[str, ...], steps: list[StepInfo] = GPU_STEPS) -> JobTracker:
    tracker = JobTracker(job)
    tracker.on_started(started(job, initial=initial, steps=steps))
    return tracker


def test_every_step_from_the_first_busy_one_is_active_with_all_the_workers_slots() -> None:
    jobs = {"j1": running("j1", ("a", "b", "c"))}
    plan = assign_slots({"cpu-1": WorkerInfo(pool="cpu", slots=8)}, jobs)
    # the writer has no backlog yet: pulled as soon as its first task appears
    assert plan == {
        "cpu-1": [{"job": "j1", "step": 1, "slots": 8}, {"job": "j1", "step": 3, "slots": 8}]
    }


def test_steps_upstream_of_the_first_busy_step_are_not_active() -> None:
    tracker = running("j1", ("a",))
    tracker.on_done(done("a", 1, ("a0",), job="j1"))
    workers = {"cpu-1": WorkerInfo("cpu", 4), "gpu-1": WorkerInfo("gpu", 2)}
    assert assign_slots(workers, {"j1": tracker}) == {
        "cpu-1": [{"job": "j1", "step": 3, "slots": 4}],
        "gpu-1": [{"job": "j1", "step": 2, "slots": 2}],
    }


def test_a_small_job_beside_a_big_one_may_use_every_slot_as_the_big_one_may() -> None:
    big = running("j1", tuple(f"t{i}" for i in range(9)), steps=STEPS)
    small = running("j2", ("x",), steps=STEPS)
    plan = assign_slots({"cpu-1": WorkerInfo("cpu", 2)}, {"j2": small, "j1": big})
    # not split by backlog: the worker's fair share orders the runs of both
    assert plan == {
        "cpu-1": [
            {"job": "j1", "step": 1, "slots": 2},
            {"job": "j1", "step": 2, "slots": 2},
            {"job": "j2", "step": 1, "slots": 2},
            {"job": "j2", "step": 2, "slots": 2},
        ]
    }
    plan = assign_slots({"cpu-1": WorkerInfo("cpu", 28)}, {"j2": small, "j1": big})
    assert [a["slots"] for a in plan["cpu-1"]] == [28, 28, 28, 28]


def test_every_worker_of_a_pool_gets_every_active_step_of_its_pool() -> None:
    jobs = {"j1": running("j1", ("a",))}
    workers = {"cpu-2": WorkerInfo("cpu", 2), "cpu-1": WorkerInfo("cpu", 2)}
    plan = assign_slots(workers, jobs)
    assert list(plan) == ["cpu-1", "cpu-2"]
    assert (
        plan["cpu-1"]
        == plan["cpu-2"]
        == [
            {"job": "j1", "step": 1, "slots": 2},
            {"job": "j1", "step": 3, "slots": 2},
        ]
    )


def test_gpu_steps_go_to_gpu_workers_only() -> None:
    jobs = {"j1": running("j1", ("a",))}
    workers = {"cpu-1": WorkerInfo("cpu", 4), "gpu-1": WorkerInfo("gpu", 3)}
    plan = assign_slots(workers, jobs)
    assert plan == {
        "cpu-1": [{"job": "j1", "step": 1, "slots": 4}, {"job": "j1", "step": 3, "slots": 4}],
        "gpu-1": [{"job": "j1", "step": 2, "slots": 3}],
    }


def test_steps_of_a_pool_without_live_workers_are_given_to_nobody() -> None:
    jobs = {"j1": running("j1", ("a",))}
    plan = assign_slots({"cpu-1": WorkerInfo("cpu", 4)}, jobs)
    assert [a["step"] for a in plan["cpu-1"]] == [1, 3]
    assert jobs["j1"].state().error == "no live gpu worker"  # the job says what it waits for
    assert assign_slots({}, jobs) == {}
    assert jobs["j1"].state().error == "no live cpu worker, no live gpu worker"
    assign_slots({"cpu-1": WorkerInfo("cpu", 4), "gpu-1": WorkerInfo("gpu", 1)}, jobs)
    assert jobs["j1"].state().error == ""


def test_finished_and_unstarted_jobs_get_no_slots() -> None:
    unstarted = JobTracker("j2")
    unstarted.on_done(done("a", 1, ("a0",), job="j2"))
    jobs = {"j1": finished_job("j1"), "j2": unstarted}
    workers = {"cpu-1": WorkerInfo("cpu", 4), "gpu-1": WorkerInfo("gpu", 1)}
    assert assign_slots(workers, jobs) == {"cpu-1": [], "gpu-1": []}

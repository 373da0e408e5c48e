"""The coordinator's `/metrics`: every series is exactly what the team snapshots say."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gristmill.bus import JobState, StepCounts, WorkerState
from services.coordinator.api import Backlog
from services.coordinator.metrics import TeamSnapshot, render

READ = StepCounts(
    name="read+filter",
    published=5,
    done=2,
    failed=1,
    items_in=100,
    items_out=80,
    items_dropped=20,
    dropped_by={"WordCountFilter": 15, "exact_duplicate_removal": 5},
)
WRITE = StepCounts(name="jsonl_writer", published=2, done=2, items_in=80, items_out=80)

WEB = TeamSnapshot(
    team="web",
    jobs=[
        JobState(job="j1", state="running", tasks_failed=1, steps=[READ, WRITE]),
        # more done and failed than published: a result overtook its parent's announcement
        JobState(
            job="j2",
            state="completed_with_failures",
            tasks_failed=1,
            steps=[StepCounts(name="read", published=1, done=1, failed=1)],
        ),
    ],
    backlog={"j1": [Backlog(step=0, name="read+filter", pending=7, ack_pending=2)]},
    throughput={"j1": [12.5, 0.25]},
    workers=[
        WorkerState(worker="w1", pool="cpu", slots=4, at=0.0),
        WorkerState(worker="w2", pool="gpu", slots=1, at=0.0),
        WorkerState(worker="w3", pool="cpu", slots=2, at=0.0),
    ],
)
CODE = TeamSnapshot(team="code", jobs=[], backlog={}, throughput={}, workers=[])


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def step(job: str, index: int, name: str, **more: str) -> tuple[tuple[str, str], ...]:
    return tuple(
        sorted({"team": "web", "job": job, "step": str(index), "step_name": name, **more}.items())
    )


def test_every_series_is_what_the_snapshot_says():
    assert samples(render([WEB, CODE])) == {
        ("gristmill_jobs", (("state", "pending"), ("team", "web"))): 0.0,
        ("gristmill_jobs", (("state", "running"), ("team", "web"))): 1.0,
        ("gristmill_jobs", (("state", "completed"), ("team", "web"))): 0.0,
        ("gristmill_jobs", (("state", "completed_with_failures"), ("team", "web"))): 1.0,
        ("gristmill_jobs", (("state", "failed"), ("team", "web"))): 0.0,
        ("gristmill_jobs", (("state", "pending"), ("team", "code"))): 0.0,
        ("gristmill_jobs", (("state", "running"), ("team", "code"))): 0.0,
        ("gristmill_jobs", (("state", "completed"), ("team", "code"))): 0.0,
        ("gristmill_jobs", (("state", "completed_with_failures"), ("team", "code"))): 0.0,
        ("gristmill_jobs", (("state", "failed"), ("team", "code"))): 0.0,
        ("gristmill_step_tasks", step("j1", 0, "read+filter", state="published")): 5.0,
        ("gristmill_step_tasks", step("j1", 0, "read+filter", state="pending")): 2.0,
        ("gristmill_step_tasks", step("j1", 0, "read+filter", state="done")): 2.0,
        ("gristmill_step_tasks", step("j1", 0, "read+filter", state="failed")): 1.0,
        ("gristmill_step_tasks", step("j1", 1, "jsonl_writer", state="published")): 2.0,
        ("gristmill_step_tasks", step("j1", 1, "jsonl_writer", state="pending")): 0.0,
        ("gristmill_step_tasks", step("j1", 1, "jsonl_writer", state="done")): 2.0,
        ("gristmill_step_tasks", step("j1", 1, "jsonl_writer", state="failed")): 0.0,
        ("gristmill_step_tasks", step("j2", 0, "read", state="published")): 1.0,
        ("gristmill_step_tasks", step("j2", 0, "read", state="pending")): 0.0,
        ("gristmill_step_tasks", step("j2", 0, "read", state="done")): 1.0,
        ("gristmill_step_tasks", step("j2", 0, "read", state="failed")): 1.0,
        ("gristmill_step_documents_total", step("j1", 0, "read+filter", kind="in")): 100.0,
        ("gristmill_step_documents_total", step("j1", 0, "read+filter", kind="out")): 80.0,
        ("gristmill_step_documents_total", step("j1", 0, "read+filter", kind="dropped")): 20.0,
        ("gristmill_step_documents_total", step("j1", 1, "jsonl_writer", kind="in")): 80.0,
        ("gristmill_step_documents_total", step("j1", 1, "jsonl_writer", kind="out")): 80.0,
        ("gristmill_step_documents_total", step("j1", 1, "jsonl_writer", kind="dropped")): 0.0,
        ("gristmill_step_documents_total", step("j2", 0, "read", kind="in")): 0.0,
        ("gristmill_step_documents_total", step("j2", 0, "read", kind="out")): 0.0,
        ("gristmill_step_documents_total", step("j2", 0, "read", kind="dropped")): 0.0,
        (
            "gristmill_step_dropped_documents_total",
            step("j1", 0, "read+filter", stage="WordCountFilter"),
        ): 15.0,
        (
            "gristmill_step_dropped_documents_total",
            step("j1", 0, "read+filter", stage="exact_duplicate_removal"),
        ): 5.0,
        ("gristmill_step_throughput_documents_per_second", step("j1", 0, "read+filter")): 12.5,
        ("gristmill_step_throughput_documents_per_second", step("j1", 1, "jsonl_writer")): 0.25,
        ("gristmill_consumer_backlog_messages", step("j1", 0, "read+filter", kind="pending")): 7.0,
        (
            "gristmill_consumer_backlog_messages",
            step("j1", 0, "read+filter", kind="ack_pending"),
        ): 2.0,
        ("gristmill_dead_letters", (("job", "j1"), ("team", "web"))): 1.0,
        ("gristmill_dead_letters", (("job", "j2"), ("team", "web"))): 1.0,
        ("gristmill_workers", (("pool", "cpu"), ("team", "web"))): 2.0,
        ("gristmill_workers", (("pool", "gpu"), ("team", "web"))): 1.0,
        ("gristmill_workers", (("pool", "cpu"), ("team", "code"))): 0.0,
        ("gristmill_worker_slots", (("pool", "cpu"), ("team", "web"))): 6.0,
        ("gristmill_worker_slots", (("pool", "gpu"), ("team", "web"))): 1.0,
        ("gristmill_worker_slots", (("pool", "cpu"), ("team", "code"))): 0.0,
    }


def test_series_have_their_documented_types():
    families = {f.name: f.type for f in text_string_to_metric_families(render([WEB]).decode())}
    assert families == {
        "gristmill_jobs": "gauge",
        "gristmill_step_tasks": "gauge",
        "gristmill_step_documents": "counter",
        "gristmill_step_dropped_documents": "counter",
        "gristmill_step_throughput_documents_per_second": "gauge",
        "gristmill_consumer_backlog_messages": "gauge",
        "gristmill_dead_letters": "gauge",
        "gristmill_workers": "gauge",
        "gristmill_worker_slots": "gauge",
        "gristmill_desired_workers": "gauge",
    }


def test_the_desired_workers_per_pool_are_the_last_decisions():
    lines = list(render([], {"cpu": 3, "gpu": 1}).decode().splitlines())
    assert [line for line in lines if not line.startswith("#")] == [
        'gristmill_desired_workers{pool="cpu"} 3.0',
        'gristmill_desired_workers{pool="gpu"} 1.0',
    ]


def test_no_teams_render_only_the_help_and_type_lines():
    assert [line for line in render([]).decode().splitlines() if not line.startswith("#")] == []

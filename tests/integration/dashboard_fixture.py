"""The coordinator's dashboard over canned JSON, to develop and browser-test it without a service.

The coordinator's own HTTP app (`create_http_app`, tokens and all) over `CannedViews`, fixed
answers for one team: a finished job whose second step has one poisoned task, and a running one.
Run it with `python tests/integration/dashboard_fixture.py [PORT]` and open the URL it prints
(`/#token=TOKEN`).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from gristmill.bus import JobState, WorkerState
from gristmill.credentials import Credentials, TokenTable
from services.coordinator.api import Backlog
from services.coordinator.http import create_http_app

__all__ = ["FAILED_JOB", "POISON_ERROR", "RUNNING_JOB", "TEAM", "TOKEN", "CannedViews", "app"]

TEAM = "web"
TOKEN = "dashboard-fixture-token"  # the team's bearer token: open /#token=<it>
FAILED_JOB = "j-20240611-7f3a"
RUNNING_JOB = "j-20240611-9c01"
POISON_ERROR = "ValueError: poison document p-1"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"

T0 = time.time() - 90.0  # the finished job was submitted 90 s before the fixture started
NS = 1_000_000_000


def _step(name: str, published: int, done: int, failed: int, **items: Any) -> dict[str, Any]:
    return {"name": name, "published": published, "done": done, "failed": failed, **items}


def _job(job: str, state: str, steps: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """A JobState whose totals are the sums over `steps`."""
    return {
        "job": job,
        "state": state,
        "pipeline": fields.pop("pipeline", "clean-web-text"),
        "tasks_published": sum(s["published"] for s in steps),
        "tasks_done": sum(s["done"] for s in steps),
        "tasks_failed": sum(s["failed"] for s in steps),
        "items_in": steps[0]["items_in"],
        "items_out": steps[-1]["items_out"],
        "items_dropped": sum(s["items_dropped"] for s in steps),
        "steps": steps,
        "retries": 0,
        "error": "",
        "finished_at": None,
        "trace_id": TRACE_ID,
        **fields,
    }


FAILED = _job(
    FAILED_JOB,
    "completed_with_failures",
    [
        _step("read_jsonl", 2, 2, 0, items_in=4000, items_out=4000, items_dropped=0, dropped_by={}),
        _step(
            "quality_filter",
            2,
            1,
            1,
            items_in=2000,
            items_out=1310,
            items_dropped=690,
            dropped_by={"WordCountFilter": 412, "RepeatingTopNGramsFilter": 201, "UrlRatio": 77},
        ),
    ],
    retries=2,
    submitted_at=T0,
    finished_at=T0 + 42.0,
)
RUNNING = _job(
    RUNNING_JOB,
    "running",
    [
        _step(
            "read_jsonl", 8, 5, 0, items_in=10000, items_out=10000, items_dropped=0, dropped_by={}
        ),
        _step(
            "dedup",
            5,
            2,
            0,
            items_in=4000,
            items_out=3650,
            items_dropped=350,
            dropped_by={"ExactDedup": 350},
        ),
    ],
    pipeline="dedup-web",
    submitted_at=T0 + 60.0,
    trace_id="",
)

TRACEBACK = """Traceback (most recent call last):
  File "/app/services/worker/runner.py", line 88, in run_task
    out = stage.process(batch)
  File "/app/shared/gristmill/stages/text/filters/quality.py", line 41, in process
    raise ValueError(f"poison document {doc_id}")
ValueError: poison document p-1
"""


def _history(start: float, seconds: int, rate: float) -> list[dict[str, Any]]:
    """One sample a second, documents out ramping up to `rate` per second."""
    samples, out = [], 0.0
    for i in range(seconds + 1):
        out += rate * min(1.0, i / 8) * (0.8 + 0.2 * ((i * 7) % 5) / 4)
        samples.append(
            {
                "t": start + i,
                "tasks_done": i // 10,
                "items_in": int(out * 1.4),
                "items_out": int(out),
            }
        )
    return samples


DETAILS: dict[str, dict[str, Any]] = {
    FAILED_JOB: {
        "history": _history(T0, 42, 35.0),
        "backlog": [
            {"step": 0, "name": "read_jsonl", "pending": 0, "ack_pending": 0},
            {"step": 1, "name": "quality_filter", "pending": 0, "ack_pending": 0},
        ],
        "failures": [
            {
                "task_id": "t-quality-1",
                "step": 1,
                "error": POISON_ERROR,
                "traceback": TRACEBACK,
                "attempts": 3,
                "worker": "worker-cpu-2",
            }
        ],
    },
    RUNNING_JOB: {
        "history": _history(T0 + 60.0, 30, 120.0),
        "backlog": [
            {"step": 0, "name": "read_jsonl", "pending": 3, "ack_pending": 2},
            {"step": 1, "name": "dedup", "pending": 1, "ack_pending": 2},
        ],
        "failures": [],
    },
}


def _span(
    name: str, span_id: str, parent: str | None, start: float, end: float, **extra: Any
) -> dict[str, Any]:
    """A span `start`..`end` seconds after the job's submission."""
    return {
        "name": name,
        "span_id": span_id,
        "parent_span_id": parent,
        "start_ns": int((T0 + start) * NS),
        "end_ns": int((T0 + end) * NS),
        "status": extra.pop("status", "ok"),
        "attributes": extra.pop("attributes", {}),
        "events": extra.pop("events", []),
        "links": extra.pop("links", []),
        "critical": extra.pop("critical", False),
    }


def _task_attrs(step: int, step_name: str, task: str, attempt: int, worker: str) -> dict[str, Any]:
    return {
        "gm.step": step,
        "gm.step_name": step_name,
        "gm.task": task,
        "gm.attempt": attempt,
        "gm.worker": worker,
        "gm.items_in": 2000,
    }


SPANS = [
    _span("job " + FAILED_JOB, "a000000000000001", None, 0.0, 42.0, critical=True),
    _span("plan", "a000000000000002", "a000000000000001", 0.0, 0.4, critical=True),
    _span(
        "task read_jsonl",
        "a000000000000003",
        "a000000000000001",
        0.5,
        9.0,
        critical=True,
        attributes=_task_attrs(0, "read_jsonl", "t-read-0", 1, "worker-cpu-1"),
    ),
    _span("store.read", "a000000000000004", "a000000000000003", 0.6, 3.1, critical=True),
    _span("store.write", "a000000000000005", "a000000000000003", 7.8, 8.7, critical=True),
    _span("publish", "a000000000000006", "a000000000000003", 8.7, 8.9, critical=True),
    _span(
        "task quality_filter",
        "a000000000000007",
        "a000000000000001",
        9.2,
        24.0,
        critical=True,
        attributes=_task_attrs(1, "quality_filter", "t-quality-0", 1, "worker-cpu-1"),
        links=[
            {
                "span_id": "a000000000000003",
                "trace_id": TRACE_ID,
                "attributes": {"gm.link": "parent_task"},
            }
        ],
    ),
    _span("store.write", "a000000000000008", "a000000000000007", 22.1, 23.8, critical=True),
    _span(
        "task quality_filter",
        "a000000000000009",
        "a000000000000001",
        9.4,
        13.5,
        status="error",
        attributes=_task_attrs(1, "quality_filter", "t-quality-1", 3, "worker-cpu-2"),
        events=[
            {
                "name": "exception",
                "time_ns": int((T0 + 13.4) * NS),
                "attributes": {
                    "exception.type": "ValueError",
                    "exception.message": "poison document p-1",
                    "exception.stacktrace": TRACEBACK,
                },
            }
        ],
        links=[
            {
                "span_id": "a000000000000003",
                "trace_id": TRACE_ID,
                "attributes": {"gm.link": "parent_task"},
            }
        ],
    ),
    _span("store.read", "a00000000000000a", "a000000000000009", 9.5, 10.8),
    _span("dead_letter", "a00000000000000b", "a000000000000009", 13.45, 13.5),
]


class CannedViews:
    """The coordinator's `JobViews` over the canned answers above, for team `TEAM`."""

    def states(self, team: str) -> list[JobState]:
        """Every job, oldest submission first."""
        return [JobState.model_validate(FAILED), JobState.model_validate(RUNNING)]

    async def detail(self, team: str, job: str) -> dict[str, Any] | None:
        """One job's state with its history, backlog and failures."""
        state = {FAILED_JOB: FAILED, RUNNING_JOB: RUNNING}.get(job)
        return {**state, **DETAILS[job]} if state is not None else None

    async def trace(self, team: str, job: str, task: str | None = None) -> dict[str, Any]:
        """The failed job's trace (only one task's spans and their children with `task`); the
        running job has none recorded."""
        if job != FAILED_JOB:
            return {"trace_id": "", "spans": []}
        spans = SPANS
        if task:
            keep = {s["span_id"] for s in SPANS if s["attributes"].get("gm.task") == task}
            spans = [s for s in SPANS if s["span_id"] in keep or s["parent_span_id"] in keep]
        return {"trace_id": TRACE_ID, "spans": spans}

    async def why(self, team: str, job: str, doc_id: str) -> dict[str, Any] | None:
        """No document has a recorded fate here."""
        return None

    async def backlog(self, team: str, job: str) -> list[Backlog]:
        """The running job's backlog, for `/metrics`."""
        return [Backlog(**b) for b in DETAILS[job]["backlog"]] if job == RUNNING_JOB else []

    def throughput(self, team: str, job: str) -> list[float]:
        """No throughput samples."""
        return []

    def workers(self, team: str) -> list[WorkerState]:
        """Two CPU workers and a GPU one, as they last reported."""
        now = time.time()
        running = [f"{RUNNING_JOB}/0", f"{RUNNING_JOB}/1"]
        return [
            WorkerState(
                worker="worker-cpu-1", pool="cpu", slots=4, running=2, steps=running, at=now - 1
            ),
            WorkerState(
                worker="worker-cpu-2", pool="cpu", slots=4, running=1, steps=running[:1], at=now - 2
            ),
            WorkerState(worker="worker-gpu-0", pool="gpu", slots=1, actors_idle=1, at=now - 1),
        ]

    def scaling(self) -> dict[str, Any]:
        """A fixed pool (no autoscaling) and no decision yet."""
        return {"autoscaled": {}, "decisions": []}

    def desired_workers(self) -> dict[str, int]:
        """No decision yet."""
        return {}


TOKENS = TokenTable.of([Credentials("team", TEAM, TEAM, "unused", TOKEN)])
app = create_http_app(CannedViews(), (TEAM,), lambda: True, TOKENS)  # type: ignore[arg-type]

if __name__ == "__main__":
    import uvicorn

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
    print(f"dashboard: http://127.0.0.1:{port}/#token={TOKEN}", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port)

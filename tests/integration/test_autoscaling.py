"""Autoscaling on the real thing: an embedded service with `--min-workers 1 --max-workers 3`
(real NATS, real Ray, real worker processes started and drained by the supervisor).

A job whose middle step is 10x slower than the others grows the pool to its max, ends with most
planned slots on that step, loses and duplicates nothing when scale-down drains workers, and
the pool returns to its minimum once idle. (How much faster than a fixed even split it is, is
`bench/autoscaling.py`'s to measure; the figures are in bench/RESULTS.md.)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from gristmill import Pipeline
from gristmill.executors.service import ServiceExecutor
from gristmill.service_cli import describe_workers

from service_helpers import client_call, finished, run_in_thread, service_under, until
from service_stages import FanOutRows, SleepEach

pytestmark = pytest.mark.integration

TASKS = 40


def slow_middle() -> Pipeline:
    """FanOut(40) -> 0.05 s -> 0.5 s -> 0.05 s per task: the middle step is 10x slower."""
    return Pipeline(
        "slow-middle", [FanOutRows(TASKS), SleepEach(0.05), SleepEach(0.5), SleepEach(0.05)]
    )


def test_a_slow_middle_step_grows_the_pool_takes_most_slots_and_the_pool_shrinks_when_idle(
    tmp_path: Path,
) -> None:
    with service_under(
        tmp_path,
        bounds={"cpu": (1, 3)},
        slots=2,
        scale_down_after_s=2.0,
        scale_grace_s=1.0,
    ) as service:
        assert service.workers_running() == ["cpu-0"]
        executor = ServiceExecutor(service.url, {"timeout_s": 240})
        outputs = slow_middle().run(executor, fuse=False)

        # Every document once: 40 in, 40 out, none dropped or dead-lettered.
        rows = sorted(n for task in outputs for n in task.to_pandas()["n"].tolist())
        assert rows == list(range(TASKS))
        state = executor.state
        assert state is not None
        assert (state.state, state.tasks_failed, state.items_dropped) == ("completed", 0, 0)
        assert [s.done for s in state.steps] == [1, TASKS, TASKS, TASKS]

        answer = client_call(service, lambda c: c.workers())
        decisions = list(reversed(answer["decisions"]))  # oldest first
        assert answer["autoscaled"] == {"cpu": [1, 3]}
        # The pool went to its max while the job ran ...
        assert max(d["workers"]["cpu"] for d in decisions) == 3
        grown = next(d for d in decisions if d["workers"]["cpu"] == 3)
        assert re.match(r"cpu: [12] -> 3 workers: \d+ slots wanted \(", grown["reasons"][0])
        # ... and once the slow step was measured, it had most of the planned slots.
        planned = [
            {s["step"]: s["slots"] for s in d["slots"] if s["job"] == executor.job}
            for d in decisions
        ]
        # ... and once it was measured, the slow step got most of the pool's 6 slots: more
        # than the other two steps together.
        busy = [p for p in planned if p.get(2)]
        peak = max(busy, key=lambda p: p[2])
        assert peak[2] >= 4, planned
        assert peak[2] > peak.get(1, 0) + peak.get(3, 0), planned

        # Idle: back to the minimum, the others drained by the supervisor, never restarted.
        until(lambda: len(service.workers_running()) == 1, "the pool to shrink to 1", 90)
        shrunk = client_call(service, lambda c: c.workers())
        assert shrunk["decisions"][0]["workers"] == {"cpu": 1, "gpu": 0}
        assert any("draining" in r for d in shrunk["decisions"] for r in d["reasons"])

        def drained() -> list[str]:
            return [
                line for line in service.scaled if line.endswith("drained and exited with status 0")
            ]

        until(lambda: len(drained()) == 2, "both drained workers to exit", 60)
        until(
            lambda: len(client_call(service, lambda c: c.workers())["workers"]) == 1,
            "the drained workers' heartbeats to go",
            30,
        )
        text = describe_workers(client_call(service, lambda c: c.workers()))
        assert "autoscaled: cpu 1..3 workers" in text
        assert "  why    cpu: " in text

        # The shrunk pool still runs jobs (and grows again for them).
        again = ServiceExecutor(service.url, {"timeout_s": 240})
        outputs = slow_middle().run(again, fuse=False)
        assert sorted(n for t in outputs for n in t.to_pandas()["n"].tolist()) == list(range(TASKS))


def test_a_worker_drained_mid_job_hands_its_tasks_back_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    """Scale-down's drain, mid-job: a worker told to stop while it runs tasks finishes what
    runs and hands back what it fetched; the job still ends with every document once."""
    from gristmill.bus import ScalingDecision

    with service_under(
        tmp_path, bounds={"cpu": (1, 2)}, slots=2, scale_down_after_s=600.0, drain_s=5.0
    ) as service:
        pipeline = Pipeline("drain", [FanOutRows(30), SleepEach(0.3)])
        executor = ServiceExecutor(service.url, {"timeout_s": 240})
        thread = run_in_thread(pipeline, executor)
        until(
            lambda: any(
                w["worker"] == "cpu-1" and w["running"] > 0
                for w in client_call(service, lambda c: c.workers())["workers"]
            ),
            "the second worker to run some of the job's tasks",
            120,
        )
        # What the coordinator sends when it removes cpu-1.
        service.scale(
            ScalingDecision(seq=99, at=0.0, workers={"cpu": 1}, remove={"cpu": ["cpu-1"]})
        )
        outputs = finished(thread, 240)
        rows = sorted(n for t in outputs for n in t.to_pandas()["n"].tolist())
        assert rows == list(range(30))
        state = executor.state
        assert state is not None
        assert (state.state, state.tasks_failed, state.steps[1].done) == ("completed", 0, 30)
        until(lambda: "cpu-1 drained and exited with status 0" in service.scaled, "cpu-1 to exit")
        assert "cpu-1" not in service.workers_running()
        log = (service.state_dir / "logs" / "cpu-1.log").read_text()
        assert "worker cpu-1 draining" in log

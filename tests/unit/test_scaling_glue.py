"""Around the scaling policy: what the coordinator measures for it, how a cycle publishes its
decisions, the even split the bench compares with, a draining worker's slots, and the
settings and CLI flags that turn autoscaling on."""

from __future__ import annotations

import argparse
import asyncio

import pytest
from test_service_tracking import done, started

from gristmill.bus import StepInfo, WorkerState
from gristmill.config import ServiceSettings
from gristmill.errors import GristmillError
from gristmill.service_cli import _bounds, describe_workers
from services.coordinator.scaling.cycle import ScalingCycle, job_loads, worker_loads
from services.coordinator.tracking import JobTracker, WorkerInfo, assign_slots, even_split
from services.worker.fairshare import Draining, FairSlots

THREE = [StepInfo(name=n, pool="cpu") for n in ("fan", "a", "b", "c")]


def running_job() -> JobTracker:
    tracker = JobTracker("j1")
    tracker.on_started(started(initial=("f",), first_step=0, steps=THREE))
    tracker.on_done(done("f", 0, tuple(f"t{i}" for i in range(4))))
    tracker.on_done(done("t0", 1, ("u0",)))
    return tracker


def test_the_tracker_measures_seconds_per_task_and_fan_out():
    tracker = running_job()
    assert tracker.seconds_per_task(0) == pytest.approx(0.5)  # `done` says 0.5 s a task
    assert tracker.seconds_per_task(2) is None  # nothing ran there yet
    assert tracker.fan_out(1) == 4.0  # one fan task made four
    assert tracker.fan_out(2) == 1.0


def test_job_loads_are_the_running_jobs_from_their_first_step():
    loads = job_loads({"web": {"j1": running_job(), "done": JobTracker("done")}})
    assert len(loads) == 1
    (load,) = loads
    assert (load.team, load.job) == ("web", "j1")
    assert [(s.step, s.backlog, s.fan_out) for s in load.steps] == [
        (0, 0, 1.0),
        (1, 3, 4.0),
        (2, 1, 1.0),
        (3, 0, 1.0),
    ]


def settings(tmp_path, **extra) -> ServiceSettings:  # type: ignore[no-untyped-def]
    return ServiceSettings(
        nats_url="nats://x", state_dir=tmp_path, store_root=str(tmp_path), teams=("web",), **extra
    )


def beat(worker: str, **extra) -> WorkerState:  # type: ignore[no-untyped-def]
    return WorkerState(worker=worker, pool="cpu", slots=2, at=100.0, ready_at=1.0, **extra)


def test_a_cycle_publishes_only_decisions_that_changed_and_keeps_the_last_ones(tmp_path):
    cycle = ScalingCycle(settings(tmp_path, pool_bounds=(("cpu", 1, 3),)))
    jobs = {"web": {"j1": running_job()}}
    first = cycle.run(jobs, {"cpu-0": beat("cpu-0")}, now=100.0)
    assert first is not None
    # Steps 1, 2, 3 want a slot each (step 1's 1.5 s of work is not worth a second): 2 workers.
    assert (first.seq, first.workers) == (1, {"cpu": 2, "gpu": 0})
    assert cycle.run(jobs, {"cpu-0": beat("cpu-0")}, now=101.0) is None or cycle.seq == 2
    view = cycle.view()
    assert view["autoscaled"] == {"cpu": [1, 3]}
    assert view["decisions"][0]["seq"] == cycle.seq


def test_a_pool_without_bounds_keeps_the_size_it_has(tmp_path):
    cycle = ScalingCycle(settings(tmp_path))
    decision = cycle.run({"web": {"j1": running_job()}}, {"cpu-0": beat("cpu-0")}, now=100.0)
    assert decision is not None
    assert decision.workers == {"cpu": 1, "gpu": 0}
    assert cycle.view()["autoscaled"] == {}


def test_a_measured_set_up_time_reaches_the_policy(tmp_path):
    tracker = JobTracker("j1")
    tracker.on_started(started(initial=("f",), first_step=0, steps=THREE))
    tracker.on_done(done("f", 0, tuple(f"t{i}" for i in range(40))))
    tracker.on_done(done("t0", 1, ("u0",)))
    jobs = {"web": {"j1": tracker}}
    wanted = []
    for setup in ({}, {"j1/1": 60.0}):
        cycle = ScalingCycle(settings(tmp_path, pool_bounds=(("cpu", 0, 50),)))
        cycle.run(jobs, {"cpu-0": beat("cpu-0", setup_s=setup)}, now=100.0)
        assert cycle.decision is not None
        wanted.append(cycle.decision.workers["cpu"])
    # Step 1: 39 tasks of 0.5 s. Starting a slot takes 5 s: 4 slots are worth it, and steps 2
    # and 3 one each (6 slots, 3 workers); with a 60 s set-up only one is (3 slots, 2 workers).
    assert wanted == [3, 2]


def test_the_even_split_gives_each_active_step_an_equal_part_of_the_slots():
    workers = {f"w{i}": WorkerInfo("cpu", 2) for i in range(3)}
    active = [("j", 1, "cpu"), ("j", 2, "cpu"), ("j", 3, "cpu")]
    assert even_split(workers, active) == {
        "w0": [{"job": "j", "step": 1, "slots": 2}],
        "w1": [{"job": "j", "step": 2, "slots": 2}],
        "w2": [{"job": "j", "step": 3, "slots": 2}],
    }
    four = [("j", 0, "cpu"), *active]
    assert even_split(workers, four) == {
        "w0": [{"job": "j", "step": 0, "slots": 2}],
        "w1": [{"job": "j", "step": 1, "slots": 2}],
        "w2": [{"job": "j", "step": 2, "slots": 1}, {"job": "j", "step": 3, "slots": 1}],
    }


def test_assign_slots_splits_evenly_only_when_asked():
    jobs = {"j1": running_job()}
    workers = {"w0": WorkerInfo("cpu", 2), "w1": WorkerInfo("cpu", 2)}
    shared = assign_slots(workers, jobs)
    assert shared["w0"] == [{"job": "j1", "step": s, "slots": 2} for s in (1, 2, 3)]
    # Fixed for the job's life: the fan-out step (done) keeps its part.
    even = assign_slots(workers, jobs, "even")
    assert even == {
        "w0": [{"job": "j1", "step": 0, "slots": 1}, {"job": "j1", "step": 1, "slots": 1}],
        "w1": [{"job": "j1", "step": 2, "slots": 1}, {"job": "j1", "step": 3, "slots": 1}],
    }


def test_a_draining_worker_fails_every_waiting_and_later_ticket_and_lets_runs_end():
    async def scenario() -> None:
        slots = FairSlots(1)
        held = await slots.acquire("web", "j")
        waiting = slots.ask("web", "j")
        slots.drain()
        with pytest.raises(Draining, match="the worker is draining"):
            await waiting.granted()
        waiting.cancel()  # what the batch does as it ends: nothing left to withdraw
        later = slots.ask("web", "j")
        with pytest.raises(Draining):
            await later.granted()
        await slots.release(held)  # the run under way ends as usual
        assert slots.used == 0

    asyncio.run(scenario())


def test_autoscaling_bounds_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GRISTMILL_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("GRISTMILL_MIN_WORKERS", "1")
    monkeypatch.setenv("GRISTMILL_MAX_WORKERS", "3")
    monkeypatch.setenv("GRISTMILL_GPU_MIN_WORKERS", "0")
    monkeypatch.setenv("GRISTMILL_GPU_MAX_WORKERS", "2")
    loaded = ServiceSettings.from_env("nats://x")
    assert loaded.pool_bounds == (("cpu", 1, 3), ("gpu", 0, 2))
    assert ServiceSettings.from_env("nats://x").env()["GRISTMILL_GPU_MAX_WORKERS"] == "2"
    monkeypatch.setenv("GRISTMILL_MIN_WORKERS", "4")
    with pytest.raises(GristmillError, match=r"GRISTMILL_MIN_WORKERS \(4\) is above"):
        ServiceSettings.from_env("nats://x")
    monkeypatch.delenv("GRISTMILL_MAX_WORKERS")
    with pytest.raises(GristmillError, match="GRISTMILL_MIN_WORKERS needs GRISTMILL_MAX_WORKERS"):
        ServiceSettings.from_env("nats://x")


def test_a_step_split_other_than_shared_or_even_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("GRISTMILL_STEP_SPLIT", "random")
    with pytest.raises(GristmillError, match="GRISTMILL_STEP_SPLIT must be one of shared, even"):
        ServiceSettings.from_env("nats://x")


def flags(**given: int | None) -> argparse.Namespace:
    names = ("min_workers", "max_workers", "gpu_min_workers", "gpu_max_workers")
    return argparse.Namespace(**{name: given.get(name) for name in names})


def test_up_flags_give_each_pool_its_bounds(tmp_path):
    plain = settings(tmp_path)
    assert _bounds(flags(), plain) == {}
    assert _bounds(flags(min_workers=1, max_workers=3), plain) == {"cpu": (1, 3)}
    assert _bounds(flags(max_workers=3, gpu_max_workers=2), plain) == {
        "cpu": (1, 3),
        "gpu": (0, 2),
    }
    with pytest.raises(GristmillError, match="--gpu-min-workers needs --gpu-max-workers too"):
        _bounds(flags(gpu_min_workers=1), plain)
    with pytest.raises(GristmillError, match=r"--min-workers \(4\) must be between 0 and"):
        _bounds(flags(min_workers=4, max_workers=3), plain)


def test_gristmill_workers_shows_each_worker_and_the_reasons():
    answer = {
        "workers": [
            {"worker": "cpu-0", "pool": "cpu", "slots": 2, "running": 1, "steps": ["j/1"]},
            {"worker": "cpu-1", "pool": "cpu", "slots": 2, "status": "draining", "steps": []},
            {"worker": "gpu-0", "pool": "gpu", "slots": 1, "setting_up": 1, "steps": ["j/2"]},
        ],
        "autoscaled": {"cpu": [1, 3]},
        "decisions": [
            {
                "seq": 2,
                "at": 0.0,
                "workers": {"cpu": 2, "gpu": 1},
                "slots": [{"team": "t", "job": "j", "step": 1, "slots": 3}],
                "reasons": ["cpu: 3 -> 2 workers (demand needs 1): draining cpu-1"],
            }
        ],
    }
    lines = describe_workers(answer).splitlines()
    assert lines[1:4] == [
        "cpu-0                    cpu      2    1  ready     j/1",
        "cpu-1                    cpu      2    0  draining  -",
        "gpu-0                    gpu      1    0  setting up j/2",
    ]
    assert lines[4] == "autoscaled: cpu 1..3 workers"
    assert lines[5].startswith("decision 2 (")
    assert lines[5].endswith("s ago): cpu 2, gpu 1")
    assert lines[6:] == [
        "  slots  j/1: 3",
        "  why    cpu: 3 -> 2 workers (demand needs 1): draining cpu-1",
    ]


def test_a_worker_the_supervisor_runs_that_does_not_beat_yet_is_starting(tmp_path):
    cycle = ScalingCycle(settings(tmp_path, pool_bounds=(("cpu", 1, 3),)))
    beats = {"cpu-0": beat("cpu-0")}
    cycle.run({"web": {}}, beats, now=100.0, starting={"cpu-0": "cpu", "cpu-1": "cpu"})
    assert cycle.starting == {"cpu-1": "cpu"}
    loads = worker_loads(beats, 100.0, {"cpu-0": "cpu", "cpu-1": "cpu"})
    assert [(w.worker, w.status) for w in loads] == [("cpu-1", "starting"), ("cpu-0", "ready")]
    # Starting, it counts toward the pool's size (and is never removed), but offers no slot.
    assert cycle.decision is not None
    assert cycle.decision.remove == {}
    assert "holding 2 workers (1 would do)" in cycle.decision.reasons[0]

"""The autoscaling simulator (`bench/autoscale_sim.py`) on tiny scenarios: every task is done
exactly once, no worker is removed while it starts or sets up an actor, pools end at their
min after the idle tail, quarter-GPU slots share a GPU, and a run repeats itself per seed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from services.coordinator.scaling.policy import PoolLimits

BENCH = Path(__file__).resolve().parents[2] / "bench" / "autoscale_sim.py"


def _load() -> ModuleType:
    """The simulator, by path: bench/ is not a package."""
    spec = importlib.util.spec_from_file_location("autoscale_sim", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while they are made
    spec.loader.exec_module(module)
    return module


sim = _load()

POOLS = {
    "cpu": PoolLimits("cpu", 1, 8, slots_per_worker=4),
    "gpu": PoolLimits("gpu", 0, 2, slots_per_worker=1, gpus_per_worker=1.0),
}


def _chain_with_setup() -> object:
    """Two jobs of a fast step feeding one whose actor takes 20 s to set up, then a sink; the
    second comes once the pool has had time to shrink after the first."""
    steps = (sim.Step(0.2), sim.Step(1.0, setup_s=20.0), sim.Step(0.2))
    jobs = (
        sim.Job("alpha", "first", 0.0, 150, steps),
        sim.Job("beta", "second", 150.0, 100, steps),
    )
    return sim.Scenario("tiny", jobs, POOLS, {"alpha": 3.0, "beta": 1.0}, tail_s=300.0)


def test_every_task_is_done_once_and_no_worker_goes_while_it_sets_up() -> None:
    scenario = _chain_with_setup()
    run = sim.Simulation(scenario, seed=3)
    out = run.run()

    assert out.tasks_published == (150 + 100) * 3
    assert out.tasks_done == out.tasks_published
    assert out.tasks_run_twice == 0
    assert all(j.done_at is not None for j in run.jobs)
    assert out.removed > 0  # the pool did shrink, between the jobs and after them
    assert out.removed_bad == {"starting": 0, "setting_up": 0, "in_grace": 0}
    assert out.setups > 0


def test_pools_end_at_their_min_after_the_idle_tail() -> None:
    run = sim.Simulation(_chain_with_setup(), seed=3)
    out = run.run()

    assert out.at_min
    assert out.tail_s is not None
    assert out.tail_s <= 300.0
    assert len(run.pools["cpu"].workers) == POOLS["cpu"].min == 1
    assert len(run.pools["gpu"].workers) == POOLS["gpu"].min == 0


def test_four_quarter_gpu_slots_share_one_gpu() -> None:
    steps = (sim.Step(0.5), sim.Step(4.0, pool="gpu", gpus=0.25))
    scenario = sim.Scenario("tiny-gpu", (sim.Job("solo", "gpu", 0.0, 60, steps),), POOLS)
    out = sim.simulate(scenario, seed=1)

    assert out.tasks_done == out.tasks_published == 120
    assert out.most_per_gpu == 4
    assert out.gpu_overfull == 0
    assert out.gpu_cycles > 0
    assert out.gpu_mismatches == 0
    assert out.gpu_peak == (8, 2)  # 8 quarter-GPU slots on the pool's 2 GPUs


def test_the_same_seed_gives_the_same_run() -> None:
    first = sim.simulate(_chain_with_setup(), seed=5)
    again = sim.simulate(_chain_with_setup(), seed=5)
    other = sim.simulate(_chain_with_setup(), seed=6)

    assert (first.makespan_s, first.events, first.removed) == (
        again.makespan_s,
        again.events,
        again.removed,
    )
    assert first.makespan_s != other.makespan_s


def test_a_flip_is_a_change_of_direction_within_its_window() -> None:
    series = [(0.0, 1), (1.0, 5), (2.0, 4), (30.0, 8), (31.0, 8), (32.0, 2)]

    found = sim.flips(series, window_s=10.0)

    # 1 -> 5 -> 4: a flip 1 s after the rise (4 of 5 and 1 of 5: a wiggle, not taken back);
    # 4 -> 8 came 28 s after the fall, outside the window; 8 -> 2 is 2 s after that rise.
    assert [(f.first_at, f.at, f.first, f.then) for f in found] == [
        (1.0, 2.0, 4, -1),
        (30.0, 32.0, 4, -6),
    ]
    assert [f.material() for f in found] == [False, True]

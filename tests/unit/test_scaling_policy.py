"""The scaling policy (`services.coordinator.scaling.policy`): one test per behaviour it
promises, on exact inputs and outputs."""

from __future__ import annotations

import pytest

from gristmill.bus import ScalingDecision
from gristmill.process_scaling import reconcile
from services.coordinator.scaling.placement import place
from services.coordinator.scaling.policy import (
    JobLoad,
    Knobs,
    Memory,
    PoolLimits,
    StepLoad,
    WorkerLoad,
    decide,
    ewma,
    pack_gpus,
    water_fill,
)

CPU = {"cpu": PoolLimits("cpu", min=1, max=3, slots_per_worker=2)}


def chain(backlogs: tuple[int, int, int], seconds=(0.1, 1.0, 0.1), job="j", team="t") -> JobLoad:
    """A 3-step CPU job whose middle step is 10x slower than the others."""
    return JobLoad(
        team,
        job,
        tuple(
            StepLoad(i, "cpu", b, s)
            for i, (b, s) in enumerate(zip(backlogs, seconds, strict=False))
        ),
    )


def ready(count: int, pool="cpu", slots=2, ready_for_s=100.0, running=0) -> list[WorkerLoad]:
    return [
        WorkerLoad(f"{pool}-{i}", pool, slots, running=running, ready_for_s=ready_for_s)
        for i in range(count)
    ]


def test_the_slowest_step_gets_slots_until_the_chain_is_balanced():
    decision, _ = decide([chain((20, 20, 20))], ready(3), CPU, {}, Memory(), now=0.0)
    # Work left: 20 x 0.1 s, 20 x 1.0 s + upstream's 20, 60 x 0.1 s: every step one slot, the
    # rest to the slow step.
    assert decision.slots == {("t", "j", 0): 1, ("t", "j", 1): 4, ("t", "j", 2): 1}
    assert decision.workers == {"cpu": 3}


def test_a_job_grows_the_pool_to_its_max_at_once_and_says_why():
    decision, _ = decide([chain((20, 20, 20))], ready(1), CPU, {}, Memory(), now=0.0)
    assert decision.workers == {"cpu": 3}
    assert decision.reasons == (
        "cpu: 1 -> 3 workers: 11 slots wanted (t/j/1: 8, t/j/2: 2, t/j/0: 1), capped at max 3",
    )


def test_an_unmeasured_step_ramps_up_by_one_slot_per_cycle():
    job = JobLoad("t", "j", (StepLoad(0, "cpu", 10, seconds_per_task=None),))
    pools = {"cpu": PoolLimits("cpu", min=0, max=10, slots_per_worker=1)}
    memory, seen = Memory(), []
    workers: list[WorkerLoad] = []
    for cycle in range(4):
        decision, memory = decide([job], workers, pools, {}, memory, now=float(cycle))
        seen.append((decision.workers["cpu"], decision.slots.get(("t", "j", 0), 0)))
        workers = ready(decision.workers["cpu"], slots=1)
    assert seen == [(1, 0), (2, 1), (3, 2), (4, 3)]


def test_a_slot_is_worth_starting_only_for_work_longer_than_a_start():
    # 100 tasks of 0.01 s: a second of work; a new worker takes 5 s to start: one slot does.
    job = JobLoad("t", "j", (StepLoad(0, "cpu", 100, seconds_per_task=0.01),))
    pools = {"cpu": PoolLimits("cpu", min=0, max=50, slots_per_worker=1)}
    decision, _ = decide([job], [], pools, {}, Memory(), now=0.0)
    assert decision.workers == {"cpu": 1}
    # The same tasks of 1 s: 100 s of work, 20 slots of 5 s each.
    job = JobLoad("t", "j", (StepLoad(0, "cpu", 100, seconds_per_task=1.0),))
    decision, _ = decide([job], [], pools, {}, Memory(), now=0.0)
    assert decision.workers == {"cpu": 20}


def test_a_long_set_up_makes_fewer_slots_worth_starting():
    pools = {"gpu": PoolLimits("gpu", min=0, max=50)}
    quick = JobLoad("t", "j", (StepLoad(0, "gpu", 100, 1.0, setup_s=0.0),))
    slow = JobLoad("t", "j", (StepLoad(0, "gpu", 100, 1.0, setup_s=60.0),))
    assert decide([quick], [], pools, {}, Memory(), 0.0)[0].workers == {"gpu": 20}
    assert decide([slow], [], pools, {}, Memory(), 0.0)[0].workers == {"gpu": 2}  # 100 / 65


def test_demand_below_the_pool_shrinks_it_only_after_the_hold_and_one_step_at_a_time():
    pools = {"cpu": PoolLimits("cpu", min=0, max=20, slots_per_worker=1)}
    knobs = Knobs(scale_down_after_s=30.0, max_down_fraction=0.25)
    workers = ready(20, slots=1)
    memory, sizes = Memory(), []
    for now in (0.0, 10.0, 29.0, 30.0, 31.0, 32.0):
        decision, memory = decide([], workers, pools, {}, memory, now, knobs)
        sizes.append(decision.workers["cpu"])
        going = set(decision.remove.get("cpu", ()))
        workers = [w for w in workers if w.worker not in going]
    # 20 -> 2 in one cycle is what cosmos-xenna's users saw; here a quarter a cycle at most.
    assert sizes == [20, 20, 20, 15, 12, 9]


def test_a_worker_setting_up_is_never_removed_and_a_new_one_has_its_grace():
    pools = {"cpu": PoolLimits("cpu", min=0, max=4, slots_per_worker=1)}
    workers = [
        WorkerLoad("cpu-0", "cpu", 1, ready_for_s=100.0, setting_up=True),
        WorkerLoad("cpu-1", "cpu", 1, ready_for_s=10.0),  # ready 10 s ago: in its grace
        WorkerLoad("cpu-2", "cpu", 1, ready_for_s=100.0),
        WorkerLoad("cpu-3", "cpu", 1, status="starting"),
    ]
    knobs = Knobs(scale_down_after_s=0.0, grace_s=30.0, max_down_fraction=1.0)
    decision, _ = decide([], workers, pools, {}, Memory(), 0.0, knobs)
    assert decision.remove == {"cpu": ("cpu-2",)}
    assert decision.workers == {"cpu": 3}
    assert decision.reasons[-1] == (
        "cpu: keeping 3 workers more than 0: they are starting, setting up, or within 30 s of "
        "being ready"
    )


def test_the_tail_of_a_job_keeps_the_gpu_workers_its_queue_needs():
    # The source has run dry (no backlog); the GPU step still holds 8 tasks of 10 s each.
    pools = {
        "cpu": PoolLimits("cpu", min=0, max=20, slots_per_worker=1),
        "gpu": PoolLimits("gpu", min=0, max=8),
    }
    job = JobLoad("t", "j", (StepLoad(0, "cpu", 0, 0.1), StepLoad(1, "gpu", 8, 10.0, gpus=1.0)))
    workers = ready(20, slots=1) + ready(8, pool="gpu", slots=1, running=1)
    knobs = Knobs(scale_down_after_s=0.0, max_down_fraction=1.0)
    decision, _ = decide([job], workers, pools, {}, Memory(), 0.0, knobs)
    assert decision.workers["gpu"] == 8  # 80 s of work: all 8 stay
    assert decision.slots[("t", "j", 1)] == 8
    assert decision.workers["cpu"] == 0  # the drained CPU step lets its workers go
    # With 2 of the 8 tasks left, both running, the two workers running them stay although
    # the "worth it" rule alone (2 s of work) would keep one; the idle ones go.
    job = JobLoad("t", "j", (StepLoad(0, "cpu", 0, 0.1), StepLoad(1, "gpu", 2, 1.0, gpus=1.0)))
    gpus = [WorkerLoad(f"gpu-{i}", "gpu", 1, running=int(i < 2), ready_for_s=100) for i in range(8)]
    decision, _ = decide([job], gpus, pools, {}, Memory(), 0.0, knobs)
    assert decision.workers["gpu"] == 2
    assert decision.remove["gpu"] == tuple(f"gpu-{i}" for i in range(2, 8))
    assert decision.reasons[-1] == "gpu: not below 2 workers: 2 tasks queued or running"


def test_no_thrash_when_demand_flickers():
    pools = {"cpu": PoolLimits("cpu", min=1, max=10, slots_per_worker=1)}
    busy = JobLoad("t", "j", (StepLoad(0, "cpu", 50, 1.0),))
    workers = ready(1, slots=1)
    memory, sizes = Memory(), []
    for cycle in range(40):  # demand there, gone for 2 s, there again, ...
        jobs = [busy] if cycle % 3 else []
        decision, memory = decide(jobs, workers, pools, {}, memory, float(cycle))
        sizes.append(decision.workers["cpu"])
        going = set(decision.remove.get("cpu", ()))
        workers = [w for w in workers if w.worker not in going]
        workers += ready(decision.workers["cpu"] - len(workers), slots=1)
    flips = sum(
        1 for a, b, c in zip(sizes, sizes[1:], sizes[2:], strict=False) if (b - a) * (c - b) < 0
    )
    assert sizes[0] == 1
    assert set(sizes[1:]) == {10}
    assert flips == 0


def test_a_step_with_tasks_gives_up_one_slot_per_cycle_and_a_drained_one_all_at_once():
    memory = Memory(slots={("t", "j", 0): 5, ("t", "j", 1): 1})
    pools = {"cpu": PoolLimits("cpu", min=3, max=3, slots_per_worker=2)}
    # Step 0 still has tasks but step 1 is now the slow one: step 0 gives up one slot.
    job = JobLoad("t", "j", (StepLoad(0, "cpu", 10, 0.1), StepLoad(1, "cpu", 40, 1.0)))
    decision, _ = decide([job], ready(3), pools, {}, memory, 0.0)
    assert decision.slots == {("t", "j", 0): 4, ("t", "j", 1): 2}
    # Step 0 has no task left: its slots go at once.
    job = JobLoad("t", "j", (StepLoad(0, "cpu", 0, 0.1), StepLoad(1, "cpu", 40, 1.0)))
    decision, _ = decide([job], ready(3), pools, {}, memory, 0.0)
    assert decision.slots == {("t", "j", 1): 6}


def test_quarter_gpu_slots_share_one_gpu_before_a_second_is_used():
    assert pack_gpus([0.25] * 4) == [[0.25] * 4]
    assert pack_gpus([0.25] * 5) == [[0.25] * 4, [0.25]]
    assert pack_gpus([1.0, 0.5, 0.5, 0.3, 0]) == [[1.0], [1.0], [0.5, 0.5], [0.3]]
    pools = {"gpu": PoolLimits("gpu", min=0, max=4)}
    job = JobLoad("t", "j", (StepLoad(0, "gpu", 4, 10.0, gpus=0.25),))
    decision, _ = decide([job], [], pools, {}, Memory(), 0.0)
    assert decision.gpus == {"gpu": 1}
    assert decision.workers == {"gpu": 1}
    decision, _ = decide([job], ready(1, pool="gpu", slots=1), pools, {}, Memory(), 0.0)
    assert decision.slots == {("t", "j", 0): 4}  # four quarter-GPU actors on the one GPU


def test_teams_share_a_full_pool_by_weight():
    pools = {"cpu": PoolLimits("cpu", min=4, max=4, slots_per_worker=2)}
    one = lambda team: JobLoad(team, "j", (StepLoad(0, "cpu", 100, 1.0),))  # noqa: E731
    decision, _ = decide(
        [one("alpha"), one("beta")], ready(4), pools, {"alpha": 3.0, "beta": 1.0}, Memory(), 0.0
    )
    assert decision.slots == {("alpha", "j", 0): 6, ("beta", "j", 0): 2}


def test_a_team_that_needs_less_than_its_share_leaves_the_rest_to_the_others():
    pools = {"cpu": PoolLimits("cpu", min=4, max=4, slots_per_worker=2)}
    small = JobLoad("alpha", "j", (StepLoad(0, "cpu", 1, 1.0),))
    big = JobLoad("beta", "j", (StepLoad(0, "cpu", 100, 1.0),))
    decision, _ = decide([small, big], ready(4), pools, {"alpha": 3.0}, Memory(), 0.0)
    assert decision.slots == {("alpha", "j", 0): 1, ("beta", "j", 0): 7}


def test_a_higher_priority_job_of_a_team_is_served_first():
    pools = {"cpu": PoolLimits("cpu", min=1, max=1, slots_per_worker=4)}
    low = JobLoad("t", "low", (StepLoad(0, "cpu", 100, 1.0),), priority=0)
    high = JobLoad("t", "high", (StepLoad(0, "cpu", 100, 1.0),), priority=5)
    decision, _ = decide([low, high], ready(1, slots=4), pools, {}, Memory(), 0.0)
    assert decision.slots == {("t", "high", 0): 3, ("t", "low", 0): 1}  # one each first


def test_an_idle_pool_with_min_zero_scales_to_zero_and_a_job_brings_it_back():
    pools = {"gpu": PoolLimits("gpu", min=0, max=2)}
    knobs = Knobs(scale_down_after_s=0.0, max_down_fraction=1.0)
    decision, _ = decide([], ready(2, pool="gpu", slots=1), pools, {}, Memory(), 0.0, knobs)
    assert decision.workers == {"gpu": 0}
    assert decision.remove == {"gpu": ("gpu-0", "gpu-1")}
    job = JobLoad("t", "j", (StepLoad(0, "gpu", 3, None),))
    decision, _ = decide([job], [], pools, {}, Memory(), 0.0, knobs)
    assert decision.workers == {"gpu": 1}


def test_fan_out_counts_upstream_tasks_into_downstream_work():
    # Step 0 makes 10 tasks per task: its 2 tasks left are 20 of step 1's.
    pools = {"cpu": PoolLimits("cpu", min=0, max=100, slots_per_worker=1)}
    job = JobLoad("t", "j", (StepLoad(0, "cpu", 2, 1.0), StepLoad(1, "cpu", 5, 10.0, fan_out=10.0)))
    decision, _ = decide([job], ready(4, slots=1), pools, {}, Memory(), 0.0)
    # 25 tasks x 10 s of step 1 against 2 s of step 0: step 1 takes all it can use now (5).
    assert decision.slots == {("t", "j", 0): 1, ("t", "j", 1): 3}
    assert decision.workers == {"cpu": 6}  # 1 + 5: what the steps can use now


def test_throughput_follows_a_rise_fast_and_a_fall_slowly():
    assert ewma(None, 10.0) == 10.0
    assert ewma(10.0, 20.0) == 15.0
    assert ewma(10.0, 0.0) == 9.0


def test_water_fill_gives_what_one_leaves_to_the_others_by_weight():
    assert water_fill(10, {"a": 2, "b": 100, "c": 100}, {"b": 3, "c": 1}) == {
        "a": 2.0,
        "b": 6.0,
        "c": 2.0,
    }


def test_bad_limits_are_refused_with_the_pool_named():
    with pytest.raises(ValueError, match=r"pool cpu: need 0 <= min <= max workers, got 3\.\.1"):
        PoolLimits("cpu", min=3, max=1)
    with pytest.raises(ValueError, match=r"max_down_fraction must be in \(0, 1\], not 0"):
        Knobs(max_down_fraction=0)


def _decision(workers: dict[str, int], remove: dict[str, list[str]] | None = None):
    return ScalingDecision(seq=1, at=0.0, workers=workers, remove=remove or {})


def test_the_supervisor_starts_what_the_decision_wants_within_its_bounds():
    running = {"cpu": ["cpu-0"]}
    plan = reconcile(running, _decision({"cpu": 3}), {"cpu": (1, 3)})
    assert (plan.start, plan.stop) == ({"cpu": 2}, ())
    plan = reconcile(running, _decision({"cpu": 9}), {"cpu": (1, 3)})
    assert plan.start == {"cpu": 2}  # never past its own max


def test_the_supervisor_stops_only_the_named_workers_and_never_below_its_min():
    running = {"cpu": ["cpu-0", "cpu-1", "cpu-2"]}
    decision = _decision({"cpu": 1}, {"cpu": ["cpu-1", "cpu-2", "cpu-9"]})
    plan = reconcile(running, decision, {"cpu": (1, 3)})
    assert (plan.start, plan.stop) == ({}, ("cpu-1", "cpu-2"))
    plan = reconcile(running, decision, {"cpu": (2, 3)})
    assert (plan.start, plan.stop) == ({}, ("cpu-1",))
    # A pool the supervisor does not scale is left alone.
    assert reconcile(running, decision, {}) == reconcile({}, decision, {})


def test_a_pool_growing_toward_its_last_decision_is_not_shrunk_on_the_way():
    # The last decision wanted 3; one of them still starts (it beats for no one yet) and the
    # demand is now for 1: the decision stays at 3 until the hold, rather than flipping.
    pools = {"cpu": PoolLimits("cpu", min=1, max=3, slots_per_worker=2)}
    job = JobLoad("t", "j", (StepLoad(0, "cpu", 4, 2.0),))
    memory = Memory(desired={"cpu": 3})
    decision, memory = decide([job], ready(2), pools, {}, memory, 0.0)
    assert decision.workers == {"cpu": 3}
    assert decision.remove == {}
    assert decision.reasons[0].startswith("cpu: holding 3 workers (1 would do)")


def test_slots_are_placed_on_as_few_workers_as_they_fill_and_stay_where_they_were():
    a, b, c = ("t", "j", 1), ("t", "j", 2), ("t", "j", 3)
    workers = {"w0": 2, "w1": 2, "w2": 2}
    first = place({a: 1, b: 4, c: 1}, workers)
    assert first == {"w0": {b: 2}, "w1": {b: 2}, "w2": {a: 1, c: 1}}
    # The slow step needs fewer, the last more: what stays, stays where it was.
    second = place({b: 3, c: 3}, workers, first)
    assert second == {"w0": {b: 2}, "w1": {b: 1, c: 1}, "w2": {c: 2}}
    # More slots planned than the workers have: what fits is placed.
    assert place({a: 10}, {"w0": 2}) == {"w0": {a: 2}}
    assert place({a: 1}, {}) == {}


def test_at_scale_a_new_teams_job_gets_its_share_within_a_few_dozen_cycles():
    # 1,000 workers of 4 slots all held by beta's job; alpha's job arrives, weights 3:1.
    pools = {"cpu": PoolLimits("cpu", min=1000, max=1000, slots_per_worker=4)}
    steps = lambda backlogs: tuple(  # noqa: E731
        StepLoad(i, "cpu", b, s)
        for i, (b, s) in enumerate(zip(backlogs, (1.0, 10.0, 1.0), strict=True))
    )
    beta = JobLoad("beta", "b", steps((10_000, 8_000, 5_000)))
    alpha = JobLoad("alpha", "a", steps((20_000, 0, 0)))
    memory = Memory(slots={("beta", "b", 0): 300, ("beta", "b", 1): 3400, ("beta", "b", 2): 300})
    workers = ready(1000, slots=4, running=4, ready_for_s=300.0)
    weights = {"alpha": 3.0, "beta": 1.0}
    for _ in range(40):
        decision, memory = decide([alpha, beta], workers, pools, weights, memory, 0.0)
    alpha_slots = sum(n for (team, _, _), n in decision.slots.items() if team == "alpha")
    assert alpha_slots >= 2_500  # of the 3,000 its weight gives it (one slot a cycle: 43)


def test_a_step_keeps_the_slots_it_holds_and_uses_idle_workers_despite_a_long_set_up():
    # 173 workers of 3 slots, one step with a 60 s set-up and 10,000 tasks of 2 s each: a new
    # worker is worth 20,000 s / 65 s, but the slots it holds (actors set up) stay, and the
    # idle workers already there are worth their set-up only.
    pools = {"cpu": PoolLimits("cpu", min=0, max=200, slots_per_worker=3)}
    job = JobLoad("t", "j", (StepLoad(0, "cpu", 10_000, 2.0, setup_s=60.0),))
    workers = ready(173, slots=3, running=3)
    memory = Memory(slots={("t", "j", 0): 519})
    decision, _ = decide([job], workers, pools, {}, memory, 0.0)
    assert decision.slots == {("t", "j", 0): 519}
    assert decision.workers == {"cpu": 173}


def test_thousands_of_equal_gpu_fractions_pack_by_count():
    # A GPU step asks for thousands of slots of one shape: they fill the GPUs opened for
    # larger fractions first, then four to a GPU.
    bins = pack_gpus([0.25] * 20_000 + [0.5] * 3 + [1.0])
    assert len(bins) == 1 + 2 + 5_000
    assert bins[:3] == [[1.0], [0.5, 0.5], [0.5, 0.25, 0.25]]
    assert [len(b) for b in bins[3:]] == [4] * 4_999 + [2]


def test_an_unmeasured_step_does_not_take_the_slots_of_a_measured_slow_one():
    # Step 2 is measured slow (0.5 s) with 80 tasks; step 3 has just got its first 36 and none
    # has finished: step 3 is taken to be as quick as the job's quickest step, so step 2 keeps
    # its slots while step 3 ramps on what is left.
    pools = {"cpu": PoolLimits("cpu", min=4, max=4, slots_per_worker=2)}
    job = JobLoad(
        "t",
        "j",
        (StepLoad(1, "cpu", 0, 0.05), StepLoad(2, "cpu", 80, 0.5), StepLoad(3, "cpu", 36, None)),
    )
    memory = Memory(slots={("t", "j", 2): 6, ("t", "j", 3): 1}, wants={("t", "j", 3): 4})
    decision, _ = decide([job], ready(4), pools, {}, memory, 0.0)
    assert decision.slots == {("t", "j", 2): 7, ("t", "j", 3): 1}

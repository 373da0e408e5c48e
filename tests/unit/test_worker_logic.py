"""The worker's plain logic: which actors it keeps, what an assignment says, how what a manifest
made becomes the next manifests, and the loops and faults around them."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from gristmill.bus import IDS_PER_PART, MAX_GROUP, DataRef, TaskEntry, TaskManifest
from gristmill.faults import FaultPlan
from gristmill.loops import keep_running
from services.worker.actors import ActorPool
from services.worker.assignments import parse_assignment
from services.worker.outcome import (
    Child,
    child_manifests,
    group_size_for,
    overlong,
    results_of,
)

SHA = "c" * 64
KEY = ("web", "fingerprint", 1)


# -- actors -----------------------------------------------------------------------------------


def test_an_actor_out_on_a_call_is_never_reaped_while_an_idle_one_of_its_step_is() -> None:
    pool = ActorPool(idle_s=10)
    pool.started(KEY)  # actor "a", busy for long
    pool.started(KEY)  # actor "b", quick
    pool.give_back(KEY, "b", now=100.0)
    assert pool.expired(now=105.0) == []
    assert pool.expired(now=111.0) == ["b"]  # b idled past idle_s; a is out, untouched
    assert (pool.busy(KEY), pool.idle_count()) == (1, 0)
    pool.give_back(KEY, "a", now=200.0)  # the long call returns: its actor is kept, not lost
    assert pool.take(KEY) == "a"
    assert pool.busy() == 1


def test_idle_actors_of_steps_no_longer_assigned_make_room_least_recently_used_first() -> None:
    pool = ActorPool(idle_s=60)
    other, old = ("web", "other", 0), ("ml", "old", 2)
    for key, actor, since in ((KEY, "a", 0.0), (other, "b", 5.0), (old, "c", 1.0)):
        pool.started(key)
        pool.give_back(key, actor, now=since)
    assert pool.make_room({KEY}, keep=4) == []  # 3 + the new one fit
    assert pool.make_room({KEY}, keep=3) == ["c"]  # the one idle longest goes
    assert pool.make_room({KEY}, keep=1) == ["b"]  # a is wanted: kept, even past the bound
    assert pool.idle_count() == 1


def test_with_no_bound_every_unwanted_idle_actor_goes_and_lost_ones_are_forgotten() -> None:
    pool = ActorPool(idle_s=60)
    other = ("web", "other", 0)
    for key, actor in ((KEY, "a"), (other, "b")):
        pool.started(key)
        pool.give_back(key, actor, now=0.0)
    assert pool.make_room({KEY}, keep=None) == ["b"]
    assert pool.take(other) is None
    pool.started(other)
    pool.lost(other)  # it died on its call
    assert (pool.busy(), pool.idle_count()) == (0, 1)


# -- assignments ------------------------------------------------------------------------------


def test_an_assignment_names_steps_and_slots_and_anything_else_is_refused() -> None:
    value = json.dumps({"steps": [{"job": "j1", "step": 2, "slots": 3}]}).encode()
    assert parse_assignment("web", value) == {("web", "j1", 2): 3}
    assert parse_assignment("web", b"") == {}
    for bad in (b"not json", b'{"nope": []}', b'{"steps": [{"job": 1, "step": 2, "slots": 3}]}'):
        with pytest.raises((ValueError, KeyError)):
            parse_assignment("web", bad)


# -- outcomes ---------------------------------------------------------------------------------


def _inline(n: int) -> DataRef:
    return DataRef(inline="eA==", rows=1, bytes=1, sha256=SHA) if n >= 0 else _stored()


def _stored() -> DataRef:
    return DataRef(uri="/store/web/j1/1/k.x.tasks", rows=100, bytes=9000, sha256=SHA)


def test_small_children_share_manifests_and_stored_ones_travel_alone() -> None:
    children = [Child(f"c{i}", "web", _inline(i), "p") for i in range(70)]
    children.insert(10, Child("big", "web", _stored(), "p"))
    made = child_manifests("j1", 2, "noop", "src", children, group_size=32)
    assert [len(m.tasks) for m in made] == [1, 32, 32, 6]
    assert made[0].key == "big"
    assert [t.task_id for m in made for t in m.tasks] == ["big"] + [f"c{i}" for i in range(70)]
    again = child_manifests("j1", 2, "noop", "src", children, group_size=32)
    assert [m.key for m in again] == [m.key for m in made]  # a retried step: the same msg ids
    other = child_manifests("j1", 2, "noop", "other-source", children, group_size=32)
    assert {m.key for m in other[1:]}.isdisjoint(m.key for m in made[1:])
    single = child_manifests("j1", 2, "noop", "src", children[:1], group_size=32)
    assert [(m.key, len(m.tasks)) for m in single] == [("c0", 1)]


def test_group_size_follows_the_measured_time_per_task() -> None:
    assert group_size_for(None) == 8
    assert group_size_for(0.0001) == MAX_GROUP
    assert group_size_for(0.01) == 5
    assert group_size_for(10.0) == 1


def test_a_group_measured_to_hold_its_slot_over_a_second_runs_task_by_task() -> None:
    assert overlong(0.25, 8)  # 2 s as one run: grouped before its step was measured
    assert not overlong(0.25, 4)  # 1 s: kept
    assert not overlong(0.01, 64)
    assert not overlong(None, 64)  # not measured yet: nothing to go by
    assert not overlong(30.0, 1)  # a single task is as small as it gets


def test_a_task_with_more_outputs_than_a_message_holds_lists_them_in_parts() -> None:
    manifest = TaskManifest(
        job="j1", step=1, step_name="fan", key="t", tasks=[TaskEntry(task_id="t", inputs=[])]
    )
    count = 2 * IDS_PER_PART + 5
    raw = {
        "ok": True,
        "output_ids": [f"c{i}" for i in range(count)],
        "datasets": ["d"] * count,
        "refs": [_inline(i) for i in range(count)],
        "items_in": 1,
        "items_out": count,
        "items_dropped": 0,
        "wall_time_s": 0.1,
    }
    results, children, parts = results_of(manifest, [raw], last=False)
    assert (results[0].output_ids, results[0].parts) == ([], 3)
    assert [(p.step, p.owner, p.part, p.parts, len(p.ids)) for p in parts] == [
        (2, "t", 0, 3, IDS_PER_PART),
        (2, "t", 1, 3, IDS_PER_PART),
        (2, "t", 2, 3, 5),
    ]
    assert [c.task_id for c in children] == raw["output_ids"]
    assert all(not p.outputs for p in parts)
    _, none, last_parts = results_of(manifest, [raw], last=True)
    assert none == []
    assert [len(p.outputs) for p in last_parts] == [IDS_PER_PART, IDS_PER_PART, 5]


# -- slots, loops, faults ---------------------------------------------------------------------


def test_a_loop_that_fails_is_logged_and_started_again(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> int:
        runs = 0
        third = asyncio.Event()

        async def flaky() -> None:
            nonlocal runs
            runs += 1
            if runs < 3:
                raise RuntimeError(f"failure {runs}")
            third.set()
            await asyncio.Event().wait()

        task = keep_running("flaky", flaky, logging.getLogger("test"), first_delay_s=0.001)
        await asyncio.wait_for(third.wait(), 5)
        task.cancel()
        return runs

    with caplog.at_level(logging.ERROR):
        assert asyncio.run(scenario()) == 3
    assert [r.getMessage() for r in caplog.records] == [
        "loop flaky failed; starting it again in 0.0 s",
        "loop flaky failed; starting it again in 0.0 s",
    ]


def test_a_fault_plan_kills_at_the_seeded_visit_of_each_incarnation_until_its_limit() -> None:
    first = FaultPlan("seed=7,kill_at=3-9,kills=2", "cpu-0", incarnation=0)
    again = FaultPlan("seed=7,kill_at=3-9,kills=2", "cpu-0", incarnation=0)
    assert first.kill_at == again.kill_at
    assert first.kill_at is not None
    assert 3 <= first.kill_at <= 9
    visits = [first.at_point("worker.acked") for _ in range(9)]
    assert visits.index(True) == first.kill_at - 1
    assert visits.count(True) == 1
    assert not any(
        FaultPlan("seed=7,kill_at=1,kills=2", "cpu-0", 2).at_point("x") for _ in range(5)
    )
    only = FaultPlan("seed=1,kill_at=1,only=planner.", "planner", 0)
    assert not only.at_point("worker.acked")
    assert only.at_point("planner.started")


def test_a_once_fault_kills_one_process_whatever_restarts(tmp_path: Path) -> None:
    marker = f"{tmp_path}/killed-once"
    plans = [FaultPlan(f"kill_at=1,once={marker}", "planner", n) for n in range(3)]
    assert [plan.at_point("planner.started") for plan in plans] == [True, False, False]

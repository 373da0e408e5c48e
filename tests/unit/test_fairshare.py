"""Fair slots: slot-time follows team weights, a late team catches up, caps and priorities
hold, and cancelled waiters leave nothing behind. Time is a fake clock that the tests move."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

import pytest

from services.worker.fairshare import FairSlots, Grant


class Clock:
    """A clock that moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run[T](scenario: Callable[[], Awaitable[T]]) -> T:
    """Run `scenario` with eager tasks: a task runs to its first wait as it is created, so what
    a test asserts right after `create_task` is already settled."""

    async def main() -> T:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
        return await scenario()

    return asyncio.run(main())


class Runs:
    """Tasks that each hold their slot for 1 s of fake time; `finish` ends them in the order they
    started, moving the clock, and returns their grants in that order."""

    def __init__(self, slots: FairSlots, clock: Clock):
        self.slots, self.clock = slots, clock
        self.granted: asyncio.Queue[Grant] = asyncio.Queue()
        self.tasks: list[asyncio.Task[None]] = []

    def submit(self, team: str, job: str = "j", n: int = 1, priority: int = 0) -> None:
        for _ in range(n):
            self.tasks.append(asyncio.create_task(self._one(team, job, priority)))

    async def _one(self, team: str, job: str, priority: int) -> None:
        self.granted.put_nowait(await self.slots.acquire(team, job, priority))

    async def finish(self, n: int) -> list[Grant]:
        done = []
        for _ in range(n):
            grant = await self.granted.get()
            self.clock.now = max(self.clock.now, grant.started_at + 1)
            await self.slots.release(grant)
            done.append(grant)
        return done

    async def stop(self) -> None:
        """Cancel the runs still waiting and end those under way."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        while not self.granted.empty():
            await self.slots.release(self.granted.get_nowait())


def shares(slots: int, weights: dict[str, float], grants: int, teams: str = "ab") -> list[str]:
    """The teams of the first `grants` runs while every team always has runs waiting."""

    async def scenario() -> list[str]:
        clock = Clock()
        runs = Runs(FairSlots(slots, weights, clock=clock), clock)
        for team in teams:
            runs.submit(team, n=grants)
        done = await runs.finish(grants)
        await runs.stop()
        assert runs.slots.used == 0  # the cancelled waiters kept no slot
        return [g.team for g in done]

    return run(scenario)


def decayed(ends: range, now: float, half_life_s: float = 60.0) -> float:
    """The usage left at `now` of 1 s runs that ended at `ends`."""
    return sum(2 ** (-(now - end) / half_life_s) for end in ends if end <= now)


def refused(message: str) -> pytest.RaisesExc[ValueError]:
    """Expect a ValueError saying exactly `message`."""
    return pytest.raises(ValueError, match=f"^{re.escape(message)}$")


def test_slot_time_follows_weights_3_to_1() -> None:
    # 300 within 1 (decay tilts shares by about a run's length over the half-life: 1/60 here)
    assert shares(1, {"a": 3, "b": 1}, 400).count("a") == 299
    # Four slots freed at one instant go to one team (a grant has no elapsed time yet), so the
    # split is exact to within a round of four.
    assert shares(4, {"a": 3, "b": 1}, 400).count("a") == 296


def test_an_unknown_team_weighs_1() -> None:
    assert shares(1, {"a": 2.0}, 30) == shares(1, {"a": 2.0, "b": 1.0}, 30)
    assert shares(1, {"a": 2.0}, 30).count("a") == 20
    assert "".join(shares(1, {}, 6)) == "ababab"


def test_a_team_arriving_late_runs_first_until_its_usage_catches_up() -> None:
    async def scenario() -> list[str]:
        clock = Clock()
        runs = Runs(FairSlots(1, clock=clock), clock)
        runs.submit("a", n=300)
        await runs.finish(100)  # a alone for 100 s; its 101st run holds the slot
        runs.submit("b", n=60)
        done = await runs.finish(80)
        await runs.stop()
        return [g.team for g in done]

    teams = run(scenario)
    # a's next turn: the first k (b runs done, at t = 101 + k) where a's usage is no more than
    # b's (a wins the tie by name).
    k = next(
        k
        for k in range(60)
        if decayed(range(1, 102), 101 + k) <= decayed(range(102, 102 + k), 101 + k)
    )
    assert k == 46
    assert teams[: k + 2] == ["a"] + ["b"] * k + ["a"]
    assert teams[1:21] == ["b"] * 20  # a late job of 20 runs waits for none of a's


def test_a_cap_bounds_a_teams_slots_and_raising_it_grants_at_once() -> None:
    async def scenario() -> None:
        clock = Clock()
        slots = FairSlots(4, clock=clock)
        runs = Runs(slots, clock)
        slots.set_cap("a", 1)
        runs.submit("a", n=3)
        assert (slots.held("a"), slots.used) == (1, 1)  # alone, with slots free: still one
        runs.submit("b", n=2)
        assert (slots.held("b"), slots.used) == (2, 3)
        slots.set_cap("a", 2)
        assert (slots.held("a"), slots.used) == (2, 4)
        slots.set_cap("a", 0)  # stops new grants; revokes nothing
        assert slots.held("a") == 2
        done = await runs.finish(4)
        assert (slots.held("a"), slots.used) == (0, 0)  # a's last waiter waits for its cap
        slots.set_cap("a", None)
        assert slots.held("a") == 1
        assert sorted(g.team for g in done) == ["a", "a", "b", "b"]
        await runs.stop()

    run(scenario)


def test_within_a_team_higher_priority_goes_first_then_the_less_used_job() -> None:
    async def scenario() -> list[str]:
        clock = Clock()
        runs = Runs(FairSlots(1, clock=clock), clock)
        runs.submit("a", "bulk", n=3)
        runs.submit("a", "urgent", n=2, priority=1)
        done = await runs.finish(5)
        await runs.stop()
        return [g.job for g in done]

    assert run(scenario) == ["bulk", "urgent", "urgent", "bulk", "bulk"]  # the first held the slot


def test_a_big_job_does_not_starve_a_small_one_of_its_team() -> None:
    async def scenario() -> str:
        clock = Clock()
        runs = Runs(FairSlots(1, clock=clock), clock)
        runs.submit("a", "x", n=50)
        await runs.finish(3)  # x's 4th run holds the slot
        runs.submit("a", "y", n=5)
        done = await runs.finish(12)
        await runs.stop()
        return "".join(g.job for g in done)

    # At t=8 y's four runs (ends 5..8) outweigh x's four (ends 1..4, 4 s older): x; at t=9 x's
    # fresh run puts it above y again.
    assert decayed(range(5, 9), 8) > decayed(range(1, 5), 8)
    assert decayed(range(5, 9), 9) < decayed(range(1, 5), 9) + 1
    assert run(scenario) == "xyyyyxyxxxxx"


def test_a_cancelled_waiter_leaves_no_trace_even_when_granted_as_it_is_cancelled() -> None:
    async def scenario() -> None:
        slots = FairSlots(1, clock=Clock())
        grant = await slots.acquire("a", "x")
        gone = asyncio.create_task(slots.acquire("a", "x"))
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        await slots.release(grant)
        assert slots.used == 0
        grant = await slots.acquire("a", "x")  # at once: the slot went to no ghost

        granted_then_cancelled = asyncio.create_task(slots.acquire("a", "x"))
        next_one = asyncio.create_task(slots.acquire("b", "y"))
        await slots.release(grant)  # granted to the first waiter, which has not run yet
        granted_then_cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await granted_then_cancelled
        assert (slots.used, slots.held("a"), slots.held("b")) == (1, 0, 1)  # given back, on to b
        assert (await next_one).team == "b"

    run(scenario)


def test_releasing_a_grant_twice_is_refused() -> None:
    async def scenario() -> None:
        slots = FairSlots(2, clock=Clock())
        grant = await slots.acquire("web", "j1")
        twin = await slots.acquire("web", "j1")  # same fields, another slot
        await slots.release(grant)
        with refused("the grant of job 'j1' of team 'web' was released twice"):
            await slots.release(grant)
        assert slots.used == 1
        await slots.release(twin)

    run(scenario)


def test_waiting_for_a_free_slot_takes_none_and_waits_only_when_all_are_held() -> None:
    async def scenario() -> None:
        slots = FairSlots(1, clock=Clock())
        await slots.wait_free()  # free: at once
        grant = await slots.acquire("a", "x")
        waiting = asyncio.create_task(slots.wait_free())
        assert not waiting.done()
        await slots.release(grant)
        await waiting
        assert slots.used == 0

    run(scenario)


def test_a_team_next_in_line_fetches_while_all_slots_are_held_by_short_runs() -> None:
    async def scenario() -> None:
        clock = Clock()
        slots = FairSlots(2, clock=clock)
        short = [await slots.acquire("a", "big", expected_s=0.25) for _ in range(2)]
        clock.now = 5.0  # a has held both slots 5 s each; b has used nothing
        turn_b = asyncio.create_task(slots.wait_turn("b"))
        assert turn_b.done()  # b is next in line: it fetches now
        # what b fetched queues at once, ending its turn
        ticket = slots.ask("b", "small", expected_s=0.25, ending_turn=True)
        assert not asyncio.create_task(slots.wait_turn("a")).done()  # b is due first
        later_b = asyncio.create_task(slots.wait_turn("b"))
        assert not later_b.done()  # one batch ready is enough
        await slots.release(short[0])
        grant = await ticket.granted()  # the freed slot went to b's batch, not to a's puller
        assert grant.team == "b"
        await asyncio.wait_for(later_b, 1.0)  # nothing of b waits, still due first: it fetches
        slots.end_turn("b")  # and finds nothing
        await slots.release(short[1])
        await slots.release(grant)

    run(scenario)


def turn_while_held(
    team: str,
    held_by: str,
    expected_s: float | None,
    cap: int | None = None,
    rival: str = "",
    rival_cap: int | None = None,
) -> bool:
    """Whether `team` may fetch at once while `held_by` has held the only slot for 5 s, in a
    run measured at `expected_s`, with `team` capped at `cap`, and team `rival` (which has
    used nothing) waiting for a slot too."""

    async def scenario() -> bool:
        clock = Clock()
        slots = FairSlots(1, clock=clock)
        slots.set_cap(team, cap)
        if rival:
            slots.set_cap(rival, rival_cap)
        grant = await slots.acquire(held_by, "big", expected_s=expected_s)
        clock.now = 5.0
        rivals = [asyncio.create_task(slots.acquire(rival, "y"))] if rival else []
        turn = asyncio.create_task(slots.wait_turn(team))
        now = turn.done()
        await slots.release(grant)
        if rival_cap == 0:
            await asyncio.wait_for(turn, 1.0)  # a free slot is every team's turn
            for task in rivals:
                task.cancel()
            await asyncio.gather(*rivals, return_exceptions=True)
            return now
        for granted in await asyncio.gather(*rivals):  # the rival's turn came first
            await slots.release(granted)
        await asyncio.wait_for(turn, 1.0)  # a free slot is every team's turn
        return now

    return run(scenario)


def test_a_batch_is_fetched_ahead_only_of_a_short_run_by_the_team_due_next() -> None:
    assert turn_while_held("b", "a", 0.25)  # the case for fetching ahead
    assert turn_while_held("a", "a", 0.25)  # alone, a team overlaps its own short runs
    assert not turn_while_held("b", "a", 3600.0)  # it frees in an hour
    assert not turn_while_held("b", "a", None)  # never measured: no promise it frees soon
    assert not turn_while_held("a", "a", 0.25, rival="b")  # b, asking too, is due first
    assert not turn_while_held("b", "a", 0.25, cap=0)  # b at its cap
    assert turn_while_held("a", "a", 0.25, rival="c", rival_cap=0)  # c, capped, is in no way


def test_a_run_measured_short_once_it_holds_its_slot_lets_the_team_due_next_fetch() -> None:
    async def scenario() -> None:
        clock = Clock()
        slots = FairSlots(1, clock=clock)
        grant = await slots.acquire("a", "big")  # fetched before its step was measured
        clock.now = 5.0
        turn_b = asyncio.create_task(slots.wait_turn("b"))
        assert not turn_b.done()  # no promise the slot frees soon
        slots.expect(grant, 0.25)  # the run learns it is one task of a step measured at 0.25 s
        assert grant.expected_s == 0.25
        await asyncio.wait_for(turn_b, 1.0)  # b fetches ahead of it now
        slots.end_turn("b")
        await slots.release(grant)

    run(scenario)


def test_a_puller_cancelled_while_it_waits_for_its_turn_leaves_no_turn_behind() -> None:
    async def scenario() -> None:
        clock = Clock()
        slots = FairSlots(1, clock=clock)
        grant = await slots.acquire("a", "big", expected_s=0.25)
        clock.now = 5.0
        rival = asyncio.create_task(
            slots.acquire("ant", "y", expected_s=0.25)
        )  # due first (a tie; by name)
        waiting = asyncio.create_task(slots.wait_turn("b"))
        assert not waiting.done()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # b has no turn left over: once ant's run is under way, b is next in line again
        await slots.release(grant)
        granted = await rival
        assert granted.team == "ant"
        await asyncio.wait_for(slots.wait_turn("b"), 1.0)
        slots.end_turn("b")
        await slots.release(granted)

    run(scenario)


def test_a_ticket_given_up_leaves_the_queue_or_passes_its_slot_on() -> None:
    async def scenario() -> None:
        slots = FairSlots(1, clock=Clock())
        held = await slots.acquire("a", "x")
        ticket = slots.ask("b", "y")
        ticket.cancel()  # left the queue: nothing waits
        ticket.cancel()  # twice is harmless
        await slots.release(held)
        assert slots.used == 0
        granted = slots.ask("b", "y")  # a free slot: granted at once
        after = slots.ask("a", "x")
        granted.cancel()  # never run in: on to the next
        assert (slots.held("b"), slots.held("a")) == (0, 1)
        grant = await after.granted()
        await slots.release(grant)
        after.cancel()  # released already: nothing more
        assert slots.used == 0

    run(scenario)


def test_a_job_no_longer_assigned_stops_counting_against_its_team() -> None:
    async def scenario() -> None:
        clock = Clock()
        slots = FairSlots(1, clock=clock)
        for job in ("old", "current"):
            grant = await slots.acquire("a", job)
            clock.now += 10
            await slots.release(grant)
        held = await slots.acquire("a", "old")  # a run of the ending job still under way
        clock.now += 2
        slots.end_job("a", "old")
        old, current = 10 * 2 ** (-12 / 60), 10 * 2 ** (-2 / 60)  # ended at 10 and 20
        assert slots.usage("a") == pytest.approx(old + current + 2)  # still counted
        await slots.release(held)  # ended: now forgotten, this run included
        assert slots.usage("a") == pytest.approx(current)
        slots.end_job("a", "current")
        slots.end_job("a", "never-ran")  # harmless
        assert slots.usage("a") == pytest.approx(0.0)

    run(scenario)


def test_usage_halves_every_half_life_and_faded_jobs_are_forgotten() -> None:
    async def scenario() -> None:
        clock = Clock()
        slots = FairSlots(1, half_life_s=10.0, clock=clock)
        for job in range(100):
            grant = await slots.acquire("a", f"job-{job}")
            clock.now += 1
            await slots.release(grant)
        assert slots.usage("a") == pytest.approx(decayed(range(1, 101), 100, 10.0))
        clock.now = 1000.0
        grant = await slots.acquire("a", "last")
        clock.now += 2
        assert slots.usage("a") == pytest.approx(2.0)  # the old runs are gone, the held one counts
        await slots.release(grant)
        clock.now += 10
        assert slots.usage("a") == pytest.approx(1.0)
        assert list(slots._jobs) == [("a", "last")]  # a months-long worker stays small

    run(scenario)


def test_invalid_slot_counts_and_weights_are_refused() -> None:
    with refused("a worker needs at least 1 slot, not 0"):
        FairSlots(0)
    with refused("the weight of team 'web' must be > 0, not -1"):
        FairSlots(1, {"web": -1})
    with refused("the weight of team 'ml' must be > 0, not 0"):
        FairSlots(1).set_weight("ml", 0)

"""Fair slots: the worker's concurrent actor runs, shared between teams by weighted fair share.

A drop-in for `Slots` whose `acquire` says who asks. Whenever a slot is free and callers
wait, it goes to one waiter:

- the team, among those waiting and below their cap, with the least usage per weight, where
  usage is the decayed finished slot-seconds of its jobs still assigned here plus the elapsed
  time of the slots it holds now (ties: team name);
- within it, the waiter of highest priority, then of the job with the least usage (jobs are
  counted like teams, unweighted), then the one that came first.

Usage decays with a half-life, as Slurm's fair-share factor does: while teams keep waiting,
slot-time follows their weights; a job that comes to a worker another team keeps busy runs
first until its team's usage catches up, so a small late job is not slowed to half speed; and
what ran a few half-lives ago no longer counts against anyone. A run is charged when it ends;
a job no longer assigned (`end_job`) is no longer charged, so a team's finished jobs do not
slow its next one.
Granting is driven by the events that can change the answer (a release, a new waiter, a cap
or weight set); nothing polls.

Fetching is paced here too (`wait_turn`): a step's puller fetches when a slot is free, or,
while all are held, one batch ahead when its team is next in line: it has nothing waiting, no
other team asking (waiting for a slot or for a turn) is due first, and a slot is held by a run
measured to be short (`AHEAD_S`; each run says how long it will be as it starts: `expect`). So
a late team keeps one batch ready and takes each slot as it frees, a team alone on the worker
overlaps its short runs, and a worker whose slots are held by long or unmeasured runs takes
nothing it cannot start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import count as counter

__all__ = ["AHEAD_S", "Draining", "FairSlots", "Grant", "Ticket"]

# Usage below this (seconds) is as good as none: the entry is forgotten once nothing refers to
# it, so a worker that runs for months keeps only the teams and jobs it ran lately.
FADED_S = 1e-3
# A team fetches ahead only where a run it would follow is expected to end within this
# (seconds): a batch held for a slot that frees in hours is one another worker lacks.
AHEAD_S = 1.0


# Equality is identity: two runs of one job started at the same instant are two grants, and
# releasing the one must not release the other.
@dataclass(eq=False)
class Grant:
    """One slot, held by a run of `job` of `team` since `started_at` (on the slots' clock)."""

    team: str
    job: str
    priority: int
    started_at: float
    # How long the run is measured to take (None: unknown); the run sets it as it starts
    # (`FairSlots.expect`), when it knows what it runs and its step may have been measured.
    expected_s: float | None = None


@dataclass
class _Usage:
    """Slot-seconds that halve every `half_life_s`, as of `stamp`; `refs` counts the waiters
    and holders that keep the entry alive."""

    value: float = 0.0
    stamp: float = 0.0
    refs: int = 0

    def at(self, now: float, half_life_s: float) -> float:
        return self.value * 2 ** (-(now - self.stamp) / half_life_s)

    def add(self, seconds: float, now: float, half_life_s: float) -> None:
        self.value = self.at(now, half_life_s) + seconds
        self.stamp = now


class Draining(Exception):
    """The worker is draining: a run not yet given a slot never gets one (its batch is handed
    back)."""


@dataclass(eq=False)
class _Waiter:
    job: str
    priority: int
    seq: int
    expected_s: float | None
    future: asyncio.Future[Grant] = field(repr=False)


@dataclass(eq=False)
class _Watcher:
    """A puller waiting for its team's turn to fetch (`team` None: for any free slot)."""

    team: str | None
    ready: Callable[[], bool]
    future: asyncio.Future[None] = field(repr=False)


class Ticket:
    """A place in the queue for one slot, taken at once (`FairSlots.ask`): `granted()` waits for
    the slot, `cancel()` leaves the queue (or gives back the slot if it came meanwhile)."""

    def __init__(self, slots: FairSlots, team: str, waiter: _Waiter):
        self._slots = slots
        self.team = team
        self._waiter = waiter

    async def granted(self) -> Grant:
        """The slot, once the policy gives it."""
        try:
            return await asyncio.shield(self._waiter.future)
        except asyncio.CancelledError:
            self.cancel()
            raise

    def cancel(self) -> None:
        """Leave the queue; a slot granted and not yet taken goes on to the next waiter."""
        self._slots._withdraw(self.team, self._waiter)


class FairSlots:
    """The worker's concurrent actor runs, `count` of them, granted to the teams that ask by
    weighted fair share with a decaying history (see the module's docstring)."""

    def __init__(
        self,
        count: int,
        weights: Mapping[str, float] | None = None,
        half_life_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if count < 1:
            raise ValueError(f"a worker needs at least 1 slot, not {count}")
        if half_life_s <= 0:
            raise ValueError(f"half_life_s must be > 0, not {half_life_s}")
        self.count = count
        self.used = 0
        self.half_life_s = half_life_s
        self._clock = clock
        self._weights: dict[str, float] = {}
        self._caps: dict[str, int] = {}
        self._teams: dict[str, _Usage] = {}
        self._jobs: dict[tuple[str, str], _Usage] = {}
        self._ended: set[tuple[str, str]] = set()  # jobs to forget once their runs end
        self._waiting: dict[str, list[_Waiter]] = {}
        self._holding: set[Grant] = set()
        self._watchers: list[_Watcher] = []
        self._turns: dict[str, int] = {}  # teams fetching in a turn: how many of their pullers
        self._seq = counter()
        self.draining = False
        for team, weight in (weights or {}).items():
            self.set_weight(team, weight)

    def set_weight(self, team: str, weight: float) -> None:
        """Give `team` a share of slot-time proportional to `weight` (unknown teams: 1.0)."""
        if not weight > 0:
            raise ValueError(f"the weight of team {team!r} must be > 0, not {weight}")
        self._weights[team] = weight
        self._grant_free_slots()

    def set_cap(self, team: str, cap: int | None) -> None:
        """Let `team` hold at most `cap` slots at once (None: no cap). A cap below what the team
        holds only stops new grants: runs under way are never revoked."""
        if cap is None:
            self._caps.pop(team, None)
        elif cap < 0:
            raise ValueError(f"the cap of team {team!r} must be >= 0 or None, not {cap}")
        else:
            self._caps[team] = cap
        self._grant_free_slots()

    def ask(
        self,
        team: str,
        job: str,
        priority: int = 0,
        expected_s: float | None = None,
        ending_turn: bool = False,
    ) -> Ticket:
        """Queue for a slot for a run of `job` of `team` (measured to take `expected_s`), now,
        ending a turn of the team's (`wait_turn`) if `ending_turn`."""
        if ending_turn:
            self._turns[team] -= 1
            if not self._turns[team]:
                del self._turns[team]
        loop = asyncio.get_running_loop()
        waiter = _Waiter(job, priority, next(self._seq), expected_s, loop.create_future())
        if self.draining:
            waiter.future.set_exception(Draining("the worker is draining"))
            return Ticket(self, team, waiter)
        self._waiting.setdefault(team, []).append(waiter)
        self._teams.setdefault(team, _Usage(stamp=self._clock())).refs += 1
        self._jobs.setdefault((team, job), _Usage(stamp=self._clock())).refs += 1
        self._grant_free_slots()
        return Ticket(self, team, waiter)

    async def acquire(
        self, team: str, job: str, priority: int = 0, expected_s: float | None = None
    ) -> Grant:
        """Take a slot for a run of `job` of `team`, waiting until the policy grants one."""
        return await self.ask(team, job, priority, expected_s).granted()

    def drain(self) -> None:
        """Grant no slot again: every ticket waiting now, and every one asked for later, fails
        with `Draining`. Runs holding slots go on to their end."""
        self.draining = True
        for team, waiters in list(self._waiting.items()):
            for waiter in waiters:
                if not waiter.future.done():
                    waiter.future.set_exception(Draining("the worker is draining"))
                    self._unref(team, waiter.job)
            del self._waiting[team]

    def _withdraw(self, team: str, waiter: _Waiter) -> None:
        if waiter.future.done() and not waiter.future.cancelled():
            if waiter.future.exception() is not None:
                return  # failed by `drain`, which took it out of the queue
            grant = waiter.future.result()
            if grant in self._holding:  # granted and not yet released: on to the next waiter
                self._release_now(grant)
            return
        if waiter.future.cancelled() or waiter not in self._waiting.get(team, ()):
            return
        waiter.future.cancel()
        self._waiting[team].remove(waiter)
        if not self._waiting[team]:
            del self._waiting[team]
        self._unref(team, waiter.job)
        self._grant_free_slots()

    async def release(self, grant: Grant) -> None:
        """Give the slot of `grant` back, charging its run to its team and job."""
        self._release_now(grant)

    def expect(self, grant: Grant, seconds: float | None) -> None:
        """The run holding `grant` is now measured to take `seconds` in all (None: unknown)."""
        grant.expected_s = seconds
        self._grant_free_slots()  # a run now known to be short may let a team fetch ahead

    async def wait_free(self) -> None:
        """Return once a slot is free (taking nothing)."""
        await self._wait_until(None, lambda: self.used < self.count)

    async def wait_turn(self, team: str) -> None:
        """Return once `team` should fetch a batch: a slot is free, or the team is next in line
        for one that frees soon (see the module's docstring). Takes nothing; the turn lasts
        until the batch asks for its slot (`ask(..., ending_turn=True)`) or `end_turn`, and
        while it lasts the team counts as asking."""
        await self._wait_until(team, lambda: self.used < self.count or self._next_in_line(team))

    def end_turn(self, team: str) -> None:
        """A turn of `team` fetched nothing."""
        self._turns[team] -= 1
        if not self._turns[team]:
            del self._turns[team]
        self._grant_free_slots()

    async def _wait_until(self, team: str | None, ready: Callable[[], bool]) -> None:
        if ready():
            self._begin_turn(team)
            return
        future = asyncio.get_running_loop().create_future()
        self._watchers.append(_Watcher(team, ready, future))
        try:
            await future
        except asyncio.CancelledError:
            # its turn came as it was cancelled (a task cancelled while it waits cancels the
            # future too: then no turn was begun)
            if future.done() and not future.cancelled() and team is not None:
                self.end_turn(team)
            self._watchers = [w for w in self._watchers if w.future is not future]
            raise

    def _begin_turn(self, team: str | None) -> None:
        if team is not None:
            self._turns[team] = self._turns.get(team, 0) + 1

    def _next_in_line(self, team: str) -> bool:
        """`team` has nothing waiting, may take more, and no other team asking is due a slot
        before it; and a slot is held by a run expected to end within `AHEAD_S`."""
        if self._asks(team) or self._turns.get(team) or not self._below_cap(team):
            return False
        if not any(g.expected_s is not None and g.expected_s <= AHEAD_S for g in self._holding):
            return False
        asking = {t for t in self._waiting if self._asks(t)} | set(self._turns)
        asking |= {w.team for w in self._watchers if w.team is not None and not w.future.done()}
        now = self._clock()
        mine = (self._due(team, now), team)
        # a team at its cap takes no slot, so it is in nobody's way
        rivals = {other for other in asking - {team} if self._below_cap(other)}
        return all(mine < (self._due(other, now), other) for other in rivals)

    def _asks(self, team: str) -> bool:
        """Whether `team` has a ticket waiting."""
        return any(not w.future.done() for w in self._waiting.get(team, ()))

    def _below_cap(self, team: str) -> bool:
        return team not in self._caps or self.held(team) < self._caps[team]

    def _due(self, team: str, now: float) -> float:
        """The team's usage per weight: the least is due the next slot."""
        return self._usage_of(team, None, now) / self._weights.get(team, 1.0)

    def held(self, team: str) -> int:
        """The slots `team` holds now."""
        return sum(1 for grant in self._holding if grant.team == team)

    def end_job(self, team: str, job: str) -> None:
        """`job` is no longer assigned here: its usage stops counting against its team (once its
        runs under way, if any, have ended)."""
        entry = self._jobs.get((team, job))
        if entry is None:
            return
        if entry.refs > 0:
            self._ended.add((team, job))
            return
        self._drop_job(team, job, self._clock())
        self._grant_free_slots()

    def _drop_job(self, team: str, job: str, now: float) -> None:
        entry = self._jobs.pop((team, job))
        self._ended.discard((team, job))
        owner = self._teams.get(team)
        if owner is not None:  # both decay alike: what is left is the team's other jobs'
            owner.value = max(
                0.0, owner.at(now, self.half_life_s) - entry.at(now, self.half_life_s)
            )
            owner.stamp = now

    def usage(self, team: str) -> float:
        """The slot-seconds `team` is charged with now: its finished runs, decayed, and the time
        its runs under way have held their slots."""
        return self._usage_of(team, None, self._clock())

    def _usage_of(self, team: str, job: str | None, now: float) -> float:
        entry = self._teams.get(team) if job is None else self._jobs.get((team, job))
        finished = entry.at(now, self.half_life_s) if entry is not None else 0.0
        running = sum(
            now - grant.started_at
            for grant in self._holding
            if grant.team == team and (job is None or grant.job == job)
        )
        return finished + running

    def _release_now(self, grant: Grant) -> None:
        if grant not in self._holding:
            raise ValueError(
                f"the grant of job {grant.job!r} of team {grant.team!r} was released twice"
            )
        now = self._clock()
        self._holding.remove(grant)
        self.used -= 1
        elapsed = now - grant.started_at
        self._teams[grant.team].add(elapsed, now, self.half_life_s)
        self._jobs[(grant.team, grant.job)].add(elapsed, now, self.half_life_s)
        self._unref(grant.team, grant.job)
        self._forget_faded(now)
        self._grant_free_slots()

    def _unref(self, team: str, job: str) -> None:
        self._teams[team].refs -= 1
        self._jobs[(team, job)].refs -= 1
        if not self._jobs[(team, job)].refs and (team, job) in self._ended:
            self._drop_job(team, job, self._clock())

    def _forget_faded(self, now: float) -> None:
        for team in _faded(self._teams, now, self.half_life_s):
            del self._teams[team]
        for job in _faded(self._jobs, now, self.half_life_s):
            del self._jobs[job]
            self._ended.discard(job)

    def _grant_free_slots(self) -> None:
        now = self._clock()
        while self.used < self.count:
            team = self._next_team(now)
            if team is None:
                break
            waiter = self._next_waiter(team, now)
            self._waiting[team].remove(waiter)
            if not self._waiting[team]:
                del self._waiting[team]
            grant = Grant(team, waiter.job, waiter.priority, now, waiter.expected_s)
            self._holding.add(grant)
            self.used += 1
            waiter.future.set_result(grant)
        for watcher in self._watchers:  # one at a time: a turn given counts for the next
            if not watcher.future.done() and watcher.ready():
                watcher.future.set_result(None)
                self._begin_turn(watcher.team)
        self._watchers = [w for w in self._watchers if not w.future.done()]

    def _next_team(self, now: float) -> str | None:
        """The team due the next slot: least usage per weight among those waiting below cap."""
        due = [
            (self._due(team, now), team)
            for team in self._waiting
            # A cancelled waiter stays listed until its task runs again; it asks for nothing.
            if self._asks(team) and self._below_cap(team)
        ]
        return min(due)[1] if due else None

    def _next_waiter(self, team: str, now: float) -> _Waiter:
        """The team's waiter due the next slot: highest priority, least-used job, first come."""
        jobs: dict[str, float] = {}
        for waiter in self._waiting[team]:
            if waiter.job not in jobs:
                jobs[waiter.job] = self._usage_of(team, waiter.job, now)
        return min(
            (w for w in self._waiting[team] if not w.future.done()),
            key=lambda w: (-w.priority, jobs[w.job], w.seq),
        )


def _faded[K](usages: dict[K, _Usage], now: float, half_life_s: float) -> list[K]:
    """The entries nothing refers to whose usage has faded to nothing."""
    return [
        key
        for key, usage in usages.items()
        if usage.refs == 0 and usage.at(now, half_life_s) < FADED_S
    ]

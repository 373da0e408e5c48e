"""Fair slots: the worker's concurrent actor runs, shared between teams by weighted fair share.

A drop-in for `Slots` whose `acquire` says who asks. Whenever a slot is free and callers
wait, it goes to one waiter:

- the team, among those waiting and below their cap, with the least usage per weight, where
  usage is its decayed finished slot-seconds plus the elapsed time of the slots it holds now
  (ties: team name);
- within it, the waiter of highest priority, then of the job with the least usage (jobs are
  counted like teams, unweighted), then the one that came first.

Usage decays with a half-life, as Slurm's fair-share factor does: while teams keep waiting,
slot-time follows their weights; a team that comes to a worker another has kept busy runs
first until its usage catches up, so a small late job is not slowed to half speed; and what
ran a few half-lives ago no longer counts against anyone. A run is charged when it ends.
Granting is driven by the events that can change the answer (a release, a new waiter, a cap
or weight set); nothing polls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import count as counter

__all__ = ["FairSlots", "Grant"]

# Usage below this (seconds) is as good as none: the entry is forgotten once nothing refers to
# it, so a worker that runs for months keeps only the teams and jobs it ran lately.
FADED_S = 1e-3


# Equality is identity: two runs of one job started at the same instant are two grants, and
# releasing the one must not release the other.
@dataclass(frozen=True, eq=False)
class Grant:
    """One slot, held by a run of `job` of `team` since `started_at` (on the slots' clock)."""

    team: str
    job: str
    priority: int
    started_at: float


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


@dataclass(eq=False)
class _Waiter:
    job: str
    priority: int
    seq: int
    future: asyncio.Future[Grant] = field(repr=False)


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
        self._waiting: dict[str, list[_Waiter]] = {}
        self._holding: set[Grant] = set()
        self._free_waiters: list[asyncio.Future[None]] = []
        self._seq = counter()
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

    async def acquire(self, team: str, job: str, priority: int = 0) -> Grant:
        """Take a slot for a run of `job` of `team`, waiting until the policy grants one."""
        waiter = _Waiter(job, priority, next(self._seq), asyncio.get_running_loop().create_future())
        self._waiting.setdefault(team, []).append(waiter)
        self._teams.setdefault(team, _Usage(stamp=self._clock())).refs += 1
        self._jobs.setdefault((team, job), _Usage(stamp=self._clock())).refs += 1
        self._grant_free_slots()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                # Granted as it was cancelled: the slot goes on to the next waiter.
                self._release_now(waiter.future.result())
            else:
                self._waiting[team].remove(waiter)
                if not self._waiting[team]:
                    del self._waiting[team]
                self._unref(team, job)
            raise

    async def release(self, grant: Grant) -> None:
        """Give the slot of `grant` back, charging its run to its team and job."""
        self._release_now(grant)

    async def wait_free(self) -> None:
        """Return once a slot is free (taking nothing)."""
        if self.used < self.count:
            return
        future = asyncio.get_running_loop().create_future()
        self._free_waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future in self._free_waiters:
                self._free_waiters.remove(future)
            raise

    def held(self, team: str) -> int:
        """The slots `team` holds now."""
        return sum(1 for grant in self._holding if grant.team == team)

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

    def _forget_faded(self, now: float) -> None:
        for team in _faded(self._teams, now, self.half_life_s):
            del self._teams[team]
        for job in _faded(self._jobs, now, self.half_life_s):
            del self._jobs[job]

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
            grant = Grant(team, waiter.job, waiter.priority, now)
            self._holding.add(grant)
            self.used += 1
            waiter.future.set_result(grant)
        if self.used < self.count:
            for future in self._free_waiters:
                if not future.done():
                    future.set_result(None)
            self._free_waiters.clear()

    def _next_team(self, now: float) -> str | None:
        """The team due the next slot: least usage per weight among those waiting below cap."""
        due = [
            (self._usage_of(team, None, now) / self._weights.get(team, 1.0), team)
            for team, waiters in self._waiting.items()
            # A cancelled waiter stays listed until its task runs again; it asks for nothing.
            if any(not w.future.done() for w in waiters)
            and (team not in self._caps or self.held(team) < self._caps[team])
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

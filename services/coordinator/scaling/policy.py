"""The scaling policy: what is measured, in; desired workers per pool and slots per step, out.
Pure: no I/O and no clock of its own (`now` is given), so the simulator in `bench/` and the
unit tests drive exactly the function the coordinator runs.

How it decides, each cycle:

1. **Work left per step.** A step's expected tasks are its own backlog (queued + running) plus
   what its upstream steps still hold, times the fan-out measured between them; its work left
   is those tasks times its measured seconds per task (per slot). Demand is work, not the rate
   flowing in: when a job's source runs dry its downstream steps keep the slots their queues
   need (cosmos-xenna's "20 -> 2 workers at the end of the source").
2. **Slots a step could use.** No more than its expected tasks, and no more than makes each
   slot worth starting: a slot should get at least the time a new one takes to start (worker
   start + the step's set-up) of work. An unmeasured step asks for one slot more than it has,
   each cycle, until it is measured.
3. **Sharing.** Each pool's slots go to teams by weight (water-filling: a team that needs less
   than its share leaves the rest to the others), within a team to jobs by priority then
   evenly, within a job to its steps in proportion to their work left, so its slowest step
   gets slots until the chain is balanced. GPU slots are packed by their fraction: four
   quarter-GPU slots share one GPU before a second is used.
4. **Workers.** A pool grows at once to what its demand needs (up to `max`). It shrinks only
   after its demand has stayed below its size for `scale_down_after_s`, never below what its
   running and queued tasks can keep busy, by at most `max_down_fraction` of it per cycle, and
   never by a worker still starting, setting up an actor, or within `grace_s` of being ready.
   Each change, and each change held back, comes with its reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

__all__ = [
    "Decision",
    "JobLoad",
    "Knobs",
    "Memory",
    "PoolLimits",
    "StepKey",
    "StepLoad",
    "WorkerLoad",
    "decide",
    "ewma",
    "pack_gpus",
    "water_fill",
]

StepKey = tuple[str, str, int]  # team, job, step
WorkerStatus = Literal["starting", "ready", "draining"]


@dataclass(frozen=True)
class Knobs:
    """The policy's settings (docs/autoscaling.md has them with their defaults)."""

    worker_start_s: float = 5.0  # a new worker process joins after about this long
    grace_s: float = 30.0  # a worker just ready is not removed for this long
    scale_down_after_s: float = 30.0  # demand below the pool's size this long: shrink
    max_down_fraction: float = 0.25  # a pool loses at most this part of its workers a cycle
    # A step with work gives up at most this part of its slots a cycle (at least one).
    rebalance_fraction: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.max_down_fraction <= 1:
            raise ValueError(f"max_down_fraction must be in (0, 1], not {self.max_down_fraction}")
        for name in ("worker_start_s", "grace_s", "scale_down_after_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, not {getattr(self, name)}")
        if not 0 < self.rebalance_fraction <= 1:
            raise ValueError(f"rebalance_fraction must be in (0, 1], not {self.rebalance_fraction}")


@dataclass(frozen=True)
class StepLoad:
    """One step of a running job, as measured now."""

    step: int
    pool: str
    backlog: int  # tasks queued or running (pending + ack pending)
    seconds_per_task: float | None = None  # per slot, smoothed (`ewma`); None: unmeasured
    fan_out: float = 1.0  # tasks this step gets per task of the step before it (measured)
    setup_s: float = 0.0  # how long its actor takes to set up (load a model, say)
    gpus: float = 0.0  # what one slot takes of a GPU (GPU pool only; 0 counts as 1)


@dataclass(frozen=True)
class JobLoad:
    """A running job: its team, priority and steps (from the first one not yet done)."""

    team: str
    job: str
    steps: tuple[StepLoad, ...]
    priority: int = 0


@dataclass(frozen=True)
class PoolLimits:
    """A pool's bounds: `min`..`max` workers (0 allowed: scale to zero), each with
    `slots_per_worker` slots (CPU) or `gpus_per_worker` GPUs (GPU)."""

    name: str
    min: int = 0
    max: int = 1
    slots_per_worker: int = 1
    gpus_per_worker: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.min <= self.max:
            raise ValueError(
                f"pool {self.name}: need 0 <= min <= max workers, got {self.min}..{self.max}"
            )
        if self.slots_per_worker < 1 or self.gpus_per_worker <= 0:
            raise ValueError(f"pool {self.name}: a worker needs slots (or GPUs) to offer")

    @property
    def gpu(self) -> bool:
        """Whether this pool's capacity is counted in GPUs."""
        return self.name == "gpu"


@dataclass(frozen=True)
class WorkerLoad:
    """One worker as its heartbeat (or its supervisor, while it starts) describes it."""

    worker: str
    pool: str
    slots: int
    status: WorkerStatus = "ready"
    running: int = 0  # tasks running on it now
    ready_for_s: float = 0.0  # since it became ready
    setting_up: bool = False  # an actor of it is being set up (loading a model)


@dataclass
class Memory:
    """What the policy carries from one cycle to the next (hysteresis, ramps)."""

    slots: dict[StepKey, int] = field(default_factory=dict)
    wants: dict[StepKey, int] = field(default_factory=dict)  # slots each step asked for
    desired: dict[str, int] = field(default_factory=dict)
    below_since: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """What the policy wants: workers per pool, slots per step (over each pool's ready
    workers), the workers to drain, GPUs per pool, and why."""

    at: float
    workers: dict[str, int]
    slots: dict[StepKey, int]
    remove: dict[str, tuple[str, ...]]
    gpus: dict[str, int]
    reasons: tuple[str, ...]

    def changed_from(self, other: Decision | None) -> bool:
        """Whether this decision asks for something `other` did not."""
        return other is None or (self.workers, self.slots, self.remove) != (
            other.workers,
            other.slots,
            other.remove,
        )


def ewma(previous: float | None, sample: float, up: float = 0.5, down: float = 0.1) -> float:
    """A throughput estimate that follows a rise fast (`up`) and a fall slowly (`down`): a
    worker that got faster is believed at once; one slow task does not halve a step's rate."""
    if previous is None:
        return sample
    weight = up if sample > previous else down
    return previous + weight * (sample - previous)


def water_fill(
    capacity: float, demands: Mapping[str, float], weights: Mapping[str, float]
) -> dict[str, float]:
    """`capacity` shared by weight, no one getting more than it asks for; what one leaves goes
    to the others by their weights (max-min fairness). Returns fractional shares."""
    shares = dict.fromkeys(demands, 0.0)
    open_ = {k for k, d in demands.items() if d > 0}
    left = float(capacity)
    while open_ and left > 1e-9:
        total = sum(weights.get(k, 1.0) for k in open_)
        offer = {k: left * weights.get(k, 1.0) / total for k in open_}
        full = {k for k in open_ if demands[k] - shares[k] <= offer[k] + 1e-9}
        if not full:
            for k in open_:
                shares[k] += offer[k]
            break
        for k in full:
            left -= demands[k] - shares[k]
            shares[k] = float(demands[k])
        open_ -= full
    return shares


def _integers(shares: Mapping[StepKey, float], total: int) -> dict[StepKey, int]:
    """Fractional shares as whole slots adding up to `total` (largest remainder, ties by key)."""
    floors = {k: math.floor(v + 1e-9) for k, v in shares.items()}
    left = total - sum(floors.values())
    order = sorted(shares, key=lambda k: (-(shares[k] - floors[k]), k))
    for k in order[: max(0, left)]:
        floors[k] += 1
    return floors


def pack_gpus(fractions: Iterable[float]) -> list[list[float]]:
    """GPUs for slots taking these fractions of one (0 or >= 1: a whole GPU each), first fit
    decreasing: fractions share a GPU before another is opened. Equal fractions are placed
    together (a GPU step asks for thousands of slots of one shape)."""
    counts: dict[float, int] = {}
    for f in fractions:
        fraction = min(1.0, f) if f > 0 else 1.0
        counts[fraction] = counts.get(fraction, 0) + 1
    bins: list[list[float]] = []
    used: list[float] = []
    for fraction in sorted(counts, reverse=True):
        left = counts[fraction]
        for index, fill in enumerate(used):  # first fit: what fits on the GPUs open
            if not left:
                break
            room = int((1.0 - fill + 1e-9) // fraction)
            take = min(room, left)
            if take:
                bins[index] += [fraction] * take
                used[index] += take * fraction
                left -= take
        per_gpu = max(1, int((1.0 + 1e-9) // fraction))
        while left:
            take = min(per_gpu, left)
            bins.append([fraction] * take)
            used.append(take * fraction)
            left -= take
    return bins


@dataclass(frozen=True)
class _Step:
    key: StepKey
    pool: str
    tasks: float  # expected tasks: its backlog and what upstream still holds for it
    work: float  # slot-seconds left (tasks x seconds per task); for unmeasured steps, tasks
    want: int  # slots worth having (the pool grows for these)
    use: int  # slots it can use where they are free already (it is shared these)
    gpus: float
    backlog: int  # its own tasks, queued or running


def _steps(job: JobLoad, memory: Memory, knobs: Knobs) -> list[_Step]:
    out: list[_Step] = []
    # An unmeasured step's tasks are taken to be as quick as the job's quickest measured step:
    # it ramps by one slot a cycle as far as its share goes, and guessing it slow would take
    # the slots of a step known to be slow (its first tasks can take a while to be measured).
    measured = [s.seconds_per_task for s in job.steps if s.seconds_per_task is not None]
    guess = min(measured) if measured else 1.0
    upstream = 0.0  # tasks of the steps before this one, in this step's tasks
    for load in job.steps:
        key = (job.team, job.job, load.step)
        upstream = upstream * max(load.fan_out, 0.0)
        tasks = load.backlog + upstream
        upstream = tasks
        if tasks <= 0:
            continue
        # Slots it can use now: one per task it holds (one, if its tasks are still upstream).
        usable = max(1, math.ceil(load.backlog))
        seconds = load.seconds_per_task
        held = memory.slots.get(key, 0)  # its actors are set up: keeping them costs nothing
        if seconds is None:  # unmeasured: one slot more than it asked for last cycle
            want = use = min(usable, memory.wants.get(key, 0) + 1)
            work = load.backlog * guess
        else:
            work = tasks * max(seconds, 1e-6)
            # A slot on a new worker is worth a worker's start and the set-up; one on a worker
            # that is there already, the set-up only.
            new = math.ceil(work / max(knobs.worker_start_s + load.setup_s, seconds, 1e-6))
            there = math.ceil(work / max(load.setup_s, seconds, 1e-6))
            want = max(1, min(usable, max(new, held)))
            use = max(1, min(usable, max(there, held)))
        out.append(_Step(key, load.pool, tasks, work, want, use, load.gpus, load.backlog))
    return out


def _cost(step: _Step, limits: PoolLimits) -> float:
    """What one slot of `step` takes of its pool: a slot (CPU), or its fraction of a GPU."""
    if not limits.gpu:
        return 1.0
    return min(1.0, step.gpus) if step.gpus > 0 else 1.0


def _share_pool(
    capacity: float,
    steps: list[_Step],
    jobs: Mapping[tuple[str, str], JobLoad],
    weights: Mapping[str, float],
    limits: PoolLimits,
) -> dict[StepKey, float]:
    """Fractional slots per step out of `capacity` (slots, or GPUs): teams by weight, a team's
    jobs by priority then evenly, a job's steps in proportion to their work left."""
    by_team: dict[str, list[_Step]] = {}
    for step in steps:
        by_team.setdefault(step.key[0], []).append(step)
    team_demand = {t: sum(s.use * _cost(s, limits) for s in mine) for t, mine in by_team.items()}
    team_share = water_fill(capacity, team_demand, weights)
    shares: dict[StepKey, float] = {}
    for team, mine in by_team.items():
        left = team_share[team]
        by_job: dict[str, list[_Step]] = {}
        for step in mine:
            by_job.setdefault(step.key[1], []).append(step)
        for priority in sorted({jobs[team, j].priority for j in by_job}, reverse=True):
            level = {j: s for j, s in by_job.items() if jobs[team, j].priority == priority}
            demand = {j: sum(s.use * _cost(s, limits) for s in st) for j, st in level.items()}
            job_share = water_fill(left, demand, {})
            left -= sum(job_share.values())
            for j, st in level.items():
                asks = {str(s.key[2]): s.use * _cost(s, limits) for s in st}
                work = {str(s.key[2]): s.work * _cost(s, limits) for s in st}
                step_share = water_fill(job_share[j], asks, work)
                for s in st:
                    shares[s.key] = step_share[str(s.key[2])] / _cost(s, limits)
    return shares


def decide(
    jobs: Iterable[JobLoad],
    workers: Iterable[WorkerLoad],
    pools: Mapping[str, PoolLimits],
    weights: Mapping[str, float],
    memory: Memory,
    now: float,
    knobs: Knobs = Knobs(),
) -> tuple[Decision, Memory]:
    """This cycle's decision and the memory for the next one (see the module docstring)."""
    jobs = list(jobs)
    workers = list(workers)
    by_key = {(j.team, j.job): j for j in jobs}
    steps = [s for job in jobs for s in _steps(job, memory, knobs)]
    reasons: list[str] = []
    slots: dict[StepKey, int] = {}
    desired: dict[str, int] = {}
    remove: dict[str, tuple[str, ...]] = {}
    gpus_out: dict[str, int] = {}
    below: dict[str, float] = {}
    for name, limits in sorted(pools.items()):
        mine = [s for s in steps if s.pool == name]
        members = [w for w in workers if w.pool == name and w.status != "draining"]
        ready = [w for w in members if w.status == "ready"]
        slots.update(_slots_now(mine, ready, by_key, weights, limits, memory, knobs))
        wanted = sum(s.want for s in mine)
        need = _workers_for({s.key: s.want for s in mine}, mine, limits)
        if limits.gpu:  # what the demand packs into, as far as the pool's max holds
            packed = len(pack_gpus(_cost(s, limits) for s in mine for _ in range(s.want)))
            gpus_out[name] = min(packed, math.floor(limits.max * limits.gpus_per_worker))
        target = max(limits.min, min(limits.max, need))
        # The pool's size: its members, or what the last decision wanted where that is more
        # (workers still starting beat for no one yet). Wanting less is shrinking.
        current = max(len(members), min(limits.max, memory.desired.get(name, 0)))
        if target >= current:
            if target > current:
                reasons.append(
                    f"{name}: {current} -> {target} workers: {wanted} slots wanted "
                    f"({_top(mine)})" + (f", capped at max {limits.max}" if need > target else "")
                )
            desired[name] = target
            continue
        # Shrinking: only once demand stayed low, never below what runs and is queued.
        since = below[name] = memory.below_since.get(name, now)
        # The tasks queued or running now (the heartbeats' count, where that is more).
        held = {s.key: s.backlog for s in mine}
        extra = max(0, sum(w.running for w in members) - sum(held.values()))
        floor = max(target, min(current, _workers_for(held, mine, limits, extra=extra)))
        if now - since < knobs.scale_down_after_s:
            desired[name] = current
            reasons.append(
                f"{name}: holding {current} workers ({target} would do) until demand has been "
                f"low for {knobs.scale_down_after_s:g} s ({now - since:.0f} s so far)"
            )
            continue
        step_down = max(1, math.floor(current * knobs.max_down_fraction))
        goal = max(floor, current - step_down)
        removable = sorted(
            (w for w in ready if not w.setting_up and w.ready_for_s >= knobs.grace_s),
            key=lambda w: (w.running, w.worker),
        )
        going = tuple(w.worker for w in removable[: max(0, len(members) - goal)])
        kept = desired[name] = max(goal, len(members) - len(going))
        if going:
            remove[name] = going
            reasons.append(
                f"{name}: {current} -> {kept} workers (demand needs {target}): draining "
                f"{', '.join(going)}"
            )
        if kept > goal:
            reasons.append(
                f"{name}: keeping {_workers(kept - goal)} more than {goal}: they are starting, "
                f"setting up, or within {knobs.grace_s:g} s of being ready"
            )
        elif goal > target:
            reasons.append(
                f"{name}: not below {_workers(goal)}: "
                f"{sum(held.values()) + extra} tasks queued or running"
                if floor == goal
                else f"{name}: at most {_workers(step_down)} removed a cycle"
            )
    decision = Decision(
        at=now, workers=desired, slots=slots, remove=remove, gpus=gpus_out, reasons=tuple(reasons)
    )
    wants = {s.key: s.want for s in steps}
    return decision, Memory(slots=dict(slots), wants=wants, desired=desired, below_since=below)


def _slots_now(
    steps: list[_Step],
    ready: list[WorkerLoad],
    jobs: Mapping[tuple[str, str], JobLoad],
    weights: Mapping[str, float],
    limits: PoolLimits,
    memory: Memory,
    knobs: Knobs,
) -> dict[StepKey, int]:
    """Whole slots per step over the pool's ready workers."""
    if not steps or not ready:
        return {}
    capacity = len(ready) * limits.gpus_per_worker if limits.gpu else sum(w.slots for w in ready)
    # Every step with tasks gets a slot first, as far as there are slots (its own tasks before
    # those still upstream, then the most work): a step without one stalls its chain.
    first: dict[StepKey, int] = {}
    for step in sorted(steps, key=lambda s: (s.backlog <= 0, -s.work, s.key)):
        if _fits({**first, step.key: 1}, steps, limits, capacity):
            first[step.key] = 1
    rest = capacity - sum(_cost(s, limits) * first.get(s.key, 0) for s in steps)
    firsts = [replace(s, use=s.use - first.get(s.key, 0)) for s in steps]
    shares = _share_pool(rest, [s for s in firsts if s.use > 0], jobs, weights, limits)
    shares = {s.key: shares.get(s.key, 0.0) + first.get(s.key, 0) for s in steps}
    whole = {k: math.floor(v + 1e-9) for k, v in shares.items()}
    # What is left after the whole slots goes by largest remainder, where it still fits.
    for key in sorted(shares, key=lambda k: (-(shares[k] - whole[k]), k)):
        step = next(s for s in steps if s.key == key)
        if whole[key] < step.use and _fits({**whole, key: whole[key] + 1}, steps, limits, capacity):
            whole[key] += 1
    eased = _eased(whole, steps, memory, knobs)
    while not _fits(eased, steps, limits, capacity):  # easing kept more than there is room for
        grown = [k for k in eased if eased[k] > memory.slots.get(k, 0)] or list(eased)
        largest = max(grown, key=lambda k: (eased[k], k))
        eased[largest] -= 1
    return {k: v for k, v in eased.items() if v > 0}


def _fits(
    counts: Mapping[StepKey, int], steps: list[_Step], limits: PoolLimits, capacity: float
) -> bool:
    """Whether these slots fit the capacity (GPU slots: packed by their fractions)."""
    if not limits.gpu:
        return sum(counts.values()) <= capacity + 1e-9
    return _gpus(counts, steps, limits) <= capacity


def _gpus(counts: Mapping[StepKey, int], steps: list[_Step], limits: PoolLimits) -> int:
    """GPUs these slots take, packed."""
    cost = {s.key: _cost(s, limits) for s in steps}
    return len(pack_gpus(cost[k] for k, n in counts.items() for _ in range(n)))


def _workers_for(
    counts: Mapping[StepKey, int], steps: list[_Step], limits: PoolLimits, extra: int = 0
) -> int:
    """Workers of the pool that hold these slots per step (and `extra` slots more, of the
    steps' average shape)."""
    total = sum(counts.values()) + extra
    if total <= 0:
        return 0
    if not limits.gpu:
        return math.ceil(total / limits.slots_per_worker)
    cost = {s.key: _cost(s, limits) for s in steps}
    fractions = [cost[k] for k, n in counts.items() for _ in range(n)]
    average = sum(fractions) / len(fractions) if fractions else 1.0
    gpus = len(pack_gpus(fractions)) + math.ceil(extra * average)
    return math.ceil(gpus / limits.gpus_per_worker)


def _eased(
    counts: Mapping[StepKey, int], steps: list[_Step], memory: Memory, knobs: Knobs
) -> dict[StepKey, int]:
    """A step that still has tasks gives up at most `rebalance_fraction` of its slots a cycle
    (at least one; a slot moved sets up an actor elsewhere, and measurements of a few tasks
    are noisy); one that has fewer tasks than slots gives the rest up at once."""
    out = dict(counts)
    for step in steps:
        before = memory.slots.get(step.key, 0)
        count = out.get(step.key, 0)
        if count < before:
            most = max(1, math.floor(before * knobs.rebalance_fraction))
            out[step.key] = max(count, min(before - most, math.ceil(step.tasks)))
    return out


def _top(steps: list[_Step]) -> str:
    """The steps that want the most slots, for a reason line."""
    ranked = sorted(steps, key=lambda s: (-s.want, s.key))[:3]
    return ", ".join(f"{t}/{j}/{n}: {s.want}" for s in ranked for (t, j, n) in [s.key])


def _workers(count: int) -> str:
    return f"{count} worker" if count == 1 else f"{count} workers"

"""Benchmark: the scaling policy driven through simulated jobs, workers and tasks.

    .venv/bin/python bench/autoscale_sim.py [--seed 1] [--scenario NAME ...] [--json] [--check]

A discrete-event simulation (an event heap in simulated seconds; nothing sleeps) calls
`services/coordinator/scaling/policy.py`'s `decide` once a simulated second, as the coordinator
does, and applies what it returns. What the policy is given is measured the way the coordinator
measures it (`services/coordinator/scaling/cycle.py`, `tracking.py`):

- per running job, its steps from the first one not done: backlog = its tasks queued or running
  (a task waiting for its actor's set-up counts as running); seconds per task = `policy.ewma`
  of each finished task's throughput (1 / run time), inverted, None until one finished; fan-out
  = tasks published to the step / tasks finished by the step before (1.0 until one did); set-up
  time = the longest actor set-up measured so far (0 until the first one ended);
- per worker: "starting" from its spawn until it joins 5 s (`Knobs.worker_start_s`) later, then
  "ready" (`ready_for_s` since); "draining" once the policy named it in `remove`, until its
  running tasks end, then gone; `setting_up` while an actor of a step with a set-up time loads
  on it.

The decision is applied at once: workers are spawned up to `workers[pool]`, those in `remove`
drain, and each step runs at most `slots[key]` tasks at a time on the pool's ready workers. A
task takes one slot of a CPU worker (4 a worker) or its fraction of a GPU worker's one GPU; free
slots go to the step furthest below its allowance, on a worker already partly busy before an
idle one (a packing scheduler), and, for a step with a set-up time, on a worker whose actor of
that step is loaded, then one where it is loading, and only then on one where a new actor must
first be set up (that slot waits for it; one actor per step and worker serves all its slots).
Run times are uniform within +-20% of each step's mean, from a generator seeded by `--seed`:
the same seed gives the same run, figure for figure.

Scenarios, each alone, then all at once ("combined", on the same pools, the chain at 0 s, the
bursts from 30 s, the GPU job at 90 s, the set-up job at 150 s):

1. `chain`: one job of 3 CPU steps of 1 s, 10 s and 1 s a task (the middle one 10x slower),
   fan-out 1, `--tasks` (20,000) source tasks;
2. `bursts`: 6 jobs of that chain, one every 60 s, of teams alpha (weight 3) and beta (1) in
   turn (a pool's worth of work a minute, so they overlap);
3. `gpu`: a CPU step of 2 s a task feeding a GPU step of 8 s at `gpus=0.25`, `--gpu-tasks`
   (1,500) tasks (few: `decide` packs every slot a GPU step wants one by one, so its time grows
   with the square of them; see RESULTS.md);
4. `setup`: a CPU step of 0.1 s feeding a CPU step of 2 s a task whose actor takes 60 s to set
   up, 20,000 tasks.

Pools: cpu 0..1,000 workers of 4 slots, gpu 0..64 workers of 1 GPU; knobs: `Knobs()`. After the
last job the simulation goes on until every pool is back at its min (at most 600 s).

Figures, per scenario:

- makespan: first arrival -> last task done; against a fixed pool of the autoscaled run's peak
  worker count per pool, all ready at t=0, in the same engine (set-ups paid the same way). For
  one job its slots are fixed per step in proportion to its work (tasks per source task x
  seconds per task: 1:10:1 for the chain), the best static split: any other makes some step
  the bottleneck (makespan >= tasks x max over steps of seconds / slots). Jobs that come and go
  have no static split per step, so there the fixed pool is work-conserving instead (any step
  takes any free slot), at least as fast as any static split of it;
- utilisation: busy slot-seconds (for GPUs: run time x fraction) / slot-seconds of live
  workers (spawn -> gone: starting and draining count), up to the last task; set-up waits are
  not busy;
- most tasks queued between steps: the peak of tasks waiting at steps after the first (the
  output a slow step's lack of slots leaves in the store);
- scale-up time, per job: from its arrival until each pool it uses first wants within 10% of
  the most workers it wants while the job runs;
- split convergence, per job: the policy's aim for a step is what `decide` gives it for the
  same measurements with an empty `Memory` (no slots eased down a few a cycle, no ramp of
  unmeasured steps); the job has converged at the first cycle from which, until it ends, the
  slots its steps lack against their aim, sum max(0, aim - slots), stay within 10% of the
  aim's total (or one worker's slots); the figure is that cycle - its arrival ("never": its
  last cycle lacked more). Slots a step keeps above its aim are not counted: giving them up
  gradually is the policy's design, and a job that drains keeps them;
- workers removed while starting, while an actor sets up on them, or less than `grace_s`
  after being ready, counted as the policy names them in `remove` (must be 0);
- flips: a pool's desired worker count changing direction (up then down, or down then up)
  within 60 s of its previous change, and a step's slots changing direction within 10 s of
  theirs. A pool flip with a job arriving or ending, or a step ending, between its two changes
  is counted apart: it answers a change of load. A step flip whose two moves are each at least
  10% of the slots (and more than 1) is "taken back" unless a job arrived or ended, or a step
  ended, between them (then it answers a change of load, as for pools); the others are slots
  wiggling by one or two around a level (largest-remainder rounding, the easing);
- tail: the last job's end -> every pool at its min;
- bursts, combined: alpha's / beta's slot-seconds over the cycles where both teams have a
  job running (target 3); gpu: in every cycle where the pool had room for all the GPU slots the
  policy aims at, the GPUs it asks for against ceil(slots / 4) (four quarter-GPU slots share a
  GPU), the peak of slots given against ready GPUs, and the most tasks one GPU ran at once;
  setup: actors set up, slot-seconds spent waiting for them, loaded actors removed with their
  worker while their step still had tasks.

`--check` runs the scenarios without the fixed pools and exits 1 if a worker was removed while
starting, setting up or within its grace, if a task was lost or run twice, if a pool was not
back at its min, if the GPUs asked exceed ceil(slots / 4), or if flips pass `FLIP_BOUND`.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from services.coordinator.scaling.policy import (
    Decision,
    JobLoad,
    Knobs,
    Memory,
    PoolLimits,
    StepKey,
    StepLoad,
    WorkerLoad,
    decide,
    ewma,
)

__all__ = [
    "FLIP_BOUND",
    "Flip",
    "Job",
    "Outcome",
    "Scenario",
    "Simulation",
    "Step",
    "flips",
    "scenarios",
    "simulate",
]

EPS = 1e-9
CYCLE_S = 1.0  # the coordinator's scaling cycle
SPLIT_TOLERANCE = 0.10  # converged: within 10% of the steady slots
POOL_FLIP_WINDOW_S = 60.0
STEP_FLIP_WINDOW_S = 10.0
# What --check lets through. A pool: no flip without a change of load between its two
# changes, and at most one per job with one (a job that ends within a minute of its ramp, or a
# scale-down the next job cuts short, each reverse the pool once for good reason). A step: at
# most one move a job taken back (both ways by 10% of its slots or more with no change of load
# between: workers becoming ready or leaving change the capacity, which the bench does not
# count as load); a wiggle of a slot or two costs at
# most an actor's start, and the easing itself makes them, so they are shown, not failed.
FLIP_BOUND = {"pool_per_job": 1, "step_taken_back_per_job": 1}

# Event kinds, in the order they are handled at one instant: tasks that end free their slots
# before workers join, jobs arrive, and the policy cycle sees all of it.
_TASK_DONE, _ACTOR_READY, _WORKER_READY, _JOB_ARRIVES, _CYCLE = range(5)


@dataclass(frozen=True)
class Step:
    """One step of a simulated pipeline: its tasks' mean run time and what they need."""

    seconds: float
    pool: str = "cpu"
    fan_out: float = 1.0  # tasks it publishes to the next step per task it finishes
    setup_s: float = 0.0  # its actor's set-up time on a worker (0: none)
    gpus: float = 0.0  # a slot's fraction of a GPU (gpu pool)


@dataclass(frozen=True)
class Job:
    """A job that arrives at `arrive_s` with `tasks` tasks for its first step."""

    team: str
    job: str
    arrive_s: float
    tasks: int
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Scenario:
    """A workload and the pools, team weights and knobs it runs under."""

    name: str
    jobs: tuple[Job, ...]
    pools: Mapping[str, PoolLimits]
    weights: Mapping[str, float] = field(default_factory=dict)
    knobs: Knobs = field(default_factory=Knobs)
    jitter: float = 0.2  # run times uniform within +-this part of their mean
    tail_s: float = 600.0  # the most simulated after the last job, for pools to shrink


def _cost(step: Step, pool: PoolLimits) -> float:
    """What one task of `step` takes of a worker: a slot, or its fraction of a GPU."""
    if not pool.gpu:
        return 1.0
    return min(1.0, step.gpus) if step.gpus > 0 else 1.0


class _Worker:
    """A simulated worker: its life, its load and its actors."""

    __slots__ = (
        "actors",
        "capacity",
        "gone_at",
        "id",
        "loading",
        "name",
        "pool",
        "ready_at",
        "running",
        "spawned_at",
        "status",
        "used",
    )

    def __init__(self, wid: int, pool: PoolLimits, now: float):
        self.id = wid
        self.name = f"{pool.name}-{wid:05d}"
        self.pool = pool.name
        self.capacity = pool.gpus_per_worker if pool.gpu else float(pool.slots_per_worker)
        self.status = "starting"
        self.spawned_at = now
        self.ready_at: float | None = None
        self.gone_at: float | None = None
        self.used = 0.0  # slots (or GPU) taken by its tasks
        self.running = 0
        self.loading = 0  # actors being set up on it
        self.actors: dict[StepKey, float] = {}  # step -> when its actor is (or was) loaded


class _StepRun:
    """A step of a job while the simulation runs: its queue and what was measured of it."""

    __slots__ = (
        "allowed",
        "carry",
        "cost",
        "finished",
        "free_loaded",
        "free_loading",
        "index",
        "job",
        "key",
        "published",
        "queue",
        "rate",
        "running",
        "setup_measured",
        "spec",
    )

    def __init__(self, job: _JobRun, index: int, spec: Step, cost: float):
        self.job = job
        self.index = index
        self.spec = spec
        self.key: StepKey = (job.spec.team, job.spec.job, index)
        self.cost = cost
        self.queue: deque[int] = deque()
        self.running = 0  # tasks placed on a worker (waiting for its actor, or running)
        self.published = 0
        self.finished = 0
        self.rate: float | None = None  # tasks per second per slot, `ewma`
        self.setup_measured = 0.0
        self.allowed = 0
        self.carry = 0.0  # fractional fan-out owed to the next step
        # Ready workers with room for one more of its tasks and its actor loaded / loading.
        self.free_loaded: set[int] = set()
        self.free_loading: set[int] = set()

    def done(self) -> bool:
        """No task left, and none can come: the steps before it are done."""
        upstream = self.index == 0 or self.job.steps[self.index - 1].done()
        return upstream and self.finished == self.published


class _JobRun:
    """A job while the simulation runs."""

    def __init__(self, spec: Job, pools: Mapping[str, PoolLimits]):
        self.spec = spec
        self.steps: list[_StepRun] = []
        for index, step in enumerate(spec.steps):
            self.steps.append(_StepRun(self, index, step, _cost(step, pools[step.pool])))
        self.arrived = False
        self.done_at: float | None = None


@dataclass
class _Pool:
    """A pool's workers and which of them have room."""

    limits: PoolLimits
    workers: dict[int, _Worker] = field(default_factory=dict)  # live ones, by id
    empty: set[int] = field(default_factory=set)  # ready, nothing running
    partial: set[int] = field(default_factory=set)  # ready, some room left
    steps: list[_StepRun] = field(default_factory=list)  # of running jobs
    busy_s: float = 0.0  # slot-seconds (GPU-seconds) of task runs
    setup_wait_s: float = 0.0  # slot-seconds of tasks waiting for an actor's set-up
    live_s: float = 0.0  # slot-seconds of workers gone so far (spawn -> gone)


@dataclass
class Outcome:
    """What one simulation measured (see the module docstring for each figure)."""

    scenario: str
    makespan_s: float
    job_s: dict[str, float]
    peak_workers: dict[str, int]
    utilisation: dict[str, float]
    convergence_s: dict[str, float | None]
    scale_up_s: dict[str, float | None]
    removed_bad: dict[str, int]  # starting / setting_up / in_grace
    removed: int
    pool_flips: dict[str, list[Flip]]
    step_flips: list[Flip]
    load_changes: list[float]  # a job arrived or ended, or a step ended
    tail_s: float | None
    tasks_published: int
    tasks_done: int
    tasks_run_twice: int
    at_min: bool
    team_slot_s: dict[str, float]
    gpu_mismatches: int
    gpu_cycles: int
    gpu_overfull: int
    gpu_peak: tuple[int, int]
    most_per_gpu: int
    setups: int
    setup_wait_s: float
    actors_lost: int
    most_between: int
    cycles: int
    end_s: float
    events: int
    details: list[str]

    def load_flips(self, flip: Flip) -> bool:
        """Whether a job came or went, or a step ended, between a flip's two changes."""
        return any(flip.first_at < t <= flip.at for t in self.load_changes)


class Simulation:
    """One run of a scenario: either driven by the policy (`static=None`) or a fixed pool
    (`static`: workers per pool, ready at t=0, and slots per step; None slots: any free one)."""

    def __init__(
        self,
        scenario: Scenario,
        seed: int = 1,
        static: tuple[Mapping[str, int], Mapping[StepKey, int] | None] | None = None,
    ):
        self.scenario = scenario
        self.knobs = scenario.knobs
        self.rng = random.Random(seed)
        self.static = static
        self.static_slots: Mapping[StepKey, int] | None = None
        self.pools = {name: _Pool(limits) for name, limits in sorted(scenario.pools.items())}
        self.jobs = [_JobRun(job, scenario.pools) for job in scenario.jobs]
        self.steps = {s.key: s for job in self.jobs for s in job.steps}
        self.by_id: dict[int, _Worker] = {}
        self.memory = Memory()
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.now = 0.0
        self.next_worker = 0
        self.next_task = 0
        self.events = 0
        self.done_ids: set[int] = set()
        self.run_twice = 0
        self.removed = 0
        self.removed_bad = {"starting": 0, "setting_up": 0, "in_grace": 0}
        self.actors_lost = 0
        self.setups = 0
        self.details: list[str] = []
        # Per cycle: desired workers per pool, slots per step of running jobs.
        self.desired: dict[str, list[tuple[float, int]]] = {p: [] for p in self.pools}
        self.slot_trace: dict[StepKey, list[tuple[float, int]]] = {k: [] for k in self.steps}
        self.load_changes: list[float] = []  # when a job arrived or ended, or a step ended
        # Per job and cycle: the slots its steps lack against the policy's aim, and the aim.
        self.gaps: dict[str, list[tuple[float, int, int]]] = {j.spec.job: [] for j in self.jobs}
        self.team_slot_s: dict[str, float] = {}
        self.gpu_mismatches = 0  # cycles whose GPUs asked > ceil(slots / 4)
        self.gpu_cycles = 0
        self.gpu_overfull = 0  # cycles with more than 4 quarter-GPU slots a ready GPU
        self.gpu_peak = (0, 0)  # most GPU slots given, with the ready GPU workers then
        self.most_per_gpu = 0
        self.cycles = 0
        self.between = 0  # tasks queued at steps after the first (output waiting for a step)
        self.most_between = 0
        self.last_job_done: float | None = None
        self.at_min_at: float | None = None

    # -- the event loop -------------------------------------------------------------------

    def _push(self, at: float, kind: int, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, kind, self.seq, payload))

    def run(self) -> Outcome:
        """Simulate until every job is done and every pool is back at its min (or the tail's
        end); return what was measured."""
        for job in self.jobs:
            self._push(job.spec.arrive_s, _JOB_ARRIVES, job)
        if self.static is None:
            self._push(0.0, _CYCLE, None)
        else:
            self._start_static(*self.static)
        while self.heap:
            at, kind, _, payload = heapq.heappop(self.heap)
            self.now = at
            self.events += 1
            if kind == _TASK_DONE:
                self._task_done(*payload)
            elif kind == _ACTOR_READY:
                self._actor_ready(*payload)
            elif kind == _WORKER_READY:
                self._worker_ready(payload)
            elif kind == _JOB_ARRIVES:
                self._arrive(payload)
            else:
                self._cycle()
                finished = all(j.done_at is not None for j in self.jobs)
                if finished and self._all_at_min():
                    self.at_min_at = at
                    break
                if finished and at - (self.last_job_done or 0.0) > self.scenario.tail_s:
                    break
                self._push(at + CYCLE_S, _CYCLE, None)
            if self.static is not None and all(j.done_at is not None for j in self.jobs):
                break
        return self._outcome()

    def _all_at_min(self) -> bool:
        return all(
            len(p.workers) == p.limits.min and all(w.status == "ready" for w in p.workers.values())
            for p in self.pools.values()
        )

    # -- workers --------------------------------------------------------------------------

    def _spawn(self, pool: _Pool, ready_in: float) -> _Worker:
        worker = _Worker(self.next_worker, pool.limits, self.now)
        self.next_worker += 1
        pool.workers[worker.id] = worker
        self.by_id[worker.id] = worker
        self._push(self.now + ready_in, _WORKER_READY, worker)
        return worker

    def _worker_ready(self, worker: _Worker) -> None:
        if worker.status != "starting":
            return
        worker.status = "ready"
        worker.ready_at = self.now
        self._refresh(worker)
        self._dispatch(self.pools[worker.pool])

    def _drain(self, worker: _Worker) -> None:
        ready_for = self.now - worker.ready_at if worker.ready_at is not None else 0.0
        if worker.status == "starting":
            self.removed_bad["starting"] += 1
            self.details.append(f"{self.now:.0f} s: {worker.name} removed while starting")
        elif worker.loading:
            self.removed_bad["setting_up"] += 1
            self.details.append(f"{self.now:.0f} s: {worker.name} removed while setting up")
        elif ready_for < self.knobs.grace_s - EPS:
            self.removed_bad["in_grace"] += 1
            self.details.append(
                f"{self.now:.0f} s: {worker.name} removed {ready_for:.0f} s after it was ready"
            )
        self.removed += 1
        self.actors_lost += sum(
            1 for key, at in worker.actors.items() if at <= self.now and not self.steps[key].done()
        )
        worker.status = "draining"
        self._refresh(worker)
        if worker.running == 0:
            self._gone(worker)

    def _gone(self, worker: _Worker) -> None:
        pool = self.pools[worker.pool]
        worker.status = "gone"
        worker.gone_at = self.now
        pool.live_s += (self.now - worker.spawned_at) * worker.capacity
        del pool.workers[worker.id]
        self._refresh(worker)

    def _refresh(self, worker: _Worker) -> None:
        """Keep the sets of workers with room in step with `worker`'s status and load."""
        pool = self.pools[worker.pool]
        pool.empty.discard(worker.id)
        pool.partial.discard(worker.id)
        ready = worker.status == "ready"
        room = worker.capacity - worker.used
        if ready and worker.used <= EPS:
            pool.empty.add(worker.id)
        elif ready and room > EPS:
            pool.partial.add(worker.id)
        for key, loaded_at in worker.actors.items():
            step = self.steps[key]
            step.free_loaded.discard(worker.id)
            step.free_loading.discard(worker.id)
            if ready and room >= step.cost - EPS:
                (step.free_loaded if loaded_at <= self.now else step.free_loading).add(worker.id)

    # -- jobs and tasks -------------------------------------------------------------------

    def _arrive(self, job: _JobRun) -> None:
        job.arrived = True
        self.load_changes.append(self.now)
        first = job.steps[0]
        self._publish(first, job.spec.tasks)
        for step in job.steps:
            self.pools[step.spec.pool].steps.append(step)
            if self.static is not None:
                step.allowed = self.static_slots.get(step.key, 0) if self.static_slots else 1 << 30
        self._dispatch(self.pools[first.spec.pool])

    def _publish(self, step: _StepRun, count: int) -> None:
        step.queue.extend(range(self.next_task, self.next_task + count))
        self.next_task += count
        step.published += count
        if step.index > 0:
            self.between += count
            self.most_between = max(self.most_between, self.between)

    def _duration(self, mean: float) -> float:
        jitter = self.scenario.jitter
        return mean * (1.0 + jitter * (2.0 * self.rng.random() - 1.0))

    def _dispatch(self, pool: _Pool) -> None:
        """Free slots to the steps below their allowance, furthest below first."""
        wanting = [s for s in pool.steps if s.queue and s.running < s.allowed]
        while wanting and (pool.empty or pool.partial):
            step = min(wanting, key=lambda s: (s.running - s.allowed, s.key))
            worker = self._place(pool, step)
            if worker is None:
                wanting.remove(step)
                continue
            self._start(pool, step, worker)
            if not step.queue or step.running >= step.allowed:
                wanting.remove(step)

    def _place(self, pool: _Pool, step: _StepRun) -> _Worker | None:
        """A ready worker with room for a task of `step` (see the module docstring)."""
        if step.spec.setup_s > 0:
            for loaded in (step.free_loaded, step.free_loading):
                if loaded:
                    return self.by_id[min(loaded)]
        for candidates in (pool.partial, pool.empty):
            if not candidates:
                continue
            if not pool.limits.gpu:
                return self.by_id[candidates.pop()]
            fits = [
                w
                for w in candidates
                if self.by_id[w].capacity - self.by_id[w].used >= step.cost - EPS
            ]
            if fits:
                return self.by_id[min(fits)]
        return None

    def _start(self, pool: _Pool, step: _StepRun, worker: _Worker) -> None:
        task = step.queue.popleft()
        if step.index > 0:
            self.between -= 1
        step.running += 1
        worker.used += step.cost
        worker.running += 1
        begin = self.now
        if step.spec.setup_s > 0:
            loaded_at = worker.actors.get(step.key)
            if loaded_at is None:
                setup = self._duration(step.spec.setup_s)
                loaded_at = worker.actors[step.key] = self.now + setup
                worker.loading += 1
                self.setups += 1
                self._push(loaded_at, _ACTOR_READY, (worker, step, setup))
            begin = max(self.now, loaded_at)
        run = self._duration(step.spec.seconds)
        pool.busy_s += run * step.cost
        pool.setup_wait_s += (begin - self.now) * step.cost
        if pool.limits.gpu:
            self.most_per_gpu = max(self.most_per_gpu, worker.running)
        self._refresh(worker)
        self._push(begin + run, _TASK_DONE, (step, worker, task, run))

    def _actor_ready(self, worker: _Worker, step: _StepRun, setup: float) -> None:
        worker.loading -= 1
        step.setup_measured = max(step.setup_measured, setup)
        if worker.status != "gone":
            self._refresh(worker)

    def _task_done(self, step: _StepRun, worker: _Worker, task: int, run: float) -> None:
        if task in self.done_ids:
            self.run_twice += 1
        self.done_ids.add(task)
        step.running -= 1
        step.finished += 1
        step.rate = ewma(step.rate, 1.0 / max(run, 1e-4))
        job = step.job
        if step.index + 1 < len(job.steps):
            step.carry += step.spec.fan_out
            count = int(step.carry + EPS)
            step.carry -= count
            self._publish(job.steps[step.index + 1], count)
        worker.used -= step.cost
        worker.running -= 1
        if worker.status == "draining" and worker.running == 0:
            self._gone(worker)
        else:
            self._refresh(worker)
        if step.finished == step.published and step.done():
            self.load_changes.append(self.now)
        if job.steps[-1].done():
            self._job_done(job)
        self._dispatch(self.pools[step.spec.pool])
        if step.index + 1 < len(job.steps):
            after = job.steps[step.index + 1].spec.pool
            if after != step.spec.pool:
                self._dispatch(self.pools[after])

    def _job_done(self, job: _JobRun) -> None:
        job.done_at = self.now
        self.last_job_done = self.now
        self.load_changes.append(self.now)
        for step in job.steps:
            self.pools[step.spec.pool].steps.remove(step)

    def _running_jobs(self) -> list[_JobRun]:
        return [j for j in self.jobs if j.arrived and j.done_at is None]

    # -- the policy cycle -----------------------------------------------------------------

    def loads(self) -> tuple[list[JobLoad], list[WorkerLoad]]:
        """What the coordinator would hand the policy now."""
        jobs = []
        for job in self._running_jobs():
            steps = []
            first = next(i for i, s in enumerate(job.steps) if not s.done())
            for step in job.steps[first:]:
                before = job.steps[step.index - 1] if step.index > first else None
                fan_out = step.published / before.finished if before and before.finished else 1.0
                steps.append(
                    StepLoad(
                        step=step.index,
                        pool=step.spec.pool,
                        backlog=len(step.queue) + step.running,
                        seconds_per_task=None if step.rate is None else 1.0 / step.rate,
                        fan_out=fan_out,
                        setup_s=step.setup_measured,
                        gpus=step.spec.gpus,
                    )
                )
            jobs.append(JobLoad(job.spec.team, job.spec.job, tuple(steps)))
        workers = []
        for pool in self.pools.values():
            for w in pool.workers.values():
                workers.append(
                    WorkerLoad(
                        worker=w.name,
                        pool=w.pool,
                        slots=pool.limits.slots_per_worker,
                        status=w.status,  # type: ignore[arg-type]
                        running=w.running,
                        ready_for_s=self.now - w.ready_at if w.ready_at is not None else 0.0,
                        setting_up=w.loading > 0,
                    )
                )
        return jobs, workers

    def _cycle(self) -> None:
        self.cycles += 1
        jobs, workers = self.loads()
        decision, self.memory = decide(
            jobs,
            workers,
            self.scenario.pools,
            self.scenario.weights,
            self.memory,
            self.now,
            self.knobs,
        )
        # The split it aims at: the same measurements, no memory (no easing, no ramp).
        aim, _ = decide(
            jobs,
            workers,
            self.scenario.pools,
            self.scenario.weights,
            Memory(),
            self.now,
            self.knobs,
        )
        self._apply(decision)
        self._record(decision, aim)

    def _apply(self, decision: Decision) -> None:
        for name, pool in self.pools.items():
            members = sum(1 for w in pool.workers.values() if w.status != "draining")
            for _ in range(decision.workers.get(name, members) - members):
                self._spawn(pool, self.knobs.worker_start_s)
        by_name = {w.name: w for p in self.pools.values() for w in p.workers.values()}
        for names in decision.remove.values():
            for name in names:
                self._drain(by_name[name])
        for job in self._running_jobs():
            for step in job.steps:
                step.allowed = decision.slots.get(step.key, 0)
        for pool in self.pools.values():
            self._dispatch(pool)

    def _record(self, decision: Decision, aim: Decision) -> None:
        for name in self.pools:
            members = sum(1 for w in self.pools[name].workers.values() if w.status != "draining")
            self.desired[name].append((self.now, decision.workers.get(name, members)))
        teams: dict[str, int] = {}
        for job in self._running_jobs():
            short = aimed = 0
            for step in job.steps:
                slots = decision.slots.get(step.key, 0)
                self.slot_trace[step.key].append((self.now, slots))
                teams[job.spec.team] = teams.get(job.spec.team, 0) + step.running
                short += max(0, aim.slots.get(step.key, 0) - slots)
                aimed += aim.slots.get(step.key, 0)
            self.gaps[job.spec.job].append((self.now, short, aimed))
        if "alpha" in teams and "beta" in teams:  # both teams have a job running
            for team in ("alpha", "beta"):
                self.team_slot_s[team] = self.team_slot_s.get(team, 0.0) + teams[team] * CYCLE_S
        for name, pool in self.pools.items():
            if not pool.limits.gpu:
                continue
            slots = sum(n for k, n in decision.slots.items() if self.steps[k].spec.pool == name)
            ready = sum(1 for w in pool.workers.values() if w.status == "ready")
            self.gpu_peak = max(self.gpu_peak, (slots, ready))
            if slots > 4 * ready * pool.limits.gpus_per_worker:
                self.gpu_overfull += 1
            # Four quarter-GPU slots share one GPU: where the pool had room for every slot the
            # policy aims at, it never asks for more GPUs than those slots pack into (it may
            # ask for fewer: a slot on a GPU already there is worth less work than a new one).
            aimed = sum(n for k, n in aim.slots.items() if self.steps[k].spec.pool == name)
            if 0 < aimed < 4 * ready * pool.limits.gpus_per_worker:
                self.gpu_cycles += 1
                if aim.gpus.get(name, 0) > math.ceil(aimed / 4):
                    self.gpu_mismatches += 1
                    self.details.append(
                        f"{self.now:.0f} s: {name}: {aim.gpus.get(name, 0)} GPUs asked for "
                        f"{aimed} quarter-GPU slots"
                    )

    # -- fixed pools ----------------------------------------------------------------------

    def _start_static(
        self, workers: Mapping[str, int], slots: Mapping[StepKey, int] | None
    ) -> None:
        self.static_slots = slots
        for name, count in workers.items():
            for _ in range(count):
                worker = self._spawn(self.pools[name], 0.0)
                worker.spawned_at = 0.0

    # -- figures --------------------------------------------------------------------------

    def _outcome(self) -> Outcome:
        end = max(j.done_at or self.now for j in self.jobs)
        first = min(j.spec.arrive_s for j in self.jobs)
        utilisation = {}
        peak = {}
        for name, pool in self.pools.items():
            live = sum(
                max(0.0, min(w.gone_at if w.gone_at is not None else end, end) - w.spawned_at)
                * w.capacity
                for w in self.by_id.values()
                if w.pool == name
            )
            utilisation[name] = pool.busy_s / live if live > 0 else 0.0
            series = self.desired[name]
            peak[name] = max((n for _, n in series), default=len(pool.workers))
        static = self.static is not None
        convergence = {j.spec.job: None if static else self._convergence(j) for j in self.jobs}
        scale_up = {j.spec.job: None if static else self._scale_up(j) for j in self.jobs}
        pool_flips = {name: flips(s, POOL_FLIP_WINDOW_S) for name, s in self.desired.items()}
        step_flips = [f for s in self.slot_trace.values() for f in flips(s, STEP_FLIP_WINDOW_S)]
        tail = None
        if self.at_min_at is not None and self.last_job_done is not None:
            tail = self.at_min_at - self.last_job_done
        return Outcome(
            scenario=self.scenario.name,
            makespan_s=end - first,
            job_s={j.spec.job: (j.done_at or math.inf) - j.spec.arrive_s for j in self.jobs},
            peak_workers=peak,
            utilisation=utilisation,
            convergence_s=convergence,
            scale_up_s=scale_up,
            removed_bad=dict(self.removed_bad),
            removed=self.removed,
            pool_flips=pool_flips,
            step_flips=step_flips,
            load_changes=list(self.load_changes),
            tail_s=tail,
            tasks_published=self.next_task,
            tasks_done=len(self.done_ids),
            tasks_run_twice=self.run_twice,
            at_min=self.at_min_at is not None,
            team_slot_s=dict(self.team_slot_s),
            gpu_mismatches=self.gpu_mismatches,
            gpu_cycles=self.gpu_cycles,
            gpu_overfull=self.gpu_overfull,
            gpu_peak=self.gpu_peak,
            most_per_gpu=self.most_per_gpu,
            setups=self.setups,
            setup_wait_s=sum(p.setup_wait_s for p in self.pools.values()),
            actors_lost=self.actors_lost,
            most_between=self.most_between,
            cycles=self.cycles,
            end_s=self.now,
            events=self.events,
            details=self.details,
        )

    def _convergence(self, job: _JobRun) -> float | None:
        """Seconds from `job`'s arrival until the slots it lacks against the policy's aim stay
        within 10% of the aim (or one worker's slots) to its end; None if they never did."""
        slack = max(p.limits.slots_per_worker for p in self.pools.values())
        settled = None
        for at, short, aimed in reversed(self.gaps[job.spec.job]):
            if short > max(SPLIT_TOLERANCE * aimed, slack):
                break
            settled = at
        return None if settled is None else settled - job.spec.arrive_s

    def _scale_up(self, job: _JobRun) -> float | None:
        """Seconds from `job`'s arrival until each pool it uses first wants within 10% of the
        most workers it wants while the job runs."""
        end = job.done_at if job.done_at is not None else self.now
        worst = 0.0
        for name in sorted({s.pool for s in job.spec.steps}):
            series = [(t, n) for t, n in self.desired[name] if job.spec.arrive_s <= t <= end]
            if not series:
                return None
            top = max(n for _, n in series)
            reached = next(t for t, n in series if n >= (1 - SPLIT_TOLERANCE) * top)
            worst = max(worst, reached - job.spec.arrive_s)
        return worst


@dataclass(frozen=True)
class Flip:
    """A change of direction: the change before it (`first_at`, by `first`) and this one."""

    first_at: float
    at: float
    first: int
    then: int
    level: int  # the value between the two changes

    def material(self) -> bool:
        """Both moves were at least a tenth of the level (and more than one): not a wiggle
        of a slot or two around a level, but a decision taken back."""
        least = min(abs(self.first), abs(self.then))
        return least > 1 and least >= SPLIT_TOLERANCE * self.level


def flips(series: Iterable[tuple[float, int]], window_s: float) -> list[Flip]:
    """The changes of direction of `series` (time, value) within `window_s` of the change
    before them: up then down, or down then up."""
    out = []
    move = 0
    changed_at = -math.inf
    previous: int | None = None
    for at, value in series:
        if previous is not None and value != previous:
            now_move = value - previous
            if move and (now_move > 0) != (move > 0) and at - changed_at <= window_s:
                out.append(Flip(changed_at, at, move, now_move, previous))
            move, changed_at = now_move, at
        previous = value
    return out


# -- scenarios ------------------------------------------------------------------------------

CHAIN = (Step(1.0), Step(10.0), Step(1.0))


def _pools(cpu_max: int, gpu_max: int, slots: int) -> dict[str, PoolLimits]:
    return {
        "cpu": PoolLimits("cpu", 0, cpu_max, slots_per_worker=slots),
        "gpu": PoolLimits("gpu", 0, gpu_max, slots_per_worker=1, gpus_per_worker=1.0),
    }


def scenarios(
    tasks: int = 20_000,
    gpu_tasks: int = 1_500,
    cpu_max: int = 1000,
    gpu_max: int = 64,
    slots: int = 4,
) -> dict[str, Scenario]:
    """The four workloads of the module docstring, and all of them at once ("combined")."""
    pools = _pools(cpu_max, gpu_max, slots)
    weights = {"alpha": 3.0, "beta": 1.0, "solo": 1.0}
    chain = (Job("solo", "chain", 0.0, tasks, CHAIN),)
    bursts = tuple(
        Job(("alpha", "beta")[i % 2], f"burst{i}", 60.0 * i, tasks, CHAIN) for i in range(6)
    )
    gpu_steps = (Step(2.0), Step(8.0, pool="gpu", gpus=0.25))
    gpu = (Job("solo", "gpu", 0.0, gpu_tasks, gpu_steps),)
    setup = (Job("solo", "setup", 0.0, tasks, (Step(0.1), Step(2.0, setup_s=60.0))),)
    out = {
        "chain": Scenario("chain", chain, pools, weights),
        "bursts": Scenario("bursts", bursts, pools, weights),
        "gpu": Scenario("gpu", gpu, pools, weights),
        "setup": Scenario("setup", setup, pools, weights),
    }
    offsets = {"chain": 0.0, "bursts": 30.0, "gpu": 90.0, "setup": 150.0}
    combined = tuple(
        replace(job, job=f"{name}.{job.job}", arrive_s=job.arrive_s + offsets[name])
        for name, scenario in out.items()
        for job in scenario.jobs
    )
    out["combined"] = Scenario("combined", combined, pools, weights)
    return out


def static_split(scenario: Scenario, workers: Mapping[str, int]) -> dict[StepKey, int] | None:
    """Slots per step of a lone job in proportion to its work (tasks per source task x seconds
    per task) over `workers` per pool; None for several jobs (then any step takes any slot)."""
    if len(scenario.jobs) != 1:
        return None
    [job] = scenario.jobs
    work: dict[int, float] = {}
    tasks = 1.0
    for i, step in enumerate(job.steps):
        work[i] = tasks * step.seconds
        tasks *= step.fan_out
    out: dict[StepKey, int] = {}
    for name, limits in scenario.pools.items():
        mine = [i for i, step in enumerate(job.steps) if step.pool == name]
        per_worker = limits.gpus_per_worker if limits.gpu else limits.slots_per_worker
        capacity = workers.get(name, 0) * per_worker
        total = sum(work[i] * _cost(job.steps[i], limits) for i in mine)
        for i in mine:
            cost = _cost(job.steps[i], limits)
            share = capacity * work[i] * cost / total  # of the pool's slots (GPUs)
            out[job.team, job.job, i] = max(1, int(share / cost + EPS))
    return out


def simulate(scenario: Scenario, seed: int = 1) -> Outcome:
    """`scenario` under the policy."""
    return Simulation(scenario, seed).run()


def fixed_pool(scenario: Scenario, peak: Mapping[str, int], seed: int = 1) -> Outcome:
    """`scenario` on a fixed pool of `peak` workers per pool, ready at t=0 (`static_split`)."""
    workers = {name: n for name, n in peak.items() if n > 0}
    return Simulation(scenario, seed, static=(workers, static_split(scenario, workers))).run()


def failures(scenario: Scenario, out: Outcome) -> list[str]:
    """What `--check` fails on (module docstring), one line each."""
    name = scenario.name
    bad = []
    if any(out.removed_bad.values()):
        bad.append(f"{name}: workers removed too early: {out.removed_bad}: {out.details[:3]}")
    if out.tasks_done != out.tasks_published or out.tasks_run_twice:
        bad.append(
            f"{name}: {out.tasks_published} tasks in, {out.tasks_done} done, "
            f"{out.tasks_run_twice} run twice"
        )
    if not out.at_min:
        bad.append(f"{name}: a pool was not back at its min {scenario.tail_s:.0f} s after")
    for pool, found in out.pool_flips.items():
        unexplained = [f for f in found if not out.load_flips(f)]
        allowed = FLIP_BOUND["pool_per_job"] * len(scenario.jobs)
        if unexplained or len(found) > allowed:
            bad.append(
                f"{name}: {pool}: {len(found)} flips (bound {allowed}), "
                f"{len(unexplained)} with no change of load between: {unexplained[:3]}"
            )
    material = [f for f in out.step_flips if f.material() and not out.load_flips(f)]
    if len(material) > FLIP_BOUND["step_taken_back_per_job"] * len(scenario.jobs):
        bad.append(f"{name}: {len(material)} step slot flips taken back: {material[:3]}")
    if out.gpu_mismatches or out.gpu_overfull:
        bad.append(
            f"{name}: GPUs asked > ceil(slots / 4) in {out.gpu_mismatches} cycles, more than "
            f"4 slots a GPU in {out.gpu_overfull}"
        )
    return bad


# -- the report -----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scenario", action="append", help="only this one (repeatable)")
    parser.add_argument(
        "--tasks", type=int, default=20_000, help="source tasks of each chain, burst and setup job"
    )
    parser.add_argument("--gpu-tasks", type=int, default=1_500)
    parser.add_argument("--cpu-max", type=int, default=1000)
    parser.add_argument("--gpu-max", type=int, default=64)
    parser.add_argument("--slots", type=int, default=4, help="slots of a CPU worker")
    parser.add_argument("--json", action="store_true", help="the figures as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 on thrash or bad removals")
    args = parser.parse_args()
    everything = scenarios(args.tasks, args.gpu_tasks, args.cpu_max, args.gpu_max, args.slots)
    names = args.scenario or list(everything)
    results: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    started = time.perf_counter()
    for name in names:
        scenario = everything[name]
        t0 = time.perf_counter()
        row: dict[str, Any] = {"outcome": simulate(scenario, args.seed)}
        row["wall_s"] = time.perf_counter() - t0
        if not args.check:
            row["fixed"] = fixed_pool(scenario, row["outcome"].peak_workers, args.seed)
        results[name] = row
        failed += failures(scenario, row["outcome"])
    if args.json:
        print(json.dumps({n: _as_json(r) for n, r in results.items()}, indent=2, default=str))
    else:
        print(_table(results))
        print(f"\nseed {args.seed}; wall {time.perf_counter() - started:.1f} s")
    for line in failed:
        print(f"check failed: {line}")
    if args.check:
        print("check: " + ("FAILED" if failed else "passed"))
        sys.exit(1 if failed else 0)


def _as_json(row: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(vars(row["outcome"]))
    out["details"] = out["details"][:10]
    out["pool_flips"] = {p: [vars(f) for f in fs] for p, fs in out["pool_flips"].items()}
    out["step_flips"] = [vars(f) for f in out["step_flips"]]
    out["wall_s"] = row["wall_s"]
    if "fixed" in row:
        out["fixed_makespan_s"] = row["fixed"].makespan_s
        out["fixed_utilisation"] = row["fixed"].utilisation
    return out


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:,.0f} s"


def _worst(values: Iterable[float | None]) -> str:
    """The largest of per-job figures ("never" counted apart)."""
    values = list(values)
    known = [v for v in values if v is not None]
    never = len(values) - len(known)
    if not known:
        return "never"
    text = _s(max(known)) if len(values) == 1 else f"{_s(max(known))} (median {_s(_median(known))})"
    return text + (f", never: {never}" if never else "")


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The figures, a column per scenario (Markdown)."""
    names = list(results)
    lines = ["| measure | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]

    def row(label: str, cell: Any) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(results[n]) for n in names) + " |")

    def o(r: Mapping[str, Any]) -> Outcome:
        out: Outcome = r["outcome"]
        return out

    def pools(r: Mapping[str, Any], cell: Any) -> str:
        return " / ".join(cell(p) if o(r).peak_workers.get(p) else "-" for p in ("cpu", "gpu"))

    def ratio(r: Mapping[str, Any]) -> str:
        return f"**{o(r).makespan_s / r['fixed'].makespan_s:.2f}x**" if "fixed" in r else "-"

    def flip_counts(r: Mapping[str, Any], pool: str) -> str:
        found = o(r).pool_flips[pool]
        return f"{len(found)} ({sum(1 for f in found if o(r).load_flips(f))})"

    def step_flips(r: Mapping[str, Any]) -> str:
        out = o(r)
        taken = [f for f in out.step_flips if f.material()]
        loaded = sum(1 for f in taken if out.load_flips(f))
        return f"{len(out.step_flips)} ({len(taken) - loaded}; {loaded} after a change of load)"

    def gpu(r: Mapping[str, Any]) -> str:
        out = o(r)
        if not out.gpu_cycles:
            return "-"
        slots, ready = out.gpu_peak
        return f"{out.gpu_mismatches} of {out.gpu_cycles}; {slots} on {ready}; {out.most_per_gpu}"

    def setup(r: Mapping[str, Any]) -> str:
        out = o(r)
        if not out.setups:
            return "-"
        return f"{out.setups:,}; {out.setup_wait_s:,.0f}; {out.actors_lost}"

    def share(r: Mapping[str, Any]) -> str:
        alpha, beta = o(r).team_slot_s.get("alpha", 0.0), o(r).team_slot_s.get("beta", 0.0)
        return f"{alpha / beta:.2f} ({alpha + beta:,.0f} slot-s)" if alpha and beta else "-"

    row("jobs; tasks (all steps)", lambda r: f"{len(o(r).job_s)}; {o(r).tasks_published:,}")
    row("makespan, autoscaled", lambda r: _s(o(r).makespan_s))
    row(
        "makespan, fixed pool of the peak size",
        lambda r: _s(r["fixed"].makespan_s) if "fixed" in r else "-",
    )
    row("ratio autoscaled / fixed", ratio)
    row("peak workers cpu / gpu", lambda r: pools(r, lambda p: f"{o(r).peak_workers[p]:,}"))
    row("utilisation cpu / gpu", lambda r: pools(r, lambda p: f"{o(r).utilisation[p]:.0%}"))
    row(
        "utilisation of the fixed pool",
        lambda r: pools(r, lambda p: f"{r['fixed'].utilisation[p]:.0%}") if "fixed" in r else "-",
    )
    row(
        "most tasks queued between steps, autoscaled / fixed",
        lambda r: (
            f"{o(r).most_between:,} / " + (f"{r['fixed'].most_between:,}" if "fixed" in r else "-")
        ),
    )
    row("scale-up time (jobs: worst)", lambda r: _worst(o(r).scale_up_s.values()))
    row("split convergence (jobs: worst)", lambda r: _worst(o(r).convergence_s.values()))
    row(
        "removed while starting / setting up / in grace (of removed)",
        lambda r: (
            "**{starting} / {setting_up} / {in_grace}**".format(**o(r).removed_bad)
            + f" (of {o(r).removed:,})"
        ),
    )
    row(
        "pool flips cpu / gpu (after a change of load)",
        lambda r: " / ".join(flip_counts(r, p) for p in ("cpu", "gpu")),
    )
    row("step slot flips (taken back: both moves >= 10%; after a change of load)", step_flips)
    row("tail: last job's end -> pools at min", lambda r: _s(o(r).tail_s))
    row(
        "tasks in / done once / run twice",
        lambda r: f"{o(r).tasks_published:,} / {o(r).tasks_done:,} / {o(r).tasks_run_twice}",
    )
    row("alpha / beta slot-seconds, both running (target 3)", share)
    row("GPU: asked > ceil(slots/4); peak slots on GPUs; most tasks a GPU", gpu)
    row("actor set-ups; slot-s waiting on them; loaded actors lost early", setup)
    row(
        "simulated s; events; wall",
        lambda r: f"{o(r).end_s:,.0f}; {o(r).events:,}; {r['wall_s']:.1f} s",
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

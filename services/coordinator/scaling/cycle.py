"""One scaling cycle of the coordinator: its trackers and the workers' heartbeats turned into
the policy's inputs, the policy run, and the decisions kept (the last ones, with their reasons,
for `gristmill workers`). No I/O: the coordinator publishes what this returns.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from gristmill.bus import ScalingDecision, StepSlots, WorkerState
from gristmill.config import ServiceSettings
from services.coordinator.scaling.placement import Placement, place
from services.coordinator.scaling.policy import (
    Decision,
    JobLoad,
    Knobs,
    Memory,
    PoolLimits,
    StepLoad,
    WorkerLoad,
    decide,
)
from services.coordinator.tracking import JobTracker

__all__ = ["DECISIONS_KEPT", "ScalingCycle", "job_loads", "worker_loads"]

DECISIONS_KEPT = 20
POOLS = ("cpu", "gpu")


def job_loads(jobs: Mapping[str, Mapping[str, JobTracker]]) -> list[JobLoad]:
    """The running jobs of every team, as the policy sees them."""
    loads = []
    for team, trackers in sorted(jobs.items()):
        for job, tracker in sorted(trackers.items()):
            started = tracker.started
            if started is None or tracker.finished:
                continue
            steps = tuple(
                StepLoad(
                    step=index,
                    pool=info.pool,
                    backlog=tracker.step_backlog(index),
                    seconds_per_task=tracker.seconds_per_task(index),
                    fan_out=tracker.fan_out(index),
                    gpus=info.gpus,
                )
                for index, info in enumerate(started.steps)
                if index >= started.first_step
            )
            loads.append(JobLoad(team, job, steps))
    return loads


def worker_loads(
    beats: Mapping[str, WorkerState], now: float, starting: Mapping[str, str] | None = None
) -> list[WorkerLoad]:
    """The live workers (one beat each, whichever team's bucket it came from), and those a
    supervisor runs that do not beat yet (`starting`: name -> pool)."""
    early = [
        WorkerLoad(worker=name, pool=pool, slots=1, status="starting")
        for name, pool in sorted((starting or {}).items())
        if name not in beats
    ]
    return early + [
        WorkerLoad(
            worker=beat.worker,
            pool=beat.pool,
            slots=beat.slots,
            status=beat.status,
            running=beat.running,
            ready_for_s=max(0.0, now - beat.ready_at) if beat.ready_at else 0.0,
            setting_up=beat.setting_up > 0,
        )
        for _, beat in sorted(beats.items())
    ]


def _with_setup(loads: list[JobLoad], beats: Mapping[str, WorkerState]) -> list[JobLoad]:
    """Each step's set-up time: the longest any worker measured."""
    measured: dict[str, float] = {}
    for beat in beats.values():
        for key, seconds in beat.setup_s.items():
            measured[key] = max(measured.get(key, 0.0), seconds)
    out = []
    for load in loads:
        steps = tuple(
            replace(s, setup_s=measured.get(f"{load.job}/{s.step}", 0.0)) for s in load.steps
        )
        out.append(replace(load, steps=steps))
    return out


class ScalingCycle:
    """The coordinator's scaling state: the policy's memory and the last decisions."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.bounds = {pool: (low, high) for pool, low, high in settings.pool_bounds}
        self.knobs = Knobs(
            grace_s=settings.scale_grace_s, scale_down_after_s=settings.scale_down_after_s
        )
        self.weights = {team: settings.policy(team).weight for team in settings.teams}
        self.memory = Memory()
        self.decision: Decision | None = None
        self.seq = 0
        self.history: deque[ScalingDecision] = deque(maxlen=DECISIONS_KEPT)
        self.placement: Placement = {}  # the autoscaled pools' slots, worker by worker
        self.starting: dict[str, str] = {}  # workers started that do not beat yet -> pool

    def assigned(self, worker: str, team: str) -> list[dict[str, Any]]:
        """What a worker of an autoscaled pool pulls for `team`: its placed slots per step."""
        return [
            {"job": job, "step": step, "slots": count}
            for (owner, job, step), count in sorted(self.placement.get(worker, {}).items())
            if owner == team
        ]

    def pools(self, workers: list[WorkerLoad]) -> dict[str, PoolLimits]:
        """Each pool's limits: its bounds where autoscaled, else the size it has."""
        pools = {}
        for pool in POOLS:
            members = [w for w in workers if w.pool == pool and w.status != "draining"]
            per_worker = self.settings.worker_slots if pool == "cpu" else 1
            if members:
                per_worker = max(w.slots for w in members)
            low, high = self.bounds.get(pool, (len(members), len(members)))
            pools[pool] = PoolLimits(pool, low, high, slots_per_worker=per_worker)
        return pools

    def run(
        self,
        jobs: Mapping[str, Mapping[str, JobTracker]],
        beats: Mapping[str, WorkerState],
        now: float | None = None,
        starting: Mapping[str, str] | None = None,
    ) -> ScalingDecision | None:
        """One cycle; returns the decision when it changed something (else None). `starting`
        are the workers a supervisor runs (name -> pool); those not beating yet are starting."""
        now = time.time() if now is None else now
        self.starting = {n: p for n, p in (starting or {}).items() if n not in beats}
        workers = worker_loads(beats, now, starting)
        loads = _with_setup(job_loads(jobs), beats)
        decision, self.memory = decide(
            loads, workers, self.pools(workers), self.weights, self.memory, now, self.knobs
        )
        changed = decision.changed_from(self.decision)
        self.decision = decision
        hosts = {
            w.worker: w.slots for w in workers if w.pool in self.bounds and w.status == "ready"
        }
        self.placement = place(decision.slots, hosts, self.placement)
        if not changed:
            return None
        self.seq += 1
        message = to_message(decision, self.seq)
        self.history.append(message)
        return message

    def view(self) -> dict[str, Any]:
        """The last decisions, newest first (what `gristmill workers` shows)."""
        return {
            "autoscaled": {pool: list(bounds) for pool, bounds in sorted(self.bounds.items())},
            "decisions": [d.model_dump(mode="json") for d in reversed(self.history)],
        }


def to_message(decision: Decision, seq: int) -> ScalingDecision:
    """A decision as the bus carries it."""
    return ScalingDecision(
        seq=seq,
        at=decision.at,
        workers=dict(decision.workers),
        remove={pool: list(names) for pool, names in decision.remove.items()},
        gpus=dict(decision.gpus),
        slots=[
            StepSlots(team=team, job=job, step=step, slots=count)
            for (team, job, step), count in sorted(decision.slots.items())
        ],
        reasons=list(decision.reasons),
    )

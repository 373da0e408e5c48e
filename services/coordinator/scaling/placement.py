"""Placing a decision's slots per step on the workers of an autoscaled pool. Pure.

Each step's slots go on as few workers as they fill, and stay where they were last cycle as far
as the plan allows: a step's actors (its stage set up, a model loaded) are where its slots were,
and every slot moved to another worker is an actor set up again. On a small machine an actor's
start costs more than its step's slot-seconds; spreading every step over every worker, as a
pool of fixed size does, pays that start on every worker.
"""

from __future__ import annotations

from collections.abc import Mapping

from services.coordinator.scaling.policy import StepKey

__all__ = ["Placement", "place"]

Placement = dict[str, dict[StepKey, int]]  # worker -> step -> slots


def place(
    plan: Mapping[StepKey, int], workers: Mapping[str, int], previous: Placement | None = None
) -> Placement:
    """`plan` (slots per step) laid out on `workers` (name -> slots): first what each worker
    held last time and the plan still wants, then the rest, the largest step first, on the
    workers that already run the step, then on those with the most free slots (ties by name).
    Slots the workers do not have are left out."""
    previous = previous or {}
    placed: Placement = {worker: {} for worker in sorted(workers)}
    free = dict(workers)
    left = {key: count for key, count in plan.items() if count > 0}
    for worker in sorted(workers):  # what stays where it was
        for key, count in sorted(previous.get(worker, {}).items()):
            keep = min(count, left.get(key, 0), free[worker])
            if keep > 0:
                placed[worker][key] = keep
                free[worker] -= keep
                left[key] -= keep
    for key in sorted(left, key=lambda k: (-left[k], k)):
        while left[key] > 0:
            hosts = [w for w in placed if free[w] > 0]
            if not hosts:
                break
            worker = min(hosts, key=lambda w: (key not in placed[w], -free[w], w))
            take = min(left[key], free[worker])
            placed[worker][key] = placed[worker].get(key, 0) + take
            free[worker] -= take
            left[key] -= take
    return placed

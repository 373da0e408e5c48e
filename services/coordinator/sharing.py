"""How a team's in-flight quota is spread over the workers: each worker may run at most its
part of the team's `max_in_flight_tasks` at once, parts in proportion to the workers' slots
(largest remainder, ties by name), so the parts add up to the quota exactly. Pure.

The worker enforces its part (`services.worker.fairshare`): past it the team's fetched
manifests wait, kept alive, and nothing is refused or dropped. Slots between teams on one worker
are shared there too, by weight.
"""

from __future__ import annotations

__all__ = ["split_cap"]


def split_cap(cap: int, slots: dict[str, int]) -> dict[str, int]:
    """`cap` task runs spread over workers with `slots` each, never more than a worker's slots."""
    if not slots:
        return {}
    total = sum(slots.values())
    budget = min(cap, total)
    exact = {worker: budget * count / total for worker, count in slots.items()}
    parts = {worker: int(share) for worker, share in exact.items()}
    left = budget - sum(parts.values())
    by_remainder = sorted(exact, key=lambda w: (-(exact[w] - parts[w]), w))
    for worker in by_remainder[:left]:
        parts[worker] += 1
    return parts

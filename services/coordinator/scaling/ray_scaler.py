"""Carries a scaling decision out on Ray: asks the cluster's autoscaler for the workers' bundles.

`ray.autoscaler.sdk.request_resources(bundles=...)` sets the smallest cluster the autoscaler
keeps: it adds nodes until these bundles fit (next to what already runs) and keeps them while
the request stands. Each request replaces the previous one, so the scaler sends the whole set
each time it changes, and nothing while it does not.

One bundle per desired worker: `{"CPU": cpus_per_worker}` for a CPU pool worker (it runs one
actor per slot, which ask Ray for no CPU of their own, so a worker's CPUs are its slots),
`{"GPU": gpus_per_worker}` for a GPU pool worker. GPU bundles follow the pool's workers rather
than `decision.gpus` (the GPUs its demand packs into) because the workers are what the policy
bounds (the pool's `max`, and the slow scale-down that keeps busy or new workers): requesting
the packed GPUs would ask the autoscaler past the pool's `max`, and drop the request under
workers the policy still keeps. A worker's GPUs are one bundle so they land on one node, as the
worker needs them.
"""

from __future__ import annotations

import logging
import os

from gristmill.errors import GristmillError
from services.coordinator.scaling.policy import Decision

__all__ = ["Bundle", "RayScaler", "ray_scaler_from_env"]

log = logging.getLogger(__name__)

Bundle = dict[str, float]


class RayScaler:
    """Asks the Ray autoscaler for one bundle per worker each decision wants (module docstring).

    `apply` blocks on an RPC to the cluster's GCS: call it from a thread in async code. It
    connects to the cluster at `RAY_ADDRESS` (else a Ray running on this machine) when this
    process has no Ray connection yet.
    """

    name = "ray"

    def __init__(self, cpus_per_worker: float, gpus_per_worker: float):
        if cpus_per_worker <= 0 or gpus_per_worker <= 0:
            raise ValueError(
                f"a worker needs CPUs and GPUs above 0, got cpus_per_worker={cpus_per_worker}, "
                f"gpus_per_worker={gpus_per_worker}"
            )
        self.cpus_per_worker = float(cpus_per_worker)
        self.gpus_per_worker = float(gpus_per_worker)
        self.requested: list[Bundle] | None = None  # None: nothing asked of this cluster yet

    def bundles(self, decision: Decision) -> list[Bundle]:
        """The bundles `decision`'s workers take: CPU pools' first, then the GPU pool's."""
        out: list[Bundle] = []
        for pool, workers in sorted(decision.workers.items()):
            bundle = (
                {"GPU": self.gpus_per_worker} if pool == "gpu" else {"CPU": self.cpus_per_worker}
            )
            out.extend(dict(bundle) for _ in range(workers))
        return out

    def apply(self, decision: Decision) -> list[Bundle]:
        """Request `decision`'s bundles from the autoscaler, unless they are the ones it already
        holds from this scaler; returns them. No workers at all asks for an empty set, which
        withdraws the previous request (the cluster may scale to its minimum)."""
        bundles = self.bundles(decision)
        if bundles == self.requested:
            return bundles
        _connect()
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[dict(b) for b in bundles])
        log.info("ray: requested %s", _summary(bundles))
        self.requested = bundles
        return bundles


def _connect() -> None:
    """Connect this process to its Ray cluster, unless it already is."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or "auto"
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as error:
        raise GristmillError(
            f"the ray scaler found no Ray cluster at {address!r} to ask for workers: set "
            f"RAY_ADDRESS to the head node's address, or run the coordinator on a Ray node "
            f"({error})"
        ) from error


def _summary(bundles: list[Bundle]) -> str:
    counts: dict[str, int] = {}
    for bundle in bundles:
        key = ", ".join(f"{k}: {v:g}" for k, v in sorted(bundle.items()))
        counts[key] = counts.get(key, 0) + 1
    return "; ".join(f"{n} x {{{k}}}" for k, n in counts.items()) or "no bundles"


def _positive(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise GristmillError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise GristmillError(f"{name} must be above 0, got {raw!r}")
    return value


def ray_scaler_from_env() -> RayScaler:
    """A `RayScaler` with `GRISTMILL_RAY_CPUS_PER_WORKER` CPUs per CPU worker (default: its
    slots, `GRISTMILL_WORKER_SLOTS`, 2) and `GRISTMILL_RAY_GPUS_PER_WORKER` GPUs per GPU
    worker (default 1)."""
    slots = _positive("GRISTMILL_WORKER_SLOTS", 2.0)
    return RayScaler(
        cpus_per_worker=_positive("GRISTMILL_RAY_CPUS_PER_WORKER", slots),
        gpus_per_worker=_positive("GRISTMILL_RAY_GPUS_PER_WORKER", 1.0),
    )

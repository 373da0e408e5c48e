"""Pure rules for placing steps on a Ray cluster: CPU shares and GPU fractions. No I/O."""

from __future__ import annotations

from gristmill.errors import GristmillError
from gristmill.stages.resources import Resources

__all__ = ["fit_cpus", "gpu_request"]

_MIN_CPUS = 0.01


def fit_cpus(requested: list[float], available: float) -> list[float]:
    """CPU requests that let every step have at least one worker at once.

    Unchanged when they fit; otherwise every request shrinks by the same factor, so a 6-step
    pipeline still runs (with fractional CPUs) on a 2-core machine. Steps that ask for no CPU
    keep asking for none.
    """
    if available <= 0:
        raise GristmillError("the Ray cluster has no CPU")
    total = sum(requested)
    if total <= available:
        return list(requested)
    factor = available / total
    return [max(_MIN_CPUS, c * factor) if c > 0 else 0.0 for c in requested]


def gpu_request(
    stage: str, resources: Resources, cluster_gpus: float, gpu_memory_gb: float | None
) -> float:
    """The GPUs (possibly a fraction of one) a worker of `stage` takes on this cluster.

    `gpu_memory_gb` becomes the share of one card's memory (`gpu_memory_gb` of the card, as
    detected). Raises, naming the stage, when the stage needs a GPU and the cluster has none, or
    needs more memory than one card has.
    """
    if not resources.requires_gpu:
        return 0.0
    if cluster_gpus <= 0:
        asked = (
            f"gpus={resources.gpus:g}"
            if resources.gpus
            else f"gpu_memory_gb={resources.gpu_memory_gb:g}"
        )
        raise GristmillError(
            f"stage '{stage}' asks for {asked}, but the Ray cluster has no GPU; run it where "
            f"there is one, or set RAY_ADDRESS to a cluster with GPUs"
        )
    if resources.gpus:
        if resources.gpus > cluster_gpus:
            raise GristmillError(
                f"stage '{stage}' asks for {resources.gpus:g} GPUs; "
                f"the cluster has {cluster_gpus:g}"
            )
        return resources.gpus
    if not gpu_memory_gb:
        raise GristmillError(
            f"stage '{stage}' asks for gpu_memory_gb={resources.gpu_memory_gb:g}, but the GPUs' "
            f"memory could not be detected (install gristmill[gpu] for nvidia-ml-py)"
        )
    if resources.gpu_memory_gb > gpu_memory_gb:
        raise GristmillError(
            f"stage '{stage}' asks for {resources.gpu_memory_gb:g} GB of GPU memory; a GPU here "
            f"has {gpu_memory_gb:g} GB"
        )
    return resources.gpu_memory_gb / gpu_memory_gb

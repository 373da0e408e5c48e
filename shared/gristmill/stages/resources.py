"""What a stage asks of the machine, and what a worker tells a stage about where it runs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from gristmill.errors import ResourcesError

__all__ = ["NodeInfo", "Resources", "WorkerMetadata"]


@dataclass(frozen=True)
class Resources:
    """Resources one worker of a stage needs.

    `gpus` may be a fraction below 1 (several workers share a GPU) or a whole number of GPUs;
    `gpu_memory_gb` asks for a share of one GPU by memory instead. The two are exclusive.
    """

    cpus: float = 1.0
    gpu_memory_gb: float = 0.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        for name in ("cpus", "gpu_memory_gb", "gpus"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ResourcesError(f"Resources.{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ResourcesError(f"Resources.{name} must be a finite number >= 0, got {value}")
        if self.gpus > 0 and self.gpu_memory_gb > 0:
            raise ResourcesError(
                f"Resources: give gpus ({self.gpus}) or gpu_memory_gb ({self.gpu_memory_gb}), "
                f"not both"
            )
        if self.gpus > 1 and not float(self.gpus).is_integer():
            raise ResourcesError(
                f"Resources.gpus above 1 must be a whole number of GPUs, got {self.gpus}; "
                f"fractions are for sharing one GPU (gpus < 1)"
            )

    @property
    def requires_gpu(self) -> bool:
        """Whether a worker of this stage needs a GPU at all."""
        return self.gpus > 0 or self.gpu_memory_gb > 0

    def to_dict(self) -> dict[str, float]:
        """The fields as a plain dict (for specs and messages)."""
        return asdict(self)

    def describe(self) -> str:
        """A short human form, e.g. `cpus=1 gpus=0.25`."""
        parts = [f"cpus={self.cpus:g}"]
        if self.gpus:
            parts.append(f"gpus={self.gpus:g}")
        if self.gpu_memory_gb:
            parts.append(f"gpu_memory_gb={self.gpu_memory_gb:g}")
        return " ".join(parts)


@dataclass(frozen=True)
class NodeInfo:
    """The machine a stage is being set up on (`setup_on_node`)."""

    node_id: str = ""


@dataclass(frozen=True)
class WorkerMetadata:
    """The worker a stage instance runs in; `allocation` is whatever the executor assigned."""

    worker_id: str = ""
    allocation: dict[str, Any] = field(default_factory=dict)

"""What carries a scaling decision out (a `Scaler`), and the one `GRISTMILL_SCALER` names."""

from __future__ import annotations

from typing import Protocol

from gristmill.errors import GristmillError
from services.coordinator.scaling.policy import Decision

__all__ = ["SCALERS", "NoScaler", "Scaler", "scaler_from_env"]

SCALERS = ("none", "ray", "kubernetes")


class Scaler(Protocol):
    """Makes the cluster hold the workers a decision wants; returns what it asked for."""

    @property
    def name(self) -> str:
        """What `GRISTMILL_SCALER` calls it."""
        ...

    def apply(self, decision: Decision) -> object:
        """Carry `decision` out (blocking I/O: call it from a thread in async code)."""
        ...


class NoScaler:
    """Carries nothing out: the decisions are only published (the desired-workers gauge, the
    dashboard), for an operator or KEDA to act on."""

    name = "none"

    def apply(self, decision: Decision) -> None:
        """Nothing."""


def scaler_from_env(name: str) -> Scaler:
    """The scaler called `name` (`GRISTMILL_SCALER`), configured from the environment."""
    choice = name.strip().lower()
    if choice == "none":
        return NoScaler()
    if choice == "ray":
        from services.coordinator.scaling.ray_scaler import ray_scaler_from_env

        return ray_scaler_from_env()
    if choice == "kubernetes":
        from services.coordinator.scaling.kubernetes_scaler import kubernetes_scaler_from_env

        return kubernetes_scaler_from_env()
    raise GristmillError(f"GRISTMILL_SCALER must be one of {', '.join(SCALERS)}; got {name!r}")

"""Executors: run a built pipeline's stages on a backend.

`XennaExecutor`, `RayDataExecutor` and `ServiceExecutor` are imported on first use, so that
`import gristmill` never pays for Ray, cosmos-xenna or nats (nor needs them installed).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gristmill.executors.base import BaseExecutor, StageTotals, prepare_initial_tasks
from gristmill.executors.local import LocalExecutor

if TYPE_CHECKING:
    from gristmill.executors.ray_data import RayDataExecutor
    from gristmill.executors.service import ServiceExecutor
    from gristmill.executors.xenna import XennaExecutor

__all__ = [
    "BaseExecutor",
    "LocalExecutor",
    "RayDataExecutor",
    "ServiceExecutor",
    "StageTotals",
    "XennaExecutor",
    "prepare_initial_tasks",
]

# The backends whose modules load only when one of them is asked for.
_LAZY = {
    "RayDataExecutor": "gristmill.executors.ray_data",
    "ServiceExecutor": "gristmill.executors.service",
    "XennaExecutor": "gristmill.executors.xenna",
}


def __getattr__(name: str) -> Any:
    """Load a backend executor's module the first time its class is asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    """The module's names, the backends not loaded yet included (for completion in shells)."""
    return sorted(set(globals()) | set(__all__))

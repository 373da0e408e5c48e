"""Executors: run a built pipeline's stages on a backend."""

from gristmill.executors.base import BaseExecutor, StageTotals, prepare_initial_tasks
from gristmill.executors.local import LocalExecutor

__all__ = ["BaseExecutor", "LocalExecutor", "StageTotals", "prepare_initial_tasks"]

"""gristmill: curate training data with one pipeline model on every executor.

The four nouns: `Task` (a batch of data), `ProcessingStage` (the unit of work), `Pipeline` (stages
in order) and an executor (`LocalExecutor` here; more backends in `gristmill.executors`).
"""

from importlib.metadata import PackageNotFoundError, version

from gristmill.executors import BaseExecutor, LocalExecutor
from gristmill.pipeline import Pipeline
from gristmill.stages import CompositeStage, ProcessingStage, Resources, register_stage
from gristmill.tasks import DocumentBatch, EmptyTask, FileGroupTask, Task

try:
    __version__ = version("gristmill")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "BaseExecutor",
    "CompositeStage",
    "DocumentBatch",
    "EmptyTask",
    "FileGroupTask",
    "LocalExecutor",
    "Pipeline",
    "ProcessingStage",
    "Resources",
    "Task",
    "__version__",
    "register_stage",
]

"""`ProcessingStage`, the unit of work, and `CompositeStage`, a stage made of stages."""

from __future__ import annotations

import copy
import inspect
from abc import ABC, abstractmethod
from typing import Any, Self

from gristmill.errors import PipelineBuildError, SpecError
from gristmill.stages.resources import NodeInfo, Resources, WorkerMetadata
from gristmill.tasks import Task

__all__ = ["CompositeStage", "ProcessingStage"]

# Settings every stage has besides its constructor parameters; `with_` and specs may change them.
STAGE_SETTINGS = ("name", "resources", "batch_size", "fans_out", "task_timeout_s")


class ProcessingStage[X: Task[Any], Y: Task[Any]](ABC):
    """Turns one task of type X into zero, one or many tasks of type Y.

    Subclasses implement `process`; they may set the class attributes `name` (defaults to the class
    name), `resources` and `batch_size`, declare the columns they read and write in `inputs()` /
    `outputs()`, and load expensive state in `setup()` (once per worker) or `setup_on_node()` (once
    per machine). A stage must be retry-safe: the same input gives the same output, so running it
    twice is harmless.

    For `to_spec()`, each `__init__` parameter must be kept as an attribute of the same name
    (override `get_params()` otherwise).
    """

    name: str = "ProcessingStage"
    resources: Resources = Resources()
    batch_size: int = 1
    # Whether the stage splits one task into many independent ones (a source, a file
    # partitioner): fusion ends the step after such a stage, so executors can spread the
    # pieces over workers. None (the default) detects it from `process`'s annotations (see
    # `gristmill.stages.fusion.fan_out_reason`); True or False says so outright.
    fans_out: bool | None = None
    # How long one task may run on the service before its attempt is stopped and counted as
    # failed (None: the job's `task_timeout_s`). A hung stage must not hold a worker forever.
    task_timeout_s: float | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__

    def inputs(self) -> tuple[list[str], list[str]]:
        """What the stage reads: (task attributes, data columns)."""
        return [], []

    def outputs(self) -> tuple[list[str], list[str]]:
        """What the stage writes: (task attributes, data columns)."""
        return [], []

    def num_workers(self) -> int | None:
        """How many workers this stage must have, when it pins the number (default: the
        executor decides)."""
        return None

    def setup_on_node(
        self, node_info: NodeInfo | None = None, worker_metadata: WorkerMetadata | None = None
    ) -> None:
        """Prepare the machine once (e.g. download or unpack a model to local disk)."""

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        """Prepare this worker once before its first task (e.g. load a model)."""

    def teardown(self) -> None:
        """Release what `setup` took; called once after the worker's last task."""

    @abstractmethod
    def process(self, task: X) -> Y | list[Y] | None:
        """Process one task: return a task, a list of tasks (fan-out) or None (drop it)."""

    def process_batch(self, tasks: list[X]) -> list[Y]:
        """Process `batch_size` tasks at once. Override for vectorised work (e.g. a model).

        An override should return one task per input, in input order: executors then carry each
        input's lineage onto its output. Any other shape is allowed; its outputs get ids derived
        from the whole batch.
        """
        results: list[Y] = []
        for task in tasks:
            result = self.process(task)
            if isinstance(result, list):
                results.extend(result)
            elif result is not None:
                results.append(result)
        return results

    def with_(self, **overrides: Any) -> Self:
        """A copy with some settings changed (`name`, `resources`, `batch_size`, `fans_out`, or
        any constructor parameter); the original stays as it was."""
        allowed = set(STAGE_SETTINGS) | set(init_param_names(type(self))) | set(vars(self))
        unknown = sorted(k for k in overrides if k not in allowed or k.startswith("_"))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}.with_() got unknown setting(s) {', '.join(unknown)}; "
                f"it accepts {', '.join(sorted(a for a in allowed if not a.startswith('_')))}"
            )
        clone = copy.copy(self)
        for key, value in overrides.items():
            if key == "resources" and isinstance(value, dict):
                value = Resources(**value)
            setattr(clone, key, value)
        clone.check_settings()
        return clone

    def check_settings(self) -> None:
        """Raise `PipelineBuildError` if `name`, `resources`, `batch_size` or `fans_out` is
        unusable."""
        if not isinstance(self.name, str) or not self.name:
            raise PipelineBuildError(
                f"{type(self).__name__}: name must be a non-empty string, got {self.name!r}"
            )
        if not isinstance(self.resources, Resources):
            raise PipelineBuildError(
                f"stage '{self.name}': resources must be a Resources, got {self.resources!r}"
            )
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise PipelineBuildError(
                f"stage '{self.name}': batch_size must be an int, got {self.batch_size!r}"
            )
        if self.batch_size < 1:
            raise PipelineBuildError(
                f"stage '{self.name}': batch_size must be >= 1, got {self.batch_size}"
            )
        if self.fans_out is not None and not isinstance(self.fans_out, bool):
            raise PipelineBuildError(
                f"stage '{self.name}': fans_out must be True, False or None (detect it), "
                f"got {self.fans_out!r}"
            )
        timeout = self.task_timeout_s
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise PipelineBuildError(
                f"stage '{self.name}': task_timeout_s must be a number of seconds above 0 or "
                f"None (the job's), got {timeout!r}"
            )

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this stage (read from same-named attributes)."""
        names = init_param_names(type(self))
        missing = [n for n in names if not hasattr(self, n)]
        if missing:
            raise SpecError(
                f"stage '{self.name}' ({type(self).__name__}) keeps no attribute for its "
                f"__init__ parameter(s) {', '.join(missing)}; store each as self.<name> "
                f"or override get_params()"
            )
        return {n: getattr(self, n) for n in names}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class CompositeStage[X: Task[Any], Y: Task[Any]](ProcessingStage[X, Y]):
    """A user-facing stage that a pipeline replaces by the stages of `decompose()` at build time."""

    @abstractmethod
    def decompose(self) -> list[ProcessingStage[Any, Any]]:
        """The stages this one stands for, in order."""

    def process(self, task: X) -> Y | list[Y] | None:
        """Composite stages never process: `Pipeline.build()` decomposes them first."""
        raise PipelineBuildError(
            f"composite stage '{self.name}' cannot process tasks itself; "
            f"add it to a Pipeline, whose build() decomposes it"
        )


def init_signature(cls: type) -> inspect.Signature:
    """The signature of `cls`'s constructor, without `self`."""
    return inspect.signature(cls)


def init_param_names(cls: type) -> list[str]:
    """Names of the explicit parameters of `cls`'s constructor (no *args or **kwargs)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in init_signature(cls).parameters.values() if p.kind in kinds]

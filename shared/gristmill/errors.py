"""Every exception gristmill raises on purpose, in one place.

Messages name what the user can act on: the stage, the column, the file, the parameter.
"""

from __future__ import annotations

import traceback
from typing import Any

__all__ = [
    "DataFormatError",
    "GristmillError",
    "MissingInputError",
    "ModelError",
    "PipelineBuildError",
    "ResourcesError",
    "SpecError",
    "StageError",
    "StageParamsError",
    "StageRegistryError",
    "TaskIdCollisionError",
    "TaskIdError",
    "TaskInputError",
    "TaskSerializationError",
    "UnknownStageError",
    "field_problems",
]


class GristmillError(Exception):
    """Base class of gristmill's own errors."""

    def __reduce__(self) -> tuple[object, ...]:
        # Errors cross process boundaries (Ray workers): rebuild them from their own arguments.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(
    cls: type[GristmillError], args: tuple[object, ...], state: dict[str, object]
) -> GristmillError:
    error = Exception.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class ResourcesError(GristmillError, ValueError):
    """A `Resources` request that no scheduler could honour (negative, or contradictory)."""


class TaskIdError(GristmillError, ValueError):
    """A task id that cannot name a file, a subject token or a store key."""


class TaskIdCollisionError(GristmillError):
    """Two parents made a task with the same id in one step of a run: their data would merge
    into one message, one stored object and one progress entry. Every executor raises it, with
    the same message; `step` is the physical step's 0-based index."""

    def __init__(self, task_id: str, step: int, stage: str, first_parent: str, second_parent: str):
        self.task_id = task_id
        self.step = step
        self.stage = stage
        self.parents = (first_parent, second_parent)
        super().__init__(
            f"task id {task_id!r} of step {step} '{stage}' was made from two parents, "
            f"{first_parent!r} and {second_parent!r}; give each output its own id, or leave "
            f"task_id empty to have one derived"
        )


class TaskSerializationError(GristmillError, ValueError):
    """A task that cannot be turned into bytes, or bytes that are not a gristmill task."""


class PipelineBuildError(GristmillError):
    """A pipeline that cannot be built: empty, wrong stage types, a broken input chain."""


class MissingInputError(PipelineBuildError):
    """A stage needs a column or attribute that nothing before it produces."""

    def __init__(
        self, stage: str, position: int, kind: str, missing: list[str], available: list[str]
    ):
        self.stage = stage
        self.missing = missing
        shown = ", ".join(repr(c) for c in available) if available else "none"
        super().__init__(
            f"stage #{position} '{stage}' needs {kind} {', '.join(repr(m) for m in missing)}, "
            f"which no earlier stage produces (available: {shown}). "
            f"Add a stage that produces it, or fix the stage's inputs()."
        )


class StageError(GristmillError):
    """A stage raised; the original exception is chained as __cause__.

    `phase` is the method that raised: process, setup, setup_on_node or teardown.
    """

    def __init__(
        self,
        stage: str,
        cause: BaseException,
        task_ids: list[str] | None = None,
        phase: str = "process",
    ):
        self.stage = stage
        self.phase = phase
        self.task_ids = list(task_ids or [])
        # Text, so the original traceback survives the trip back from a Ray worker.
        self.traceback = "".join(traceback.format_exception(cause))
        where = f"stage '{stage}' failed in {phase}()"
        if self.task_ids:
            shown = ", ".join(self.task_ids[:5])
            more = len(self.task_ids) - 5
            where += f" on task {shown}" + (f" (+{more} more)" if more > 0 else "")
        super().__init__(f"{where}: {type(cause).__name__}: {cause}")


class TaskInputError(GristmillError, KeyError):
    """A task reaches a stage without a column or attribute the stage declares in inputs()."""

    def __init__(self, stage: str, task_id: str, kind: str, missing: list[str], present: list[str]):
        self.stage = stage
        self.task_id = task_id
        self.missing = missing
        names = ", ".join(repr(m) for m in missing)
        message = f"stage '{stage}' needs {kind} {names}, which task {task_id!r} lacks"
        if present:
            message += f" (it has: {', '.join(repr(p) for p in present)})"
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would otherwise print the message in quotes
        return str(self.args[0])


class DataFormatError(GristmillError, ValueError):
    """Input data that cannot be read as promised; the message names the stage, file and line."""


class ModelError(GristmillError):
    """A model stage's model cannot be found, loaded or run (the message names the path)."""


class StageRegistryError(GristmillError):
    """A stage name that clashes in, or cannot be loaded from, the stage registry."""


class SpecError(GristmillError, ValueError):
    """A pipeline spec (dict or YAML) that is malformed."""


class UnknownStageError(SpecError, KeyError):
    """A spec names a stage that is not in the registry."""

    def __str__(self) -> str:  # KeyError would otherwise print the message in quotes
        return str(self.args[0])


class StageParamsError(SpecError):
    """A spec gives a stage parameters its constructor does not accept."""


def field_problems(errors: list[Any], whole: str) -> str:
    """Pydantic's `ValidationError.errors()` as one line: `field.path: message; ...` (`whole`
    names an error of the document as a whole)."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or whole}: {e['msg']}" for e in errors)

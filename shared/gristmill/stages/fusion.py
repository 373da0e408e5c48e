"""Which adjacent stages may share a step: `fusion_break` says why not (as `describe()` shows
it), `fan_out_reason` why a stage fans out, found from what its author declared."""

from __future__ import annotations

import inspect
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from gristmill.stages.base import CompositeStage, ProcessingStage
from gristmill.stages.execution import FusedStage, is_map_style
from gristmill.tasks import EmptyTask

__all__ = ["can_fuse", "fan_out_reason", "fusion_break"]

AnyStage = ProcessingStage[Any, Any]


def fan_out_reason(stage: AnyStage) -> str | None:
    """Why `stage` fans out (splits a task into pieces that should spread over workers), or None.

    A stage's `fans_out` decides when it is True or False. Left at None (the default), a stage
    fans out when the `process` its class defines is annotated to return a list (`list[X]`,
    `List[X]`, or a union with one, such as `X | list[X]`), or when it is a source (its
    `process` takes an `EmptyTask`). The base class's `Y | list[Y] | None` is no such
    annotation: only one a stage's author wrote counts.
    """
    if isinstance(stage, FusedStage):
        return fan_out_reason(stage.members[-1])  # fusion ends after a fan-out: only the last may
    if stage.fans_out is not None:
        return "fans_out = True" if stage.fans_out else None
    process = type(stage).process
    if process in (ProcessingStage.process, CompositeStage.process):
        return None
    returns, takes = _process_annotations(process)
    if returns is not None and _is_list_type(returns.value):
        return f"process returns {returns.text}"
    if takes is not None and _is_empty_task(takes.value):
        return "a source: process takes an EmptyTask"
    return None


@dataclass(frozen=True)
class _Annotation:
    value: object  # the type, or the text when its names do not resolve here
    text: str  # as the stage's author wrote it


def _process_annotations(process: Any) -> tuple[_Annotation | None, _Annotation | None]:
    """The annotations of what `process` returns and of the task it takes, where it has them."""
    written = inspect.get_annotations(process)
    try:
        resolved = typing.get_type_hints(process)
    except Exception:  # e.g. a task class defined inside a function: judge the text instead
        resolved = {}
    names = list(inspect.signature(process).parameters)  # (self, task)

    def annotation(key: str) -> _Annotation | None:
        if key not in written:
            return None
        return _Annotation(resolved.get(key, written[key]), _text(written[key]))

    return annotation("return"), annotation(names[1] if len(names) > 1 else "")


def _text(annotation: object) -> str:
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__name__
    return re.sub(r"\b(?:\w+\.)+(?=\w)", "", repr(annotation))  # list[mod.X] -> list[X]


# A list type in an annotation's text: list, List, typing.List (not MyList, not x.list).
_LIST_IN_TEXT = re.compile(r"(?<![\w.])(?:typing\.)?(?:list|List)\b")


def _is_list_type(annotation: object) -> bool:
    if isinstance(annotation, str):
        return _LIST_IN_TEXT.search(annotation) is not None
    origin = typing.get_origin(annotation)
    if annotation is list or origin is list:
        return True
    if origin is typing.Union or origin is types.UnionType:
        return any(_is_list_type(member) for member in typing.get_args(annotation))
    return False


def _is_empty_task(annotation: object) -> bool:
    if isinstance(annotation, str):
        return annotation.strip("'\" ").rpartition(".")[2] == "EmptyTask"
    return isinstance(annotation, type) and issubclass(annotation, EmptyTask)


def fusion_break(first: AnyStage, second: AnyStage) -> str | None:
    """Why `second` cannot join the step `first` ends (as `describe()` says it), or None when
    the two may run as one step without changing any output.

    Both must work task by task with `batch_size` 1, need nothing set up per node, and ask for
    the same resources (so one worker fits both); and the first must not fan out (its pieces
    should spread over workers, not queue behind one; see `fan_out_reason`).
    """
    fans_out = fan_out_reason(first)
    if fans_out:
        return f"'{first.name}' fans out ({fans_out})"
    for stage, who in ((first, f"'{first.name}'"), (second, f"next stage '{second.name}'")):
        if isinstance(stage, FusedStage):
            return f"{who} is a fused step already"
        if not is_map_style(stage):
            return f"{who} overrides process_batch"
        if stage.batch_size != 1:
            return f"{who} has batch_size {stage.batch_size}"
        if type(stage).setup_on_node is not ProcessingStage.setup_on_node:
            return f"{who} sets up per node"
    if first.resources != second.resources:
        wanted = second.resources.describe()
        return f"next stage '{second.name}' asks for other resources ({wanted})"
    return None


def can_fuse(first: AnyStage, second: AnyStage) -> bool:
    """Whether two adjacent stages may run as one step (`fusion_break` finds no reason not to)."""
    return fusion_break(first, second) is None

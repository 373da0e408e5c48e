"""From the stages a user wrote to the steps an executor runs. Pure logic, no I/O.

`build_plan` decomposes composite stages, checks that every stage's declared inputs are produced
before it, and fuses runs of adjacent compatible stages into single steps (`fusion_break` says
why a step ends where it does).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gristmill.errors import MissingInputError, PipelineBuildError
from gristmill.stages import CompositeStage, FusedStage, ProcessingStage, fusion_break

__all__ = ["ANY_COLUMN", "PhysicalPlan", "PlanStep", "build_plan", "check_input_chain", "decompose"]

AnyStage = ProcessingStage[Any, Any]

# In a stage's outputs(): "this stage may write columns it cannot name in advance".
ANY_COLUMN = "*"

# Attributes every task has, so no stage needs another to produce them.
_TASK_ATTRIBUTES = {"task_id", "dataset_name", "data"}


@dataclass(frozen=True)
class PlanStep:
    """One physical step: a single stage, or several fused into a `FusedStage`; `ends` says why
    the next stage is not in it ("last stage", "fusion off", or a reason of `fusion_break`)."""

    index: int
    stage: AnyStage
    members: tuple[AnyStage, ...]
    ends: str = ""

    @property
    def fused(self) -> bool:
        """Whether the step runs more than one logical stage."""
        return len(self.members) > 1


@dataclass(frozen=True)
class PhysicalPlan:
    """What a built pipeline runs: its logical stages and the steps they were grouped into."""

    pipeline_name: str
    stages: tuple[AnyStage, ...]
    steps: tuple[PlanStep, ...]

    def physical_stages(self) -> list[AnyStage]:
        """One stage per step, ready for `BaseExecutor.execute`."""
        return [step.stage for step in self.steps]

    def describe(self) -> str:
        """A readable plan: steps, their resources and batch sizes, why each ends where it does,
        what each stage reads and writes."""
        width = max(len(s.name) for s in self.stages)
        lines = [
            f"Pipeline '{self.pipeline_name}': {len(self.stages)} stages in {len(self.steps)} steps"
        ]
        for step in self.steps:
            stage = step.stage
            fused = "  (fused)" if step.fused else ""
            ends = f"  ends: {step.ends}" if step.ends else ""
            lines.append(
                f"  step {step.index + 1}  [{stage.resources.describe()}, "
                f"batch_size={stage.batch_size}]{fused}{ends}"
            )
            for member in step.members:
                reads = _names(member.inputs())
                writes = _names(member.outputs())
                lines.append(f"    {member.name:<{width}}  reads: {reads:<20} writes: {writes}")
        return "\n".join(lines)


def _names(declared: tuple[list[str], list[str]]) -> str:
    attrs, columns = declared
    return ", ".join([*(f".{a}" for a in attrs), *columns]) or "-"


def decompose(stages: Iterable[object]) -> list[AnyStage]:
    """Replace composite stages by their parts, recursively; reject what is not a stage."""
    flat: list[AnyStage] = []
    for position, stage in enumerate(stages, start=1):
        if isinstance(stage, type) and issubclass(stage, ProcessingStage):
            raise PipelineBuildError(
                f"stage #{position} is the class {stage.__name__}, not an instance; "
                f"write {stage.__name__}(...)"
            )
        if not isinstance(stage, ProcessingStage):
            raise PipelineBuildError(
                f"stage #{position} is a {type(stage).__name__}, not a ProcessingStage"
            )
        if isinstance(stage, CompositeStage):
            parts = stage.decompose()
            if not parts:
                raise PipelineBuildError(f"composite stage '{stage.name}' decomposed to nothing")
            flat.extend(decompose(parts))
        else:
            stage.check_settings()
            flat.append(stage)
    return flat


def check_input_chain(stages: list[AnyStage]) -> None:
    """Raise `MissingInputError` for the first stage that reads what nothing before it writes.

    The first stage's inputs come from the initial tasks, so they count as available. A stage
    whose outputs include `ANY_COLUMN` ("*", e.g. a reader without `fields`) may produce any
    column, so columns are not checked after it.
    """
    attrs: set[str] = set(_TASK_ATTRIBUTES)
    columns: set[str] = set()
    any_column = False
    for position, stage in enumerate(stages, start=1):
        needed_attrs, needed_columns = stage.inputs()
        if position == 1:
            attrs.update(needed_attrs)
            columns.update(needed_columns)
        missing_attrs = [a for a in needed_attrs if a not in attrs]
        if missing_attrs:
            raise MissingInputError(stage.name, position, "attribute", missing_attrs, sorted(attrs))
        missing_columns = [c for c in needed_columns if c not in columns]
        if missing_columns and not any_column:
            raise MissingInputError(
                stage.name, position, "column", missing_columns, sorted(columns)
            )
        made_attrs, made_columns = stage.outputs()
        attrs.update(made_attrs)
        columns.update(made_columns)
        any_column = any_column or ANY_COLUMN in made_columns


def build_plan(name: str, stages: Iterable[object], fuse: bool = True) -> PhysicalPlan:
    """Decompose, check and (unless `fuse` is False) fuse `stages` into a `PhysicalPlan`."""
    logical = decompose(stages)
    if not logical:
        raise PipelineBuildError(f"pipeline '{name}' has no stages")
    check_input_chain(logical)
    groups: list[list[AnyStage]] = [[logical[0]]]
    ends: list[str] = []
    for stage in logical[1:]:
        reason = fusion_break(groups[-1][-1], stage) if fuse else "fusion off"
        if reason is None:
            groups[-1].append(stage)
        else:
            ends.append(reason)
            groups.append([stage])
    ends.append("last stage")
    steps = tuple(
        PlanStep(
            index=i,
            stage=group[0] if len(group) == 1 else FusedStage(group),
            members=tuple(group),
            ends=end,
        )
        for i, (group, end) in enumerate(zip(groups, ends, strict=True))
    )
    return PhysicalPlan(pipeline_name=name, stages=tuple(logical), steps=steps)

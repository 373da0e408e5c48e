"""`Pipeline`: an ordered list of stages that runs unchanged on every executor."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import yaml

from gristmill.pipeline.plan import PhysicalPlan, build_plan
from gristmill.pipeline.spec import (
    ClassLoader,
    PipelineSpec,
    load_spec,
    stage_from_spec,
    stage_to_spec,
)
from gristmill.stages import ProcessingStage
from gristmill.tasks import Task

if TYPE_CHECKING:
    from gristmill.executors.base import BaseExecutor

__all__ = ["Pipeline"]

AnyStage = ProcessingStage[Any, Any]


class Pipeline:
    """A named, ordered list of stages.

    `build()` checks it and returns the `PhysicalPlan` executors run; `run()` builds and runs it
    (on a `LocalExecutor` unless told otherwise); `from_spec()` / `to_spec()` turn it into plain
    data naming registered stages, and back.
    """

    def __init__(
        self, name: str, stages: list[AnyStage] | None = None, description: str | None = None
    ):
        self.name = name
        self.description = description
        self._stages: list[AnyStage] = list(stages or [])

    @property
    def stages(self) -> list[AnyStage]:
        """The stages as added (composites not yet decomposed)."""
        return list(self._stages)

    def add_stage(self, stage: AnyStage) -> Self:
        """Append a stage; returns the pipeline, so calls chain."""
        self._stages.append(stage)
        return self

    def build(self, fuse: bool = True) -> PhysicalPlan:
        """Decompose composites, check every stage's inputs are produced upstream, and group
        adjacent compatible stages into fused steps (unless `fuse` is False)."""
        return build_plan(self.name, self._stages, fuse=fuse)

    def describe(self) -> str:
        """A readable account of the plan: steps, resources, what each stage reads and writes."""
        text = self.build().describe()
        return f"{text}\n  {self.description}" if self.description else text

    def run(
        self,
        executor: BaseExecutor | None = None,
        initial_tasks: list[Task[Any]] | None = None,
        fuse: bool = True,
    ) -> list[Task[Any]]:
        """Build the pipeline and run it; returns the last stage's output tasks."""
        plan = self.build(fuse=fuse)
        if executor is None:
            # The one place pipeline reaches into executors: the default every user expects.
            from gristmill.executors.local import LocalExecutor

            executor = LocalExecutor()
        return executor.execute(plan.physical_stages(), initial_tasks)

    @classmethod
    def from_spec(
        cls,
        source: PipelineSpec | dict[str, Any] | str | Path,
        load_class: ClassLoader | None = None,
    ) -> Pipeline:
        """Build a pipeline from a spec dict or a YAML file naming registered stages (and, with
        `load_class`, classes shipped by value: see `gristmill.pipeline.portable`)."""
        spec = load_spec(source)
        stages = [
            stage_from_spec(s, position, load_class) for position, s in enumerate(spec.stages, 1)
        ]
        return cls(spec.name, stages, description=spec.description)

    def to_spec(self) -> dict[str, Any]:
        """This pipeline as a spec dict (raises if a stage's class is not registered)."""
        spec = PipelineSpec(
            name=self.name,
            description=self.description,
            stages=[stage_to_spec(stage) for stage in self._stages],
        )
        return spec.to_dict()

    def to_yaml(self) -> str:
        """This pipeline's spec as YAML text."""
        return yaml.safe_dump(self.to_spec(), sort_keys=False)

    def __repr__(self) -> str:
        return f"Pipeline(name={self.name!r}, stages={[s.name for s in self._stages]})"

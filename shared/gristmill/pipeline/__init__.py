"""Pipelines: stages in order, their physical plan, and their specs."""

from gristmill.pipeline.pipeline import Pipeline
from gristmill.pipeline.plan import PhysicalPlan, PlanStep, build_plan
from gristmill.pipeline.spec import PipelineSpec, StageSpec, load_spec

__all__ = [
    "PhysicalPlan",
    "Pipeline",
    "PipelineSpec",
    "PlanStep",
    "StageSpec",
    "build_plan",
    "load_spec",
]

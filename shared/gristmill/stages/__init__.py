"""Stages: the units of work a pipeline is made of, and the registry that names them."""

from gristmill.stages.base import CompositeStage, ProcessingStage
from gristmill.stages.execution import FusedStage, is_map_style, run_stage, run_stage_with_parents
from gristmill.stages.fusion import can_fuse, fan_out_reason, fusion_break
from gristmill.stages.registry import (
    get_stage_class,
    register_stage,
    registered_stage_names,
    stage_registry_name,
)
from gristmill.stages.resources import NodeInfo, Resources, WorkerMetadata

__all__ = [
    "CompositeStage",
    "FusedStage",
    "NodeInfo",
    "ProcessingStage",
    "Resources",
    "WorkerMetadata",
    "can_fuse",
    "fan_out_reason",
    "fusion_break",
    "get_stage_class",
    "is_map_style",
    "register_stage",
    "registered_stage_names",
    "run_stage",
    "run_stage_with_parents",
    "stage_registry_name",
]

"""Applying a stage to tasks: the one place every executor shares for what a stage call means.

`run_stage` checks the declared inputs, calls `process` (per task) or an overridden
`process_batch`, normalises what comes back, gives tasks without an id their derived id (and
checks the ids a stage gave), carries lineage (dataset, metadata, perf) from parent to child,
records `StagePerfStats`, and drops tasks that fail `validate()` (logged) unless they carry drop
records, which must reach a writer. Drop records (`gristmill.tasks.drops`) move to the first
child of a fan-out, so each is persisted once. `run_stage_with_parents` does the same and says
which input each output came from. Executors differ only in where and when they call it.
`FusedStage` runs a step of fused stages (which may fuse: `gristmill.stages.fusion`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pandas as pd
import pyarrow as pa

from gristmill.errors import GristmillError, StageError, TaskInputError
from gristmill.stages.base import ProcessingStage
from gristmill.tasks import (
    DROPS_KEY,
    StagePerfStats,
    Task,
    check_task_id,
    content_task_id,
    derive_task_id,
    drop_count,
)

__all__ = ["FusedStage", "is_map_style", "run_stage", "run_stage_with_parents"]

log = logging.getLogger(__name__)

AnyStage = ProcessingStage[Any, Any]
AnyTask = Task[Any]


def is_map_style(stage: AnyStage) -> bool:
    """True when the stage works task by task (it does not override `process_batch`)."""
    return type(stage).process_batch is ProcessingStage.process_batch


def run_stage(stage: AnyStage, tasks: list[AnyTask]) -> list[AnyTask]:
    """Run `stage` on one batch of `tasks` (at most `stage.batch_size`) and return its outputs."""
    return [child for _, child in run_stage_with_parents(stage, tasks)]


def run_stage_with_parents(stage: AnyStage, tasks: list[AnyTask]) -> list[tuple[str, AnyTask]]:
    """`run_stage`, each output paired with the id of the input it was made from (the inputs'
    ids joined by '+' for an output made from a whole batch): what executors need to catch two
    inputs making one output id (`gristmill.executors.base.TaskIdLedger`)."""
    if not tasks:
        return []
    if isinstance(stage, FusedStage):
        return [(_batch_label(tasks), child) for child in stage.run(tasks)]
    for task in tasks:
        check_inputs(stage, task)
    outputs: list[tuple[str, AnyTask]] = []
    if is_map_style(stage):
        for task in tasks:
            before = drop_count(task)
            started = time.perf_counter()
            children = _as_tasks(stage, _call(stage, [task], stage.process, task))
            elapsed = time.perf_counter() - started
            outputs += [(task.task_id, c) for c in _adopt(stage, [task], children, elapsed, before)]
    else:
        befores = [drop_count(t) for t in tasks]
        started = time.perf_counter()
        children = _as_tasks(stage, _call(stage, tasks, stage.process_batch, tasks))
        elapsed = time.perf_counter() - started
        if len(children) == len(tasks):  # one output per input: each keeps its input's lineage
            share = elapsed / len(tasks)
            for parent, child, before in zip(tasks, children, befores, strict=True):
                kept = _adopt(stage, [parent], [child], share, before)
                outputs += [(parent.task_id, c) for c in kept]
        else:
            kept = _adopt(stage, tasks, children, elapsed, sum(befores))
            outputs += [(_batch_label(tasks), c) for c in kept]
    _check_unique_ids(stage, [child for _, child in outputs])
    return outputs


def _batch_label(tasks: list[AnyTask]) -> str:
    return "+".join(t.task_id for t in tasks)


def _check_unique_ids(stage: AnyStage, outputs: list[AnyTask]) -> None:
    seen: set[str] = set()
    for task in outputs:
        if task.task_id in seen:
            raise GristmillError(
                f"stage '{stage.name}' returned two tasks with task_id {task.task_id!r}; "
                f"give each output its own id, or leave task_id empty to have one derived"
            )
        seen.add(task.task_id)


def check_inputs(stage: AnyStage, task: AnyTask) -> None:
    """Raise `TaskInputError` when `task` lacks an attribute or column `stage` declares."""
    attrs, columns = stage.inputs()
    missing_attrs = [a for a in attrs if not hasattr(task, a)]
    if missing_attrs:
        raise TaskInputError(stage.name, task.task_id, "attribute", missing_attrs, [])
    present = table_columns(task.data)
    if columns and present is not None:
        missing = [c for c in columns if c not in present]
        if missing:
            raise TaskInputError(stage.name, task.task_id, "column", missing, present)


def table_columns(data: object) -> list[str] | None:
    """The column names of tabular task data, or None when the data is not a table."""
    if isinstance(data, pa.Table):
        return list(data.column_names)
    if isinstance(data, pd.DataFrame):
        return [str(c) for c in data.columns]
    return None


def _call(stage: AnyStage, tasks: list[AnyTask], fn: Any, arg: Any) -> Any:
    try:
        return fn(arg)
    except GristmillError:
        raise
    except Exception as exc:
        raise StageError(stage.name, exc, [t.task_id for t in tasks]) from exc


def _as_tasks(stage: AnyStage, result: object) -> list[AnyTask]:
    if result is None:
        return []
    items: list[object] = result if isinstance(result, list) else [result]
    tasks: list[AnyTask] = []
    for item in items:
        if not isinstance(item, Task):
            raise GristmillError(
                f"stage '{stage.name}' returned {type(item).__name__}; "
                f"process must return a Task, a list of Tasks or None"
            )
        tasks.append(item)
    return tasks


def _adopt(
    stage: AnyStage,
    parents: list[AnyTask],
    children: list[AnyTask],
    elapsed: float,
    drops_before: int,
) -> list[AnyTask]:
    """Give children ids, lineage and this call's perf stats; drop the invalid ones."""
    single = parents[0] if len(parents) == 1 else None
    parent_id = single.task_id if single else content_task_id(*(p.task_id for p in parents))
    items_in = sum(p.num_items for p in parents)
    inherited_drops = [g for p in parents for g in p._metadata.get(DROPS_KEY, ())]
    for index, child in enumerate(children):
        if child.task_id:  # the stage named it: the name must be safe as a file name too
            check_task_id(child.task_id, where=f"stage '{stage.name}' made a task whose")
        else:
            child.task_id = derive_task_id(parent_id, stage.name, index)
        if child is not single:
            # Always fresh containers: a child built with dataclasses.replace(parent) shares
            # the parent's, and siblings must not append to one another's history.
            inherited = single or child
            child.dataset_name = child.dataset_name or inherited.dataset_name
            # The parent's metadata carries on under what the child set itself (a filter that
            # recorded drops must not lose the batch's source files, say).
            child._metadata = {**inherited._metadata, **child._metadata}
            child._stage_perf = list(child._stage_perf or inherited._stage_perf)
        _settle_drops(child, inherited_drops if index == 0 else [], inherited_drops)
    if not children and inherited_drops:
        log.warning(
            "stage %s returned nothing for task %s: the drop records of %d documents are lost",
            stage.name,
            parent_id,
            sum(len(g["ids"]) for g in inherited_drops),
        )
    dropped = sum(drop_count(c) for c in children) - drops_before
    kept: list[AnyTask] = []
    for child in children:
        child.add_stage_perf(
            StagePerfStats(
                stage_name=stage.name,
                wall_time_s=elapsed,
                items_in=items_in,
                items_out=child.num_items,
                items_dropped=dropped,
                tasks_in=len(parents),
            )
        )
        if child.validate() or drop_count(child):
            kept.append(child)  # an invalid task that explains drops travels on to a writer
        else:  # an empty batch loses nothing; a non-empty invalid one deserves a warning
            level = logging.WARNING if child.num_items else logging.DEBUG
            log.log(level, "stage %s: dropping invalid task %s", stage.name, child.task_id)
    return kept


def _settle_drops(child: AnyTask, carried: list[Any], inherited: list[Any]) -> None:
    """Give `child` the drop records it carries on: `carried` (the parents' records, which go to
    the first child only) plus the ones this call recorded on it."""
    known = {id(group) for group in inherited}
    own = [g for g in child._metadata.get(DROPS_KEY, ()) if id(g) not in known]
    groups = carried + own
    if groups:
        child._metadata[DROPS_KEY] = groups
    else:
        child._metadata.pop(DROPS_KEY, None)


class FusedStage(ProcessingStage[Any, Any]):
    """Several stages run back to back in one worker: one physical step of a plan.

    Each member keeps its own name in ids and perf stats, so a fused run's outputs are identical
    to the unfused run's.
    """

    def __init__(self, members: list[AnyStage]):
        if len(members) < 2:
            raise ValueError("a FusedStage needs at least two members")
        self.members = list(members)
        self.name = "+".join(m.name for m in members)
        self.resources = members[0].resources
        self.batch_size = 1

    def inputs(self) -> tuple[list[str], list[str]]:
        """What the first member reads."""
        return self.members[0].inputs()

    def outputs(self) -> tuple[list[str], list[str]]:
        """Everything any member writes."""
        attrs: list[str] = []
        columns: list[str] = []
        for member in self.members:
            member_attrs, member_columns = member.outputs()
            attrs += [a for a in member_attrs if a not in attrs]
            columns += [c for c in member_columns if c not in columns]
        return attrs, columns

    def setup(self, worker_metadata: Any = None) -> None:
        """Set up every member, in order."""
        for member in self.members:
            member.setup(worker_metadata)

    def teardown(self) -> None:
        """Tear down every member, last first."""
        for member in reversed(self.members):
            member.teardown()

    def process(self, task: Any) -> list[Any]:
        """Pass one task through every member."""
        return self.run([task])

    def run(self, tasks: list[AnyTask]) -> list[AnyTask]:
        """Pass tasks through every member, each with the same semantics as run unfused."""
        for member in self.members:
            tasks = run_stage(member, tasks)
        return tasks

    def get_params(self) -> dict[str, Any]:
        """Fused stages exist only in plans, never in specs."""
        raise TypeError("a FusedStage belongs to a physical plan; specs name its members")

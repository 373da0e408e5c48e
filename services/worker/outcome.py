"""From what one manifest's tasks made to the messages that say so: plain logic, no I/O.

`results_of` turns the actor's per-task results into `TaskResult`s (long id lists moved into
`IdsPart`s) and the next step's `Child` tasks; `child_manifests` puts those into manifests.

Small tasks (their bytes inline) are grouped, up to `group_size` tasks and `GROUP_MAX_BYTES` per
manifest, so that a fan-out into thousands of tiny tasks costs thousands of tasks' work but only
dozens of messages, acks and records; a task whose bytes are stored travels alone, so large
batches spread over workers. Grouping depends only on the source manifest and its results, so
a retried step makes the same manifests with the same keys (and msg ids).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gristmill.bus import (
    IDS_PER_PART,
    MAX_GROUP,
    DataRef,
    IdsPart,
    TaskEntry,
    TaskManifest,
    TaskResult,
)
from gristmill.bus.jobs import group_key
from gristmill.telemetry import attempt_span_id, format_span_id

__all__ = [
    "GROUP_MAX_BYTES",
    "Child",
    "child_manifests",
    "group_size_for",
    "overlong",
    "results_of",
]

GROUP_MAX_BYTES = 256 << 10
# A group holds about this much measured work of the step it is for.
GROUP_TARGET_S = 0.05
# Before a step was ever measured: small groups, so an expensive tiny task does not serialise.
UNMEASURED_GROUP = 8
# A group measured to hold its slot longer than this (seconds) runs task by task, each in a
# slot of its own: its tasks were grouped before their step was measured, and as one run they
# would keep a slot from other teams' work for that long.
UNBUNDLE_ABOVE_S = 1.0


@dataclass(frozen=True)
class Child:
    """One task a source task made for the next step."""

    task_id: str
    dataset: str
    ref: DataRef
    parent: str
    parent_span: str = ""  # the span of the attempt that made it
    root: str = ""  # the input file's task it descends from (continuous jobs)


def results_of(
    manifest: TaskManifest, raw: list[dict[str, Any]], last: bool, attempt: int = 1
) -> tuple[list[TaskResult], list[Child], list[IdsPart]]:
    """The `TaskResult` of each task of `manifest` from the actor's `raw` results (all ok) of
    attempt `attempt`, the next step's tasks (none after the last step), and the `IdsPart`s of
    any task that made more than `IDS_PER_PART` outputs (on the last step they carry the output
    refs too)."""
    results: list[TaskResult] = []
    children: list[Child] = []
    parts: list[IdsPart] = []
    for entry, result in zip(manifest.tasks, raw, strict=True):
        ids: list[str] = result["output_ids"]
        refs = [_ref(fields) for fields in result["refs"]]
        if not last:
            span = format_span_id(
                attempt_span_id(manifest.job, manifest.step, entry.task_id, attempt)
            )
            children += [
                Child(task_id, dataset, ref, entry.task_id, span, entry.root)
                for task_id, dataset, ref in zip(ids, result["datasets"], refs, strict=True)
            ]
        counts = {
            "items_in": result["items_in"],
            "items_out": result["items_out"],
            "items_dropped": result["items_dropped"],
            "wall_time_s": result["wall_time_s"],
            "dropped_by": result.get("dropped_by") or {},
            "root": entry.root,
        }
        if len(ids) <= IDS_PER_PART:
            outputs = refs if last else []
            results.append(
                TaskResult(task_id=entry.task_id, output_ids=ids, outputs=outputs, **counts)
            )
            continue
        starts = range(0, len(ids), IDS_PER_PART)
        parts += [
            IdsPart(
                job=manifest.job,
                step=manifest.step + 1,
                owner=entry.task_id,
                part=number,
                parts=len(starts),
                ids=ids[start : start + IDS_PER_PART],
                outputs=refs[start : start + IDS_PER_PART] if last else [],
                root=entry.root,
            )
            for number, start in enumerate(starts)
        ]
        results.append(TaskResult(task_id=entry.task_id, parts=len(starts), **counts))
    return results, children, parts


def _ref(fields: DataRef | tuple[str, int, str, int, int, str, int]) -> DataRef:
    """A ref from the actor's plain fields (the store made it: nothing to validate)."""
    if isinstance(fields, DataRef):
        return fields
    uri, offset, inline, rows, size, sha256, part = fields
    return DataRef.model_construct(
        uri=uri, offset=offset, inline=inline, rows=rows, bytes=size, sha256=sha256, part=part
    )


def group_size_for(seconds_per_task: float | None) -> int:
    """How many tasks of a step one manifest holds, from the step's measured time per task."""
    if seconds_per_task is None:
        return UNMEASURED_GROUP
    return max(1, min(MAX_GROUP, math.floor(GROUP_TARGET_S / max(seconds_per_task, 1e-6))))


def overlong(seconds_per_task: float | None, tasks: int) -> bool:
    """Whether a group of `tasks` of a step measured at `seconds_per_task` runs task by task."""
    return (
        tasks > 1 and seconds_per_task is not None and seconds_per_task * tasks > UNBUNDLE_ABOVE_S
    )


def child_manifests(
    job: str,
    step: int,
    step_name: str,
    source_key: str,
    children: Sequence[Child],
    group_size: int,
) -> list[TaskManifest]:
    """The manifests for `children` (in order) at `step`, made from manifest `source_key`."""
    manifests: list[TaskManifest] = []
    group: list[TaskEntry] = []
    group_bytes = 0

    def close() -> None:
        nonlocal group, group_bytes
        if not group:
            return
        key = group[0].task_id if len(group) == 1 else group_key(source_key, step, len(manifests))
        manifests.append(
            TaskManifest(job=job, step=step, step_name=step_name, key=key, tasks=group)
        )
        group, group_bytes = [], 0

    for child in children:
        entry = TaskEntry(
            task_id=child.task_id,
            dataset=child.dataset,
            inputs=[child.ref],
            parents=[child.parent],
            parent_span=child.parent_span,
            root=child.root,
        )
        if not child.ref.inline and child.ref.part < 0:  # a large task: it travels alone
            manifests.append(
                TaskManifest(
                    job=job, step=step, step_name=step_name, key=child.task_id, tasks=[entry]
                )
            )
            continue
        size = len(child.ref.inline) + len(child.ref.uri) + 200
        if group and (len(group) >= group_size or group_bytes + size > GROUP_MAX_BYTES):
            close()
        group.append(entry)
        group_bytes += size
    close()
    return manifests

"""Drop records: which documents a task's lineage removed, by which stage, and why.

Filtering stages call `record_drops`; the records ride in the task's metadata (under
`DROPS_KEY`) until a writer persists them (`drops_path=`), so `gristmill why DOC_ID` can answer
for any document. Records are grouped per stage call and stored column-wise to stay compact:

    {"stage": "WordCountFilter", "reason": "score < 50", "threshold": 50,
     "ids": ["doc-1", "doc-7"], "scores": [12, 3]}

A duplicate's group also names the document kept in its place and, when known, where that
one came from: {"duplicate_of": "doc-3", "duplicate_source": "data/part-0.jsonl"}.

On fan-out the records go to the first child only, so every drop is persisted exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from gristmill.tasks.base import Task

__all__ = [
    "DROPS_KEY",
    "WRITTEN_KEY",
    "drop_count",
    "drop_groups",
    "drops_by_stage",
    "iter_drops",
    "record_drops",
]

DROPS_KEY = "drops"
# A writer's output notes where documents went: [{"file": path, "ids": [ids written there]}].
WRITTEN_KEY = "written"


def record_drops(
    task: Task[Any],
    stage: str,
    ids: Sequence[str],
    reason: str,
    scores: Sequence[Any] | None = None,
    threshold: Any = None,
    duplicate_of: str | None = None,
    duplicate_source: str | None = None,
) -> None:
    """Note that `stage` removed the documents `ids` from `task`'s lineage, and why (for a
    duplicate, `duplicate_of` names the document kept in their place and `duplicate_source`
    the input it came from)."""
    if not ids:
        return
    group: dict[str, Any] = {"stage": stage, "reason": reason, "ids": [str(i) for i in ids]}
    if threshold is not None:
        group["threshold"] = threshold
    if duplicate_of is not None:
        group["duplicate_of"] = duplicate_of
    if duplicate_source is not None:
        group["duplicate_source"] = duplicate_source
    if scores is not None:
        if len(scores) != len(ids):
            raise ValueError(f"{stage}: {len(ids)} dropped ids but {len(scores)} scores")
        group["scores"] = list(scores)
    task._metadata.setdefault(DROPS_KEY, []).append(group)


def drops_by_stage(groups: list[dict[str, Any]]) -> dict[str, int]:
    """How many documents each stage dropped, over `groups`."""
    counts: dict[str, int] = {}
    for group in groups:
        counts[group["stage"]] = counts.get(group["stage"], 0) + len(group["ids"])
    return counts


def drop_count(task: Task[Any]) -> int:
    """How many dropped documents `task` carries records of."""
    return sum(len(group["ids"]) for group in task._metadata.get(DROPS_KEY, ()))


def drop_groups(task: Task[Any]) -> list[dict[str, Any]]:
    """The drop records `task` carries, grouped per stage call (see the module docstring)."""
    groups: list[dict[str, Any]] = task._metadata.get(DROPS_KEY, [])
    return groups


def iter_drops(groups: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """One flat record per dropped document: id, stage, reason, and score, threshold,
    duplicate_of and duplicate_source where known."""
    for group in groups:
        scores = group.get("scores")
        for index, doc_id in enumerate(group["ids"]):
            record = {"id": doc_id, "stage": group["stage"], "reason": group["reason"]}
            if scores is not None:
                record["score"] = scores[index]
            for key in ("threshold", "duplicate_of", "duplicate_source"):
                if key in group:
                    record[key] = group[key]
            yield record

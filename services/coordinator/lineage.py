"""A continuous job's lineage: for each input file, the output files and drop records it led to.

When an input file is finished the coordinator writes `<output>/_lineage/<task>.json` (the
file's task id names it, so a rerun writes the same file again), a name readers skip as hidden:

    {"input": "/data/in/a.jsonl", "size": 1048576, "mtime": ..., "task": "3f2a...",
     "seen_at": ..., "done_at": ..., "documents": {"in": 900, "out": 640, "dropped": 260},
     "dropped_by": {"WordCountFilter": 200, "exact_duplicate_removal": 60},
     "outputs": ["/data/out/9c1e....jsonl"], "drops": ["/data/out/drops/9c1e....jsonl"]}
"""

from __future__ import annotations

import json
from typing import Any

from gristmill import fs
from gristmill.stages.text.io.writing import DROPS_FILE_KEY
from gristmill.store import TaskStore
from services.coordinator.files import ClosedFile

__all__ = ["lineage_path", "lineage_record", "write_lineage"]


def lineage_path(output: str, root: str) -> str:
    """Where the lineage record of the input file with task `root` goes."""
    return fs.join(fs.join(output, "_lineage"), f"{root}.json")


def lineage_record(closed: ClosedFile, store: TaskStore, team: str) -> dict[str, Any]:
    """The lineage record of a finished input file (reads its output tasks from the store)."""
    outputs: list[str] = []
    drops: list[str] = []
    for ref in closed.refs():
        task = store.get(ref, team)
        outputs += [str(p) for p in getattr(task, "data", []) or []]
        if task._metadata.get(DROPS_FILE_KEY):
            drops.append(str(task._metadata[DROPS_FILE_KEY]))
    return {
        "input": closed.path,
        "size": closed.size,
        "mtime": closed.mtime,
        "task": closed.root,
        "seen_at": closed.seen_at,
        "done_at": closed.done_at,
        "documents": {
            "in": closed.items_in,
            "out": closed.items_out,
            "dropped": closed.items_dropped,
        },
        "dropped_by": closed.dropped_by,
        "outputs": sorted(outputs),
        "drops": sorted(drops),
    }


def write_lineage(output: str, record: dict[str, Any]) -> str:
    """Write one lineage record (atomically); returns its path."""
    path = lineage_path(output, record["task"])
    with fs.atomic_write(path) as handle:
        handle.write(json.dumps(record, indent=1, sort_keys=True).encode())
    return path

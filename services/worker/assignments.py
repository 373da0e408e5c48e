"""The steps the coordinator assigns this worker: its assignment key in each team's assignments
bucket, followed for as long as the worker runs.

A value that cannot be read (a damaged or foreign write) is logged and ignored, and the watch
goes on: one bad write must not leave a worker deaf to every later assignment.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gristmill.bus.jobs import assignment_key

__all__ = ["Wanted", "follow_assignments", "parse_assignment"]

log = logging.getLogger("gristmill.worker")

Wanted = dict[tuple[str, str, int], int]  # (team, job, step) -> slots


def parse_assignment(team: str, value: bytes) -> Wanted:
    """The steps (and slots) an assignment value gives; an empty value gives none. Raises
    ValueError for a value that is not an assignment."""
    if not value:
        return {}
    raw = json.loads(value)
    wanted: Wanted = {}
    for item in raw["steps"]:
        job, step, slots = item["job"], item["step"], item["slots"]
        if not (isinstance(job, str) and isinstance(step, int) and isinstance(slots, int)):
            raise ValueError(f"not an assignment entry: {item!r}")
        wanted[team, job, step] = slots
    return wanted


async def follow_assignments(
    kv: Any, team: str, worker: str, on_change: Callable[[str, Wanted], Awaitable[None]]
) -> None:
    """Call `on_change(team, wanted)` for every value this worker's key takes."""
    watcher = await kv.watch(assignment_key(worker))
    async for entry in watcher:
        if entry is None:
            continue
        try:
            wanted = parse_assignment(team, entry.value or b"")
        except (ValueError, KeyError, TypeError) as exc:
            log.error(
                "worker %s: ignoring an unreadable assignment %r: %s", worker, entry.value, exc
            )
            continue
        await on_change(team, wanted)

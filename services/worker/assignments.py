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

__all__ = ["Wanted", "follow_assignments", "parse_assignment", "parse_assignment_and_cap"]

log = logging.getLogger("gristmill.worker")

Wanted = dict[tuple[str, str, int], int]  # (team, job, step) -> slots


def parse_assignment(team: str, value: bytes) -> Wanted:
    """The steps (and slots) an assignment value gives; an empty value gives none. Raises
    ValueError for a value that is not an assignment."""
    return parse_assignment_and_cap(team, value)[0]


def parse_assignment_and_cap(team: str, value: bytes) -> tuple[Wanted, int | None]:
    """The steps an assignment value gives, and the most task runs the team may have on this
    worker at once (None: no limit)."""
    if not value:
        return {}, None
    raw = json.loads(value)
    cap = raw.get("cap")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 0):
        raise ValueError(f"not an in-flight cap: {cap!r}")
    wanted: Wanted = {}
    for item in raw["steps"]:
        job, step, slots = item["job"], item["step"], item["slots"]
        if not (isinstance(job, str) and isinstance(step, int) and isinstance(slots, int)):
            raise ValueError(f"not an assignment entry: {item!r}")
        wanted[team, job, step] = slots
    return wanted, cap


async def follow_assignments(
    kv: Any,
    team: str,
    worker: str,
    on_change: Callable[[str, Wanted, int | None], Awaitable[None]],
) -> None:
    """Call `on_change(team, wanted, cap)` for every value this worker's key takes."""
    watcher = await kv.watch(assignment_key(worker))
    async for entry in watcher:
        if entry is None:
            continue
        try:
            wanted, cap = parse_assignment_and_cap(team, entry.value or b"")
        except (ValueError, KeyError, TypeError) as exc:
            log.error(
                "worker %s: ignoring an unreadable assignment %r: %s", worker, entry.value, exc
            )
            continue
        await on_change(team, wanted, cap)

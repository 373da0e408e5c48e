"""A team's quotas at submission: how many jobs it runs at once and how much it stores.

Pure: the planner gathers the use (its jobs bucket, the size of the team's store) and asks
here whether one more job fits. A refusal names the quota, its limit and the current use. The
third quota, task runs in flight, never refuses: workers throttle it (`services.worker`).
"""

from __future__ import annotations

__all__ = ["running_jobs_refusal", "size", "store_refusal"]


def size(count: int) -> str:
    """A byte count for people: `1.5 MiB`."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def running_jobs_refusal(team: str, limit: int | None, running: set[str]) -> str | None:
    """Why a new job of `team` may not start while `running` are unfinished (None: it may)."""
    if limit is None or len(running) < limit:
        return None
    named = ", ".join(sorted(running)[:5]) + (", ..." if len(running) > 5 else "")
    return (
        f"team {team} is at its quota max_running_jobs={limit}: {len(running)} jobs are "
        f"running ({named}); submit again when one has finished"
    )


def store_refusal(team: str, limit: int | None, used: int) -> str | None:
    """Why a new job of `team` may not start with `used` bytes in its store (None: it may)."""
    if limit is None or used < limit:
        return None
    return (
        f"team {team} is at its quota max_store_bytes={limit} ({size(limit)}): its store holds "
        f"{used} bytes ({size(used)}); collect finished jobs (`gristmill gc`) and submit again"
    )

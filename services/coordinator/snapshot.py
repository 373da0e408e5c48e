"""The coordinator's state as a snapshot: every tracker of a team, and the last event applied.

A coordinator that starts loads the team's latest snapshot and replays only the events after
it, so its restart time follows what is running, not how long the service has run. Plain
logic: `dump` and `load` turn trackers into bytes and back (JSON, versioned); the coordinator
stores them (`services.coordinator.service`). A snapshot of another version is ignored (the
coordinator replays from the beginning, as it did before snapshots).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gristmill.bus import JobStarted
from services.coordinator.files import FileLedger
from services.coordinator.tracking import JobTracker, StepTally

__all__ = ["SNAPSHOT_VERSION", "Snapshot", "dump", "load"]

SNAPSHOT_VERSION = 1


@dataclass(frozen=True)
class Snapshot:
    """A team's trackers as of event `applied` (its stream sequence)."""

    applied: int
    jobs: dict[str, JobTracker]


def dump(jobs: dict[str, JobTracker], applied: int) -> bytes:
    """The snapshot of `jobs` after event `applied`, as bytes."""
    document = {
        "version": SNAPSHOT_VERSION,
        "applied": applied,
        "jobs": {job: _tracker(tracker) for job, tracker in jobs.items()},
    }
    return json.dumps(document, separators=(",", ":")).encode()


def load(payload: bytes) -> Snapshot | None:
    """The snapshot in `payload`; None when it is of another version."""
    document = json.loads(payload)
    if document.get("version") != SNAPSHOT_VERSION:
        return None
    jobs = {job: _tracker_from(job, raw) for job, raw in document["jobs"].items()}
    return Snapshot(int(document["applied"]), jobs)


def _tracker(tracker: JobTracker) -> dict[str, Any]:
    started = tracker.started
    return {
        "started": started.model_dump(mode="json", by_alias=True) if started else None,
        "steps": {str(step): _tally(t) for step, t in tracker.steps.items()},
        "parts_expected": [[s, o, n] for (s, o), n in tracker.parts_expected.items()],
        "parts_seen": [[s, o, sorted(seen)] for (s, o), seen in tracker.parts_seen.items()],
        "error": tracker.error,
        "compacted": tracker.compacted,
        "retries": tracker.retries,
        "announced": tracker.announced,
        "finished_at": tracker.finished_at,
        "ledger": tracker.ledger.to_dict() if tracker.ledger is not None else None,
    }


def _tally(tally: StepTally) -> dict[str, Any]:
    return {
        "published": tally.published,
        "done": {task: list(counts) for task, counts in tally.done.items()},
        "failed": sorted(tally.failed),
        "dropped_by": tally.dropped_by,
        "base": tally.base,
        "rate": tally.rate,
    }


def _tracker_from(job: str, raw: dict[str, Any]) -> JobTracker:
    tracker = JobTracker(job)
    if raw["started"] is not None:
        tracker.started = JobStarted.model_validate(raw["started"])
    for step, t in raw["steps"].items():
        tracker.steps[int(step)] = StepTally(
            published=dict(t["published"]),
            done={task: (c[0], c[1], c[2]) for task, c in t["done"].items()},
            failed=set(t["failed"]),
            dropped_by=dict(t["dropped_by"]),
            base=list(t["base"]),
            rate=t["rate"],
        )
    tracker.parts_expected = {(s, o): n for s, o, n in raw["parts_expected"]}
    tracker.parts_seen = {(s, o): set(seen) for s, o, seen in raw["parts_seen"]}
    tracker.error = raw["error"]
    tracker.compacted = raw["compacted"]
    tracker.retries = raw["retries"]
    tracker.announced = raw["announced"]
    tracker.finished_at = raw["finished_at"]
    if raw["ledger"] is not None:
        tracker.ledger = FileLedger.from_dict(raw["ledger"])
    return tracker

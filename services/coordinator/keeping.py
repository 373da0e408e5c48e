"""What the coordinator keeps beyond its events: snapshots of a team's trackers (in the store),
and for each finished input file of a continuous job its lineage record and `closed` mark.

The I/O edge of `services.coordinator.snapshot` and `services.coordinator.files`: the
coordinator's service calls these and holds no such code itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from gristmill import fs
from gristmill.bus import FilesIngested
from gristmill.bus.jobs import closed_key
from gristmill.bus.streams import TeamLayout
from gristmill.bus.subjects import event_subject
from gristmill.store import TaskStore
from services.coordinator.lineage import lineage_record, write_lineage
from services.coordinator.snapshot import Snapshot, load
from services.coordinator.tracking import JobTracker

__all__ = ["close_files", "load_snapshot", "new_files", "purge_snapshotted", "save_snapshot"]

log = logging.getLogger("gristmill.coordinator")

# Event kinds of a continuous job that a stored snapshot makes unneeded (purged up to it).
SNAPSHOTTED_KINDS = ("task_done", "files", "ids")


def snapshot_path(store: TaskStore, team: str) -> str:
    """Where the team's latest snapshot is kept."""
    return f"{store.team_root(team).rstrip('/')}/_coordinator/snapshot.json"


async def load_snapshot(store: TaskStore, team: str) -> Snapshot | None:
    """The team's stored snapshot; None when there is none (or none this version reads)."""
    path = snapshot_path(store, team)
    if not await asyncio.to_thread(fs.exists, path):
        return None
    try:
        return load(await asyncio.to_thread(fs.read_bytes, path))
    except Exception:
        log.exception("team %s: the snapshot %s is unreadable; replaying everything", team, path)
        return None


async def save_snapshot(store: TaskStore, team: str, payload: bytes) -> None:
    """Store a snapshot (atomically: a reader sees the old one or the whole new one)."""

    def write() -> None:
        with fs.atomic_write(snapshot_path(store, team)) as handle:
            handle.write(payload)

    await asyncio.to_thread(write)


async def purge_snapshotted(js: Any, team: str, jobs: list[str], applied: int) -> None:
    """Purge the events of continuous `jobs` a stored snapshot after event `applied` holds."""
    stream = TeamLayout(team).events_stream
    for job in jobs:
        for kind in SNAPSHOTTED_KINDS:
            subject = event_subject(team, job, kind)
            await js.purge_stream(stream, subject=subject, seq=applied + 1)


async def new_files(
    ingest_kv: Any, tracker: JobTracker, ingested: FilesIngested
) -> FilesIngested | None:
    """The files of an announcement the tracker has not finished already (a planner that
    repeats one long after, say); None when there are none."""
    from nats.js.errors import KeyNotFoundError

    ledger = tracker.ledger
    fresh = []
    for file in ingested.files:
        if ledger is not None and not ledger.knows(file.task_id):
            with contextlib.suppress(KeyNotFoundError):
                await ingest_kv.get(closed_key(tracker.job, file.task_id))
                continue  # finished long ago: a repeat
        fresh.append(file)
    return ingested.model_copy(update={"files": fresh}) if fresh else None


async def close_files(store: TaskStore, ingest_kv: Any, team: str, tracker: JobTracker) -> bool:
    """Write the lineage and `closed` mark of each finished input file of the tracker's job,
    letting the tracker forget it; False when one failed (it is tried again later)."""
    ledger = tracker.ledger
    if ledger is None:
        return True
    output = tracker.started.output if tracker.started is not None else ""
    for root, closed in list(ledger.closing.items()):
        try:
            record = await asyncio.to_thread(lineage_record, closed, store, team)
            if output:
                await asyncio.to_thread(write_lineage, output, record)
            await ingest_kv.put(closed_key(tracker.job, root), b"1")
        except Exception:
            log.exception(
                "job %s: the lineage of %s could not be written yet", tracker.job, closed.path
            )
            return False
        ledger.forget(root)
    return True

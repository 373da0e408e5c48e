"""The worker's heartbeat: its `WorkerState` in each team's workers bucket, every second.

The bucket's TTL removes the beats of a worker that died without withdrawing them, so the
beats of dead workers do not pile up in an always-on service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from gristmill.bus import WorkerState
from gristmill.bus.jobs import worker_key

__all__ = ["HEARTBEAT_S", "Heartbeat"]

log = logging.getLogger("gristmill.worker")

HEARTBEAT_S = 1.0


class Heartbeat:
    """Beats `state()` into every bucket of `buckets` (team -> workers KV)."""

    def __init__(self, worker: str, buckets: dict[str, Any], state: Callable[[str], WorkerState]):
        self.worker = worker
        self.buckets = buckets
        self.state = state

    async def beat(self) -> None:
        """One beat into every team's bucket."""
        for team, kv in self.buckets.items():
            await kv.put(worker_key(self.worker), self.state(team).to_json())

    async def run(self) -> None:
        """Beat until cancelled; a failed beat is logged, and the next one tried."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self.beat()
            except Exception:
                log.exception("worker %s: a heartbeat failed", self.worker)

    async def withdraw(self) -> None:
        """Remove this worker's beats (it is stopping)."""
        for kv in self.buckets.values():
            with contextlib.suppress(Exception):
                await kv.delete(worker_key(self.worker))


def now() -> float:
    """Wall-clock time, as heartbeats carry it."""
    return time.time()

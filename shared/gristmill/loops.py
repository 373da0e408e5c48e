"""Background loops that never die silently: `keep_running` restarts a loop that raised, with
backoff and a log line naming it, for as long as its owner does not cancel it; a `LoopSet` holds
a service's loops and starts them all afresh when its connection comes back (a subscription
that outlived a server restart may never deliver again)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

__all__ = ["LoopSet", "cancel_all", "keep_running"]

Loop = Callable[[], Awaitable[None]]


def keep_running(
    name: str,
    loop: Loop,
    log: logging.Logger,
    first_delay_s: float = 0.1,
    max_delay_s: float = 10.0,
) -> asyncio.Task[None]:
    """Run `loop()` in a task; whenever it raises (or returns), log it and start it again after
    a delay that doubles up to `max_delay_s` (reset once a run lasted a minute)."""

    async def supervise() -> None:
        delay = first_delay_s
        while True:
            started = asyncio.get_running_loop().time()
            try:
                await loop()
                log.warning("loop %s ended; starting it again in %.1f s", name, delay)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("loop %s failed; starting it again in %.1f s", name, delay)
            if asyncio.get_running_loop().time() - started > 60:
                delay = first_delay_s
            await asyncio.sleep(delay)
            delay = min(max_delay_s, delay * 2)

    return asyncio.create_task(supervise(), name=name)


class LoopSet:
    """A service's named background loops, each kept running."""

    def __init__(self, log: logging.Logger):
        self.log = log
        self._loops: dict[str, Loop] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, loop: Loop) -> None:
        """Start `loop` under `name` (kept running until `stop`)."""
        self._loops[name] = loop
        self._tasks[name] = keep_running(name, loop, self.log)

    async def restart(self) -> None:
        """Stop every loop and start it again (after the connection came back)."""
        self.log.info("connection back: starting %d loops afresh", len(self._loops))
        await self._cancel()
        for name, loop in self._loops.items():
            self._tasks[name] = keep_running(name, loop, self.log)

    async def stop(self) -> None:
        """Stop every loop."""
        await self._cancel()
        self._loops.clear()

    async def _cancel(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await cancel_all(tasks)


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel `tasks` and wait until each has ended, whatever it ended with."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

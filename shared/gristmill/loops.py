"""Background loops that never die silently: `keep_running` restarts a loop that raised, with
backoff and a log line naming it, for as long as its owner does not cancel it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

__all__ = ["keep_running"]


def keep_running(
    name: str,
    loop: Callable[[], Awaitable[None]],
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

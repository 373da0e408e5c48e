"""Pulling: one puller per assigned step fetches its manifests, as the worker's slots allow.

A puller fetches when the worker's fair slots say its team's turn has come (`wait_turn`: a
slot is free, or the team is owed the next one) and its step has fewer batches in hand than
its share; what it fetched queues for a slot at once, so the next turn is judged with it
counted.

A step with nothing left to fetch (its last fetch found nothing, or took the last message
pending) waits for its next manifest without a turn. A turn is the team's one batch ahead,
and a step with nothing to fetch must not keep it from the team's other steps (a fan-out's
puller, say, long-polling its drained step while the step it fed has work); the batch such a
wait brings queues for its slot like any other.

Every fetched message is kept alive (`in_progress`, a few times per ack wait) from the moment
it arrives until it is settled: a manifest waiting for a slot is never redelivered behind the
worker's back. Slots bound the actor runs only; publishing what a run made does not hold one,
so a full stream downstream (backpressure) never starves the step that would drain it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from gristmill import faults
from services.worker.fairshare import FairSlots, Ticket

__all__ = ["KeepAlive", "Puller"]

log = logging.getLogger("gristmill.worker")

StepKey = tuple[str, str, int]  # team, job, step


class KeepAlive:
    """Sends `in_progress` for fetched messages until they are settled (or it is stopped)."""

    def __init__(self, msgs: list[Any], ack_wait_s: float):
        self.msgs = msgs
        self._task = asyncio.create_task(self._beat(max(0.05, ack_wait_s / 3)))

    async def _beat(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            for msg in self.msgs:
                if not msg.is_acked and not faults.progress_lost("worker.keep_alive"):
                    with contextlib.suppress(Exception):
                        await msg.in_progress()

    def stop(self) -> None:
        """Stop beating."""
        self._task.cancel()


class Puller:
    """Fetches the manifests of one step while `share()` is above 0, handing each fetched
    batch, with its place in the slots' queue (`ask(len(msgs), in_turn)`, which ends the turn
    it was fetched in, if any), to `handle(key, msgs, keep_alive, ticket)`. It holds at most
    `share() + 1` batches: one more than may run at once, fetched when the slots say a run is
    about to end and this team is next in line (never behind long runs: a batch held back is
    one another worker lacks)."""

    def __init__(
        self,
        js: Any,
        key: StepKey,
        stream: str,
        consumer: str,
        slots: FairSlots,
        share: Callable[[], int],
        batch_size: Callable[[], int],
        ack_wait_s: float,
        ask: Callable[[int, bool], Ticket],
        handle: Callable[[StepKey, list[Any], KeepAlive, Ticket], Coroutine[Any, Any, None]],
    ):
        self.js = js
        self.key = key
        self.stream = stream
        self.consumer = consumer
        self.slots = slots
        self.share = share
        self.batch_size = batch_size
        self.ack_wait_s = ack_wait_s
        self.ask = ask
        self.handle = handle

    async def run(self) -> bool:
        """Pull until the step is no longer assigned or its consumer is gone, and say whether it
        is gone. A failing fetch (the server restarting, say) is logged and tried again: a
        puller never dies of it."""
        from nats.errors import TimeoutError
        from nats.js.errors import NotFoundError

        running: set[asyncio.Task[None]] = set()
        sub: Any = None
        delay = 0.1
        empty = False  # nothing was left to fetch: the next fetch waits without a turn
        gone = False
        team = self.key[0]
        try:
            while self.share() > 0:
                if len(running) >= self.share() + 1:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    continue
                in_turn = not empty
                if in_turn:
                    await self.slots.wait_turn(team)
                msgs: list[Any] = []
                try:
                    try:
                        if sub is None:
                            sub = await self.js.pull_subscribe_bind(
                                self.consumer, stream=self.stream
                            )
                        msgs = await sub.fetch(self.batch_size(), timeout=1.0)
                    finally:
                        if in_turn and not msgs:  # the turn ends here; with a batch, on asking
                            self.slots.end_turn(team)
                except TimeoutError:
                    empty = True
                    continue
                except NotFoundError:
                    log.info("step %d of job %s has no consumer (ended)", self.key[2], self.key[1])
                    gone = True
                    break
                except Exception as exc:
                    log.warning(
                        "step %d of job %s: fetching failed (%s); again in %.1f s",
                        self.key[2],
                        self.key[1],
                        exc,
                        delay,
                    )
                    await _unsubscribed(sub)
                    sub = None
                    await asyncio.sleep(delay)
                    delay = min(5.0, delay * 2)
                    continue
                empty = _drained(msgs)
                if not msgs:
                    continue
                delay = 0.1
                keeper = KeepAlive(msgs, self.ack_wait_s)
                ticket = self.ask(len(msgs), in_turn)  # ends the turn, if it was fetched in one
                task = asyncio.create_task(self.handle(self.key, msgs, keeper, ticket))
                running.add(task)
                task.add_done_callback(running.discard)
            if running:
                await asyncio.wait(running)
        finally:
            await _unsubscribed(sub)
        return gone


def _drained(msgs: list[Any]) -> bool:
    """Whether a fetch left its consumer with nothing pending (none fetched, or the last message
    says so); a message whose metadata cannot be read is taken to have more behind it."""
    if not msgs:
        return True
    try:
        return int(msgs[-1].metadata.num_pending) == 0
    except Exception:
        return False


async def _unsubscribed(sub: Any) -> None:
    """Drop a pull subscription, whatever state it is in."""
    if sub is not None:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

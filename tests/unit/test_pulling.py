"""Pullers and turns: a step with nothing left to fetch waits for its next manifest without
holding its team's turn, so the team's other steps still fetch ahead. The JetStream side is a
scripted subscription (this is the puller's logic; the real server is in the integration tests)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from nats.errors import TimeoutError as NatsTimeout

from services.worker.fairshare import FairSlots, Ticket
from services.worker.pulling import KeepAlive, Puller


@dataclass
class Msg:
    """A fetched message as the puller sees it: its consumer's count of messages behind it."""

    name: str
    pending: int
    is_acked: bool = False

    @property
    def metadata(self) -> SimpleNamespace:
        return SimpleNamespace(num_pending=self.pending)

    async def in_progress(self) -> None:
        pass


@dataclass
class Consumer:
    """Hands out `msgs` one per fetch; once they are gone, a fetch waits its timeout, as a
    long poll on an empty consumer does. `fetching` counts the fetches under way."""

    msgs: list[Msg]
    fetching: int = 0
    fetched: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        self.fetching += 1
        self.changed.set()
        try:
            if not self.msgs:
                await asyncio.sleep(timeout)  # a long poll that finds nothing
                raise NatsTimeout
            msg = self.msgs.pop(0)
            self.fetched.append(msg.name)
            return [msg]
        finally:
            self.fetching -= 1

    async def unsubscribe(self) -> None:
        pass


class JetStream:
    def __init__(self, consumers: dict[str, Consumer]):
        self.consumers = consumers

    async def pull_subscribe_bind(self, consumer: str, stream: str) -> Consumer:
        return self.consumers[consumer]


async def condition(check: Any, what: str, timeout_s: float = 5.0) -> None:
    """Wait until `check()` holds, woken by the consumers' fetches, or fail."""
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.01)
    assert check(), what


def test_a_drained_step_does_not_hold_its_teams_turn_from_the_step_it_feeds() -> None:
    async def scenario() -> None:
        slots = FairSlots(2)
        # team a holds one slot with a short run; b's steps share the other
        held = await slots.acquire("a", "big", expected_s=0.25)
        fan_out = Consumer([Msg("fan-out", pending=0)])  # its only manifest: then drained
        fed = Consumer([Msg(f"child-{n}", pending=5 - n) for n in range(6)])
        js = JetStream({"c0": fan_out, "c1": fed})
        assigned = {0: 1, 1: 1}
        done = asyncio.Event()
        tickets: list[Ticket] = []

        async def handle(key: Any, msgs: list[Any], keeper: KeepAlive, ticket: Ticket) -> None:
            tickets.append(ticket)
            try:
                await done.wait()  # the run holds its slot (or its place in the queue)
            finally:
                ticket.cancel()
                keeper.stop()

        def puller(step: int) -> Puller:
            return Puller(
                js,
                ("b", "job", step),
                "stream",
                f"c{step}",
                slots,
                share=lambda: assigned[step],
                batch_size=lambda: 1,
                ack_wait_s=30.0,
                ask=lambda n, in_turn: slots.ask("b", "job", 0, 0.25, ending_turn=in_turn),
                handle=handle,
            )

        runs = [asyncio.create_task(puller(0).run())]
        await condition(lambda: fan_out.fetched == ["fan-out"], "the fan-out's manifest fetched")
        await condition(lambda: fan_out.fetching == 1, "the fan-out step long-polling")
        assert slots.used == 2  # b's fan-out runs in the free slot: every slot is held
        runs.append(asyncio.create_task(puller(1).run()))
        # b is next in line (a short run holds a slot, nobody else asks): the fed step fetches
        # one batch ahead while the fan-out's step waits for more, and no more than one
        await condition(lambda: fed.fetched == ["child-0"], "the fed step fetching ahead")
        await condition(lambda: len(tickets) == 2, "its batch queued for a slot")
        assert fan_out.fetching == 1
        assert fed.fetched == ["child-0"]

        assigned.update({0: 0, 1: 0})
        done.set()
        await slots.release(held)
        await asyncio.wait_for(asyncio.gather(*runs), 5.0)
        assert slots.used == 0

    asyncio.run(scenario())


def test_a_step_reassigned_while_its_puller_winds_down_is_still_pulled(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """A step loses its assignment when its backlog empties and gets it back with its next
    manifest. Coming back while the old puller waits for its last batch to finish, it must still
    be pulled: the old puller ending then would leave the new manifest pending for ever."""
    from gristmill.config import ServiceSettings
    from gristmill.credentials import ensure_credentials
    from services.worker.service import WorkerService

    settings = ServiceSettings(
        nats_url="nats://x", state_dir=tmp_path, store_root=str(tmp_path), teams=("web",)
    )
    ensure_credentials(settings.credentials, settings.teams)
    worker = WorkerService(settings, worker_id="cpu-0")
    consumer = Consumer([Msg("file-1", pending=0)])
    monkeypatch.setattr(WorkerService, "_js", property(lambda self: JetStream({"j1_s1": consumer})))
    options = SimpleNamespace(ack_wait_s=30.0, priority=0)
    worker._records[("web", "j1")] = SimpleNamespace(  # type: ignore[assignment]
        fingerprint="f", spec=SimpleNamespace(options=options)
    )
    finish = asyncio.Event()
    handled: list[str] = []

    async def handle(key: Any, msgs: list[Any], keeper: KeepAlive, ticket: Ticket) -> None:
        handled.extend(m.name for m in msgs)
        try:
            if msgs[0].name == "file-1":
                await finish.wait()  # the first file's batch is still finishing
        finally:
            ticket.cancel()
            keeper.stop()

    worker._handle = handle  # type: ignore[method-assign]
    key = ("web", "j1", 1)

    async def scenario() -> None:
        await worker._on_assignment("web", {key: 1})
        await condition(lambda: handled == ["file-1"], "the first file's batch handled")
        await worker._on_assignment("web", {})  # its backlog is empty: unassigned
        await condition(lambda: consumer.fetching == 0, "the old puller done fetching")
        consumer.msgs.append(Msg("file-2", pending=0))
        await worker._on_assignment("web", {key: 1})  # the next file's manifest: back again
        finish.set()  # the old puller's last batch ends, and with it that puller
        await condition(lambda: handled == ["file-1", "file-2"], "the next file pulled")
        await worker._on_assignment("web", {})
        await asyncio.wait_for(asyncio.gather(*worker._pullers.values()), 5.0)

    asyncio.run(scenario())

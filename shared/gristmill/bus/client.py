"""The few NATS calls every service and client makes, in the one form they should take.

`Publisher` is how everything publishes to a stream: each publish carries a `Nats-Msg-Id`, many
publishes are in flight at once (their acks are awaited together rather than one round trip
after another), a stream that is full makes the publisher wait and retry (backpressure; it
says so loudly) instead of losing the message, and an ack that does not come is retried (the
msg id makes the repeat harmless).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from functools import partial
from typing import Any

from gristmill import faults
from gristmill.bus.messages import ApiReply, Message
from gristmill.bus.subjects import api_subject
from gristmill.errors import GristmillError

__all__ = [
    "PublishError",
    "Publisher",
    "ServiceUnavailable",
    "StreamFull",
    "kv_keys",
    "kv_values",
    "replay",
    "request",
    "stored",
]

log = logging.getLogger("gristmill.bus")


# JetStream's error codes for a stream at its limits with `discard: new`.
_FULL_CODES = {10077, 10078}


class ServiceUnavailable(GristmillError):
    """Nobody answered a request (the service is not running, or not for this team)."""


class PublishError(GristmillError):
    """JetStream refused a publish for a reason waiting does not cure."""


class StreamFull(PublishError):
    """A stream stayed full for longer than the publisher was allowed to wait."""


class Publisher:
    """Publishes messages to JetStream over the connection `nc` (see the module docstring).

    `full_timeout_s` bounds how long a publish waits for room in a full stream (None: as long
    as it takes, saying so every `warn_every_s`).
    """

    def __init__(
        self,
        nc: Any,
        ack_timeout_s: float = 5.0,
        full_timeout_s: float | None = None,
        warn_every_s: float = 30.0,
    ):
        self.nc = nc
        self.ack_timeout_s = ack_timeout_s
        self.full_timeout_s = full_timeout_s
        self.warn_every_s = warn_every_s
        self._prefix = ""
        self._sub: Any = None
        self._next = 0
        self._waiting: dict[str, asyncio.Future[bytes]] = {}
        self._warned: dict[str, float] = {}
        self.full_since: float | None = None  # when a publish last found a stream full

    async def start(self) -> Publisher:
        """Subscribe to this publisher's ack inbox (once)."""
        if self._sub is None:
            self._prefix = self.nc.new_inbox()
            self._sub = await self.nc.subscribe(f"{self._prefix}.*", cb=self._on_ack)
        return self

    async def _on_ack(self, msg: Any) -> None:
        future = self._waiting.pop(msg.subject, None)
        if future is not None and not future.done():
            status = (msg.headers or {}).get("Status") if not msg.data else None
            future.set_result(msg.data or f'{{"status":"{status}"}}'.encode())

    async def publish(
        self,
        subject: str,
        payload: bytes | Message,
        msg_id: str,
        headers: dict[str, str] | None = None,
    ) -> bool:
        """Publish one message; False when the stream had it already (a repeat inside its
        duplicate window, which changes nothing)."""
        [fresh] = await self.publish_many([(subject, payload, msg_id)], headers)
        return fresh

    async def publish_many(
        self,
        items: Iterable[tuple[str, bytes | Message, str]],
        headers: dict[str, str] | None = None,
    ) -> list[bool]:
        """Publish (subject, payload, msg_id) items all at once; one `fresh` flag per item."""
        await self.start()
        pending = [
            (subject, data.to_json() if isinstance(data, Message) else data, mid)
            for subject, data, mid in items
        ]
        copies = [(s, d, f"{m}.dup") for s, d, m in pending if faults.duplicate(f"publish {s}")]
        results: list[bool | None] = [None] * len(pending)
        todo = list(range(len(pending)))
        started = time.monotonic()
        delay = 0.05
        while todo:
            answers = await self._send([pending[i] for i in todo], headers)
            again: list[int] = []
            full: str | None = None
            for index, answer in zip(todo, answers, strict=True):
                if answer is None:  # no ack in time: send again (the msg id dedupes it)
                    again.append(index)
                    continue
                error = answer.get("error")
                if error is None:
                    results[index] = not answer.get("duplicate", False)
                elif error.get("err_code") in _FULL_CODES:
                    again.append(index)
                    full = str(answer.get("stream") or pending[index][0])
                else:
                    raise PublishError(
                        f"publishing to {pending[index][0]} failed: "
                        f"{error.get('description', error)} (code {error.get('err_code')})"
                    )
            todo = again
            if full is not None:
                self._stream_full(full, pending[todo[0]][0], started)
            if todo:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        self.full_since = None
        if copies:  # a repeat no duplicate window catches: its consumers must tell
            await self.publish_many(copies, headers)
        return [bool(r) for r in results]

    async def _send(
        self, items: list[tuple[str, bytes, str]], headers: dict[str, str] | None
    ) -> list[dict[str, Any] | None]:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[bytes]] = []
        for subject, data, mid in items:
            self._next += 1
            reply = f"{self._prefix}.{self._next}"
            future: asyncio.Future[bytes] = loop.create_future()
            self._waiting[reply] = future
            futures.append(future)
            await self.nc.publish(
                subject, data, reply=reply, headers={**(headers or {}), "Nats-Msg-Id": mid}
            )
        done, _ = await asyncio.wait(futures, timeout=self.ack_timeout_s)
        answers: list[dict[str, Any] | None] = []
        for future in futures:
            if future in done:
                answers.append(_parse_ack(future.result()))
            else:
                future.cancel()
                answers.append(None)
        for key in [k for k, f in self._waiting.items() if f.cancelled()]:
            del self._waiting[key]
        return answers

    def _stream_full(self, stream: str, subject: str, started: float) -> None:
        now = time.monotonic()
        self.full_since = self.full_since or now
        if self.full_timeout_s is not None and now - started > self.full_timeout_s:
            raise StreamFull(
                f"stream {stream} is full: a publish to {subject} waited "
                f"{now - started:.0f} s for room; raise GRISTMILL_STREAM_MAX_BYTES or collect "
                f"finished jobs (gristmill gc)"
            )
        if now - self._warned.get(stream, -1e9) >= self.warn_every_s:
            self._warned[stream] = now
            log.error(
                "stream %s is full: publishing to %s waits for room (nothing is dropped); "
                "raise GRISTMILL_STREAM_MAX_BYTES or collect finished jobs (gristmill gc)",
                stream,
                subject,
            )


def _parse_ack(data: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(data)
    except ValueError:
        return {"error": {"description": f"unreadable ack {data[:80]!r}"}}
    if "status" in answer:  # a status reply without a body: no stream takes this subject
        code = answer["status"]
        return {"error": {"description": f"no stream answered (status {code})", "err_code": code}}
    return answer if isinstance(answer, dict) else {"error": {"description": repr(answer)}}


async def request(
    nc: Any,
    team: str,
    verb: str,
    message: Message | None = None,
    timeout_s: float = 30.0,
    wait_s: float = 10.0,
) -> ApiReply:
    """Ask the service (`gm.<team>.api.<verb>`) and parse its reply. While nobody answers (a
    service starting again after a crash, or reconnecting), ask again for up to `wait_s`."""
    from nats.errors import NoRespondersError, TimeoutError

    subject = api_subject(team, verb)
    payload = message.to_json() if message is not None else b"{}"
    deadline = time.monotonic() + wait_s
    delay = 0.1
    while True:
        try:
            answer = await nc.request(subject, payload, timeout=timeout_s)
            break
        except NoRespondersError:
            if time.monotonic() + delay > deadline:
                raise ServiceUnavailable(
                    f"no gristmill service answers {subject}: is it running (`gristmill up`), "
                    f"and does it serve team {team!r}?"
                ) from None
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)
        except TimeoutError:
            raise ServiceUnavailable(
                f"the service did not answer {subject} in {timeout_s:g} s"
            ) from None
    return ApiReply.from_json(answer.data)


# How long the server keeps a reader's consumer after its last request: a backstop, for a
# process that dies before deleting it (see `stored`).
READER_IDLE_S = 30.0
_BATCH = 256
_PROBE_S = 5.0  # a fetch this long with nothing asks whether the reader's consumer still exists
_STORED_WAIT_S = 10.0  # messages said to be stored must come within this


class _ReaderLost(Exception):
    """A server took a last-per-subject reader's consumer with it: the read must start over."""


class _Reader:
    """The pull consumer of one `stored` read, made again where a server took the last one."""

    def __init__(self, js: Any, stream: str, subject: str, last_per_subject: bool, **config: Any):
        self.js, self.stream, self.subject = js, stream, subject
        self.last_per_subject = last_per_subject
        self.config = config
        self.name = ""
        self.sub: Any = None

    async def open(self, after: int = 0) -> int:
        """A consumer of the messages after stream sequence `after` (0: all, or the last of
        each subject); returns how many wait."""
        import secrets

        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        from gristmill.bus.streams import patiently

        start: dict[str, Any] = {"deliver_policy": DeliverPolicy.ALL}
        if after:
            start = {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": after + 1}
        elif self.last_per_subject:
            start = {"deliver_policy": DeliverPolicy.LAST_PER_SUBJECT}
        self.name = f"read_{secrets.token_hex(8)}"
        config = ConsumerConfig(
            name=self.name,
            filter_subject=self.subject,
            ack_policy=AckPolicy.NONE,
            mem_storage=True,
            num_replicas=1,
            **start,
            **self.config,
        )
        info = await patiently(partial(self.js.add_consumer, self.stream, config), 30.0)
        self.sub = await self.js.pull_subscribe_bind(self.name, stream=self.stream)
        return int(info.num_pending)

    async def alive(self) -> bool:
        """Whether the consumer still answers."""
        from nats.errors import Error

        try:
            await self.js.consumer_info(self.stream, self.name, timeout=2.0)
        except Error:
            return False
        return True

    async def close(self) -> None:
        """Unsubscribe and delete the consumer (where its server is gone, it expires)."""
        from nats.errors import Error

        with contextlib.suppress(Error):
            if self.sub is not None:
                await self.sub.unsubscribe()
        with contextlib.suppress(Error):
            await self.js.delete_consumer(self.stream, self.name)


async def stored(
    js: Any,
    stream: str,
    subject: str,
    *,
    last_per_subject: bool = False,
    headers_only: bool = False,
    idle_s: float = 0.0,
) -> AsyncIterator[Any]:
    """The messages `stream` holds on `subject` (a filter), oldest first, or only the last of
    each subject; then, when `idle_s` > 0, new ones as they come, until `idle_s` passes
    without one. Stored messages that do not come within 10 s raise ServiceUnavailable: a
    reader never ends short without saying so.

    It reads through a pull consumer of its own, named here and deleted at the end; the
    server removes one left behind after READER_IDLE_S. (An ordered push consumer, what
    nats-py's KV watch uses, stays on the server for five minutes after its unsubscribe, and
    a stream takes 1,000 consumers at most: a planner checking quotas on each submission ran
    out of them.) A pull consumer also says how many messages wait before any is sent, so
    an empty read is told apart from a slow one. The consumer has one copy: where a cluster's
    server dies with it, the read goes on from a new consumer after the last message read
    (a last-per-subject read raises `_ReaderLost`, to be started over)."""
    from nats.errors import Error

    reader = _Reader(
        js,
        stream,
        subject,
        last_per_subject,
        headers_only=headers_only,
        inactive_threshold=READER_IDLE_S + idle_s,
    )
    left = await reader.open()
    last = 0  # the stream sequence of the last message read
    quiet = 0.0  # seconds of fetching with nothing since then
    try:
        while left > 0 or idle_s > 0:
            wait = _PROBE_S if left else min(_PROBE_S, idle_s - quiet)
            try:
                batch = await reader.sub.fetch(min(left, _BATCH) or 1, timeout=wait)
            except (TimeoutError, Error):  # nothing came: a quiet stream, or a lost consumer
                if not await reader.alive():
                    if last_per_subject:
                        raise _ReaderLost(f"{subject} in {stream}") from None
                    await reader.close()
                    left, quiet = await reader.open(after=last), 0.0
                    continue
                quiet += wait
                if left and quiet >= _STORED_WAIT_S:
                    raise ServiceUnavailable(
                        f"{left} stored messages of {subject} in {stream} did not come in "
                        f"{quiet:g} s"
                    ) from None
                if not left and quiet >= idle_s:
                    return
                continue
            quiet = 0.0
            for msg in batch:
                left, last = msg.metadata.num_pending, msg.metadata.sequence.stream
                yield msg
    finally:
        await reader.close()


async def replay(js: Any, subject: str, idle_s: float = 0.0) -> AsyncIterator[Any]:
    """Every message stored on `subject` of a team's stream so far, oldest first, then new ones
    as they come when `idle_s` > 0 (see `stored`)."""
    from gristmill.bus.streams import stream_of

    async for msg in stored(js, stream_of(subject), subject, idle_s=idle_s):
        yield msg


async def _kv_entries(
    js: Any, bucket: str, pattern: str, headers_only: bool
) -> AsyncIterator[tuple[str, Any]]:
    """The live entries of KV `bucket` whose keys match `pattern` (deleted ones left out)."""
    prefix = f"$KV.{bucket}."
    async for msg in stored(
        js, f"KV_{bucket}", prefix + pattern, last_per_subject=True, headers_only=headers_only
    ):
        headers = msg.headers or {}
        if headers.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in headers:
            continue  # a deleted key, or one the server expired
        yield msg.subject[len(prefix) :], msg


async def _whole[T](read: Callable[[], Awaitable[T]]) -> T:
    """`read()`, started over (three times at most) when a server took its consumer away."""
    for attempt in range(3):
        try:
            return await read()
        except _ReaderLost as lost:
            if attempt == 2:
                raise ServiceUnavailable(f"reading {lost} lost its consumer 3 times") from None
    raise AssertionError("unreachable")


async def kv_keys(js: Any, bucket: str, pattern: str) -> list[str]:
    """The keys of KV `bucket` that match `pattern` (a NATS wildcard such as `job.*`), filtered
    by the server. (nats-py's `keys(filters=...)` matches substrings, and leaves a consumer
    behind: see `stored`.)"""

    async def read() -> list[str]:
        return [key async for key, _ in _kv_entries(js, bucket, pattern, headers_only=True)]

    return await _whole(read)


async def kv_values(js: Any, bucket: str, pattern: str) -> dict[str, bytes]:
    """The values of KV `bucket` under keys matching `pattern`, read in one go (not one request
    per key); empty values left out."""

    async def read() -> dict[str, bytes]:
        entries = _kv_entries(js, bucket, pattern, headers_only=False)
        return {key: msg.data async for key, msg in entries if msg.data}

    return await _whole(read)

"""The bus on a real nats-server: embedded start/stop, the team layout created idempotently,
and the JetStream behaviours the service relies on (dedup by Nats-Msg-Id, work-queue delivery,
first-writer-wins done records, full streams that refuse rather than forget, heartbeats that
expire)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import DiscardPolicy, RetentionPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from gristmill.bus import DataRef, TaskEntry, TaskManifest, task_subject
from gristmill.bus.client import Publisher, StreamFull
from gristmill.bus.streams import StreamLimits, TeamLayout, ensure_layout
from gristmill.bus.subjects import dlq_subject
from gristmill.credentials import (
    ensure_credentials,
    nats_authorization,
    read_credentials,
    service_file,
)
from gristmill.nats_server import EmbeddedNats

pytestmark = pytest.mark.integration


def _authorization(tmp_path: Path) -> str:
    return nats_authorization(ensure_credentials(tmp_path / "credentials", ("web-team",)))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    with EmbeddedNats(tmp_path / "state", _authorization(tmp_path)) as running:
        yield running


async def _connect(server: EmbeddedNats) -> Any:
    """A service component's connection (the planner's credentials)."""
    own = read_credentials(service_file(server.state_dir.parent / "credentials", "planner"))
    return await nats.connect(server.url, **own.connect_options())


def _manifest(task_id: str) -> TaskManifest:
    ref = DataRef(uri=f"file:///s/{task_id}.task", rows=1, bytes=10, sha256="b" * 64)
    entry = TaskEntry(task_id=task_id, inputs=[ref])
    return TaskManifest(job="job1", step=0, step_name="reader", key=task_id, tasks=[entry])


def test_embedded_server_writes_its_store_under_the_state_dir_and_stops(tmp_path: Path) -> None:
    nats_ = EmbeddedNats(tmp_path / "state", _authorization(tmp_path)).start()
    try:
        assert nats_.url.startswith("nats://127.0.0.1:")
        assert (tmp_path / "state" / "nats.conf").read_text().count("max_payload: 8MB") == 1
        with socket.create_connection(("127.0.0.1", nats_.port), timeout=2):
            pass
        assert (tmp_path / "state" / "jetstream").is_dir()
    finally:
        nats_.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", nats_.port), timeout=2)


def test_layout_is_created_idempotently_with_its_limits(server: EmbeddedNats) -> None:
    layout = TeamLayout("web-team")
    limits = StreamLimits(max_bytes=64 << 20, spans_max_age_s=3600, duplicate_window_s=30)

    async def scenario() -> None:
        client = await _connect(server)
        js = client.jetstream()
        await ensure_layout(js, layout, limits)
        await ensure_layout(js, layout, limits)  # a second service start changes nothing
        info = await js.stream_info("GM_WEB_TEAM_TASKS")
        assert info.config.subjects == ["gm.web-team.task.>"]
        assert info.config.retention == RetentionPolicy.WORK_QUEUE
        assert info.config.max_bytes == 64 << 20
        assert info.config.duplicate_window == 30
        for name in ("TASKS", "EVENTS", "DLQ"):  # work and its record never age out, never drop
            kept = (await js.stream_info(f"GM_WEB_TEAM_{name}")).config
            assert (kept.discard, kept.max_age) == (DiscardPolicy.NEW, 0), name
        assert (await js.stream_info("GM_WEB_TEAM_DLQ")).config.subjects == ["gm.web-team.dlq.>"]
        spans = (await js.stream_info("GM_WEB_TEAM_SPANS")).config
        assert (spans.subjects, spans.retention) == (["gm.web-team.span.>"], RetentionPolicy.LIMITS)
        assert (spans.discard, spans.max_age) == (DiscardPolicy.OLD, 3600)
        await ensure_layout(js, layout, StreamLimits(max_bytes=128 << 20))
        assert (await js.stream_info("GM_WEB_TEAM_TASKS")).config.max_bytes == 128 << 20
        for purpose in ("jobs", "done", "assignments", "workers"):
            await js.key_value(f"gm_web_team_{purpose}")
        workers = (await js.stream_info("KV_gm_web_team_workers")).config
        assert workers.max_age == StreamLimits().heartbeat_ttl_s
        await client.close()

    asyncio.run(scenario())


def test_a_repeated_publish_with_the_same_msg_id_is_stored_once(server: EmbeddedNats) -> None:
    async def scenario() -> None:
        client = await _connect(server)
        js = client.jetstream()
        await ensure_layout(js, TeamLayout("web"))
        subject = task_subject("web", "job1", "s0")
        payload = _manifest("t1").to_json()
        first = await js.publish(subject, payload, headers={"Nats-Msg-Id": "job1/s0/t1"})
        again = await js.publish(subject, payload, headers={"Nats-Msg-Id": "job1/s0/t1"})
        assert not first.duplicate
        assert again.duplicate
        assert (await js.stream_info("GM_WEB_TASKS")).state.messages == 1
        subscription = await js.pull_subscribe(subject, durable="s0", stream="GM_WEB_TASKS")
        [message] = await subscription.fetch(1, timeout=5)
        assert TaskManifest.from_json(message.data) == _manifest("t1")
        assert message.metadata.num_delivered == 1
        await message.ack()
        await js.publish(dlq_subject("web", "job1", "s0"), payload)
        assert (await js.stream_info("GM_WEB_DLQ")).state.messages == 1
        await client.close()

    asyncio.run(scenario())


def test_a_done_record_is_first_writer_wins(server: EmbeddedNats) -> None:
    async def scenario() -> None:
        client = await _connect(server)
        js = client.jetstream()
        layout = TeamLayout("web")
        await ensure_layout(js, layout)
        done = await js.key_value(layout.bucket("done"))
        await done.create("job1.s0.t1", b"worker-a")
        with pytest.raises(KeyWrongLastSequenceError):
            await done.create("job1.s0.t1", b"worker-b")
        assert (await done.get("job1.s0.t1")).value == b"worker-a"
        await client.close()

    asyncio.run(scenario())


def test_a_full_stream_makes_publishers_wait_and_forgets_nothing(server: EmbeddedNats) -> None:
    async def scenario() -> None:
        client = await _connect(server)
        js = client.jetstream()
        await ensure_layout(js, TeamLayout("web"), StreamLimits(max_bytes=40_000))
        subject = task_subject("web", "job1", "s0")
        publisher = await Publisher(client, warn_every_s=0.1).start()
        manifests = [_manifest(f"t{i}") for i in range(200)]  # ~80 KB: twice what fits
        sending = asyncio.create_task(
            publisher.publish_many([(subject, m, f"job1.0.{m.key}") for m in manifests])
        )
        sub = await js.pull_subscribe(subject, durable="s0", stream="GM_WEB_TASKS")
        received: list[str] = []
        while len(received) < len(manifests):
            for message in await sub.fetch(25, timeout=10):
                received.append(TaskManifest.from_json(message.data).key)
                await message.ack()
        assert await sending == [True] * len(manifests)
        assert publisher.full_since is None
        assert sorted(received) == sorted(m.key for m in manifests)  # none discarded, none twice
        await client.close()

    asyncio.run(scenario())


def test_a_publisher_that_may_not_wait_says_which_stream_is_full(server: EmbeddedNats) -> None:
    async def scenario() -> None:
        client = await _connect(server)
        js = client.jetstream()
        await ensure_layout(js, TeamLayout("web"), StreamLimits(max_bytes=4_000))
        subject = task_subject("web", "job1", "s0")
        publisher = await Publisher(client, full_timeout_s=0.5).start()
        items = [(subject, _manifest(f"t{i}"), f"m{i}") for i in range(100)]
        with pytest.raises(StreamFull) as caught:
            await publisher.publish_many(items)
        assert str(caught.value).startswith(
            f"stream GM_WEB_TASKS is full: a publish to {subject} waited "
        )
        assert str(caught.value).endswith(
            " s for room; raise GRISTMILL_STREAM_MAX_BYTES or collect finished jobs (gristmill gc)"
        )
        await client.close()

    asyncio.run(scenario())


def test_the_heartbeat_of_a_worker_that_died_expires(server: EmbeddedNats) -> None:
    async def scenario() -> None:
        client = await _connect(server)
        js = client.jetstream()
        layout = TeamLayout("web")
        await ensure_layout(js, layout, StreamLimits(heartbeat_ttl_s=1.0))
        workers = await js.key_value(layout.bucket("workers"))
        await workers.put("worker.cpu-9", b'{"at": 1}')
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            try:
                await workers.get("worker.cpu-9")
            except KeyNotFoundError:
                break
            assert asyncio.get_running_loop().time() < deadline, "the heartbeat never expired"
            await asyncio.sleep(0.1)
        await client.close()

    asyncio.run(scenario())


def test_kv_keys_are_filtered_by_a_wildcard_on_the_server(server: EmbeddedNats) -> None:
    from gristmill.bus.client import kv_keys, kv_values

    bucket = TeamLayout("web-team").bucket("jobs")

    async def scenario() -> tuple[Any, ...]:
        client = await _connect(server)
        js = client.jetstream()
        await ensure_layout(js, TeamLayout("web-team"))
        jobs = await js.key_value(bucket)
        empty = await kv_keys(js, bucket, "job.*"), await kv_values(js, bucket, "job.*")
        for key in ("job.j1", "published.j1", "job.j2", "state.j1", "job.j3"):
            await jobs.put(key, key.encode())
        await jobs.delete("job.j2")
        await jobs.purge("job.j3")
        await jobs.put("job.j1", b"again")
        found = (
            await kv_keys(js, bucket, "job.*"),
            await kv_keys(js, bucket, "archived.*"),
            await kv_values(js, bucket, "*.j1"),
        )
        await client.close()
        return *empty, *found

    # nats-py's own keys(filters=["job.*"]) matches substrings and finds none of these
    assert asyncio.run(scenario()) == (
        [],
        {},
        ["job.j1"],
        [],
        {"published.j1": b"published.j1", "state.j1": b"state.j1", "job.j1": b"again"},
    )


def test_readers_leave_no_consumer_behind_and_outlast_the_streams_consumer_limit(
    server: EmbeddedNats,
) -> None:
    """A KV watch (nats-py's keys(), and kv_keys before) left its consumer on the server for
    five minutes, and a stream takes 1,000: the 1,000th quick read within five minutes failed
    ('maximum consumers limit reached'), which a CI run met as a flaky test."""
    from gristmill.bus.client import kv_keys, kv_values, replay

    layout = TeamLayout("web-team")
    bucket = layout.bucket("jobs")

    async def scenario() -> tuple[set[int], list[int], int | None]:
        client = await _connect(server)
        js = client.jetstream()
        await ensure_layout(js, layout)
        jobs = await js.key_value(bucket)
        for n in range(18):
            await jobs.put(f"job.j{n}", b"x")
        publisher = await Publisher(client).start()
        subject = "gm.web-team.event.job1.task_done"
        await publisher.publish_many([(subject, _manifest(f"t{n}"), f"e{n}") for n in range(5)])

        async def consumers() -> int:
            kv = (await js.stream_info(layout.bucket_stream("jobs"))).state.consumer_count
            events = (await js.stream_info(layout.events_stream)).state.consumer_count
            return kv + events

        counts = set()
        sizes = []
        for _ in range(1050):
            sizes.append(len(await kv_keys(js, bucket, "job.*")))
        counts.add(await consumers())
        sizes.append(len(await kv_values(js, bucket, "job.*")))
        sizes.append(len([m async for m in replay(js, subject)]))
        counts.add(await consumers())
        first = None
        async with contextlib.aclosing(replay(js, subject)) as messages:
            async for msg in messages:  # a reader that stops early
                first = msg.metadata.sequence.stream
                break
        counts.add(await consumers())
        await client.close()
        return counts, sizes, first

    counts, sizes, first = asyncio.run(scenario())
    assert counts == {0}
    assert sizes == [18] * 1051 + [5]
    assert first == 1

"""The cluster topology as local processes: three nats-servers on loopback with R3 streams and
buckets, the planner, the coordinator and two worker pools, from the same settings `deploy/`
uses (GRISTMILL_NATS_URL listing the servers, GRISTMILL_REPLICAS=3). The server leading the
job's task stream is SIGKILLed mid-job; the job completes with the fault suite's invariant
(nothing lost, nothing doubled, outputs equal to LocalExecutor's), and the server rejoins."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gristmill import Pipeline
from gristmill import credentials as creds
from gristmill.bus.broker import nats_servers
from gristmill.bus.streams import BUCKETS
from gristmill.client import ServiceClient
from gristmill.embedded import EmbeddedService
from gristmill.executors.local import LocalExecutor
from gristmill.executors.service import ServiceExecutor
from gristmill.nats_server import LocalNatsCluster
from gristmill.stages.text.filters import ScoreFilter, WordCountFilter
from gristmill.stages.text.io import JsonlReader, JsonlWriter

from chaos_stages import Shout, SplitBatch
from invariants import check, dead_lettered, make_corpus, read_written
from service_stages import SleepEach

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

TASKS = "GM_DEFAULT_TASKS"


def _pipeline(data: Path, out: Path) -> Pipeline:
    return Pipeline(
        "cluster",
        [
            JsonlReader(file_paths=str(data), files_per_partition=1),
            SplitBatch(parts=4),
            ScoreFilter(WordCountFilter(min_words=4)),
            Shout(),
            SleepEach(0.4),
            JsonlWriter(path=str(out / "docs"), drops_path=str(out / "drops")),
        ],
    )


def _stream_leader(cluster: LocalNatsCluster, directory: Path) -> str | None:
    """The name of the server that leads the task stream (None while none does)."""
    [info] = asyncio.run(_stream_infos(cluster.url, directory, TASKS))
    return info.cluster.leader if info.cluster is not None else None


def _wait(condition: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)  # polling files and a local port; the deadline bounds the wait
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


async def _stream_infos(url: str, directory: Path, *streams: str) -> list[Any]:
    import nats

    own = creds.read_credentials(creds.service_file(directory, "planner"))
    nc = await nats.connect(nats_servers(url), connect_timeout=5, **own.connect_options())
    try:
        return [await nc.jetstream().stream_info(stream) for stream in streams]
    finally:
        await nc.close()


async def _replicas(url: str, directory: Path) -> list[tuple[str, bool]]:
    """(server, current) of each copy of the task stream, the leader first."""
    info, *buckets = await _stream_infos(
        url, directory, TASKS, *(f"KV_gm_default_{b}" for b in BUCKETS)
    )
    assert info.cluster is not None
    assert info.config.num_replicas == 3
    assert [b.config.num_replicas for b in buckets] == [3] * len(BUCKETS)  # the KV too
    return [(info.cluster.leader or "", True)] + [
        (peer.name, bool(peer.current)) for peer in info.cluster.replicas or []
    ]


async def _dead(url: str, job: str) -> set[str]:
    client = await ServiceClient.connect(url)
    try:
        return await dead_lettered(client, job)
    finally:
        await client.close()


def test_a_job_survives_a_killed_nats_server_and_the_server_rejoins(tmp_path: Path) -> None:
    inputs = make_corpus(tmp_path / "data", files=8, docs=60, seed=16)
    _pipeline(tmp_path / "data", tmp_path / "local").run(LocalExecutor())
    reference = read_written(tmp_path / "local" / "docs", tmp_path / "local" / "drops").documents
    state = tmp_path / "state"
    identities = creds.ensure_credentials(state / "credentials", ("default",))
    with LocalNatsCluster(tmp_path / "nats", creds.nats_authorization(identities)) as cluster:
        service = EmbeddedService(
            state,
            workers=1,
            gpu_workers=1,  # the second pool: it serves GPU steps, which this job has none of
            slots=2,
            nats_url=cluster.url,
            replicas=3,
            output_root=str(tmp_path),
            input_roots=(str(tmp_path),),
            restart_backoff_s=(0.2, 1.0),
        )
        options = {
            "max_deliver": 10,
            "retry_backoff_s": 0.05,
            "timeout_s": 300.0,
            "ack_wait_s": 5.0,
        }
        executor = ServiceExecutor(config={**options, "allow_failures": True})
        killed: list[int] = []
        written_at_kill: list[int] = []  # output files when the server died
        failures: list[BaseException] = []

        def kill_the_leader_mid_job() -> None:
            try:
                out = tmp_path / "remote" / "docs"
                _wait(lambda: out.is_dir() and any(out.iterdir()), 120, "the first output file")
                leader = _wait(
                    lambda: _stream_leader(cluster, state / "credentials"),
                    10,
                    "the task stream's leader",
                )
                # by name: an index would be 0 for the first server, which `_wait` takes for
                # "not yet" (the test failed whenever gristmill-1 led)
                index = [server.name for server in cluster.servers].index(leader)
                cluster.kill(index)
                killed.append(index)
                written_at_kill.append(len(list(out.iterdir())))
            except BaseException as exc:  # the test's thread reports it
                failures.append(exc)

        with service:
            executor.url = service.url
            killer = threading.Thread(target=kill_the_leader_mid_job, daemon=True)
            killer.start()
            _pipeline(tmp_path / "data", tmp_path / "remote").run(executor)
            killer.join(timeout=5)
            assert not failures, failures
            assert killed, "no server was killed"
            outputs = len(list((tmp_path / "remote" / "docs").iterdir()))
            assert 0 < written_at_kill[0] < outputs  # killed mid-job, not before or after
            assert executor.job is not None
            assert executor.state is not None
            dead = asyncio.run(_dead(service.url, executor.job))
            written = read_written(tmp_path / "remote" / "docs", tmp_path / "remote" / "drops")
            assert check(inputs, reference, written, dead, executor.state) == []
            assert dead == set()
            # The killed server comes back on its own store and catches up with the others.
            cluster.restart(killed[0])
            name = cluster.servers[killed[0]].name
            copies = _wait(
                lambda: (
                    (c := asyncio.run(_replicas(cluster.url, state / "credentials")))
                    and all(current for _, current in c)
                    and name in {n for n, _ in c}
                    and c
                ),
                60,
                f"{name} to be a current copy of {TASKS} again",
            )
    assert sorted(n for n, _ in copies) == ["gristmill-1", "gristmill-2", "gristmill-3"]

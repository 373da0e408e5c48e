"""The fault-injection suite: a multi-step job with a fan-out runs on the real service (a real
nats-server, real Ray, services as processes under the supervisor) while faults are injected,
and the invariant (`invariants.check`) must hold after each run: no document lost or doubled,
every output equal to `LocalExecutor`'s, the counts equal to the files.

Each run is a (scenario, seed); the seed decides where faults strike (see `gristmill.faults`)
and is in the test's id, so a failure names what to rerun. `make chaos` runs every scenario over
many seeds (marker `slow`, at least 1,000 injected faults in all); `make test` runs a small
subset. `bench/RESULTS.md`'s neighbour `docs/reliability.md` records the last full run.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gristmill import Pipeline
from gristmill.client import ServiceClient
from gristmill.embedded import EmbeddedService
from gristmill.executors.local import LocalExecutor
from gristmill.executors.service import ServiceExecutor
from gristmill.stages.text.filters import ScoreFilter, WordCountFilter
from gristmill.stages.text.io import JsonlReader, JsonlWriter

from chaos_stages import HangOnIds, Shout, SplitBatch
from invariants import Outcome, check, dead_lettered, injected_faults, make_corpus, read_written
from service_stages import SleepEach

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

OUTCOMES: list[Outcome] = []  # the session's runs, for the summary (see conftest.py)


@dataclass(frozen=True)
class Scenario:
    """One kind of fault: how it is injected, on what job."""

    faults: str = ""  # GRISTMILL_FAULTS for every child (`seed=` is added)
    files: int = 12
    docs: int = 60
    ack_wait_s: float = 2.0
    stream_max_bytes: int | None = None
    slow_s: float = 0.0  # a step this much slower per batch than the others
    hang: int = 0  # documents whose batches hang past their task timeout
    nats_kills: int = 0  # times the nats-server is SIGKILLed during the job
    control_kills: int = 0  # times the planner or the coordinator is SIGKILLed from outside


SCENARIOS = {
    # SIGKILL at seeded points of the worker's effects path, each incarnation, several times.
    "worker-kills": Scenario(faults="kill_at=1-80,kills=4,only=worker."),
    # The coordinator and the planner killed at their own seeded points, and from outside.
    "control-kills": Scenario(
        faults="kill_at=2-60,kills=3,only=coordinator.", control_kills=2, files=16
    ),
    "planner-kills": Scenario(faults="kill_at=1-4,kills=2,only=planner."),
    # The nats-server killed and started again (file store kept) while the job runs.
    "nats-restarts": Scenario(nats_kills=2, files=24, slow_s=0.05),
    # Keep-alives lost with a short ack wait: manifests come back while they are being run.
    "redelivery-storm": Scenario(faults="no_progress=0.6", ack_wait_s=0.6, slow_s=0.3),
    # Every publish may be sent twice under another msg id (no duplicate window catches it).
    "duplicates": Scenario(faults="dup=0.3"),
    # Store writes failing half way, reads returning damaged bytes.
    "store-faults": Scenario(faults="store_write=0.2,store_read=0.2"),
    # A step 20x slower than the rest, with streams small enough to fill: backpressure.
    "backpressure": Scenario(stream_max_bytes=192 << 10, slow_s=0.2, files=16),
    # Batches that hang: stopped at their task timeout, dead-lettered after their attempts.
    "hangs": Scenario(hang=3),
}

# Every scenario over these seeds in `make chaos` (regression seeds are added to the lists).
FULL_SEEDS = {
    "worker-kills": list(range(1, 13)),
    "control-kills": list(range(1, 5)),
    "planner-kills": list(range(1, 4)),
    "nats-restarts": list(range(1, 4)),
    "redelivery-storm": list(range(1, 9)),
    "duplicates": list(range(1, 9)),
    "store-faults": list(range(1, 7)),
    "backpressure": list(range(1, 3)),
    "hangs": list(range(1, 3)),
}
# The CI-sized subset in `make test`, and the seeds of the bugs the suite found (kept):
# hangs 2 dead-lettered a task that had run beside a hung one (it lost an attempt to the hang).
CI_RUNS = [("worker-kills", 101), ("redelivery-storm", 102), ("hangs", 2)]


def pipeline(data: Path, out: Path, scenario: Scenario, fifo: Path, hung: list[str]) -> Pipeline:
    stages: list[Any] = [
        JsonlReader(file_paths=str(data), files_per_partition=1),
        SplitBatch(parts=4),
        ScoreFilter(WordCountFilter(min_words=4)),
        Shout(),
    ]
    if scenario.slow_s:
        stages.append(SleepEach(scenario.slow_s))
    if hung:
        stages.append(HangOnIds(hung, str(fifo)))
    stages.append(JsonlWriter(path=str(out / "docs"), drops_path=str(out / "drops")))
    return Pipeline("chaos", stages)


def run(name: str, seed: int, base: Path) -> Outcome:
    """One fault run of scenario `name` with `seed`; its invariant problems are in the result."""
    scenario = SCENARIOS[name]
    root = base / f"{name}-{seed}"
    inputs = make_corpus(root / "data", scenario.files, scenario.docs, seed)
    rng = random.Random(seed)
    fifo = root / "never"
    os.mkfifo(fifo)
    local = pipeline(root / "data", root / "local", scenario, fifo, [])
    local.run(LocalExecutor())
    reference = read_written(root / "local" / "docs", root / "local" / "drops").documents
    # documents that reach the hanging stage (the filter keeps them)
    hung = sorted(rng.sample(sorted(reference), scenario.hang)) if scenario.hang else []
    env = {"GRISTMILL_FAULTS": f"seed={seed},{scenario.faults}"} if scenario.faults else {}
    service = EmbeddedService(
        root / "state",
        workers=2,
        slots=1,
        output_root=str(root),
        input_roots=(str(root),),
        child_env=env,
        restart_backoff_s=(0.2, 1.0),
        stream_max_bytes=scenario.stream_max_bytes,
    )
    options = {
        "ack_wait_s": scenario.ack_wait_s,
        "max_deliver": 10 if not scenario.hang else 2,
        "retry_backoff_s": 0.05,
        "allow_failures": True,
        "timeout_s": 600.0,
        "submit_timeout_s": 10.0,
    }
    executor = ServiceExecutor(config=options)
    with service:
        executor.url = service.url
        stop = threading.Event()
        outside = threading.Thread(target=_kill_from_outside, args=(service, scenario, rng, stop))
        outside.start()
        try:
            pipeline(root / "data", root / "remote", scenario, fifo, hung).run(executor)
        finally:
            stop.set()
            outside.join()
        assert executor.job is not None
        assert executor.state is not None
        dead = asyncio.run(_dead(service, executor.job))
        faults = injected_faults(service.state_dir)
    written = read_written(root / "remote" / "docs", root / "remote" / "drops")
    faults.update(_outside_faults(scenario, dead, hung))
    problems = check(inputs, reference, written, dead, executor.state)
    if scenario.hang and not set(hung) <= dead:
        problems.append(f"hung documents {sorted(set(hung) - dead)} were not dead-lettered")
    if not scenario.hang and dead:
        problems.append(
            f"{len(dead)} documents dead-lettered under faults that should only slow the job"
        )
    return Outcome(
        name, seed, faults, problems, len(inputs), len(dead), executor.state.model_dump()
    )


async def _dead(service: EmbeddedService, job: str) -> set[str]:
    client = await ServiceClient.connect(service.url)
    try:
        return await dead_lettered(client, job)
    finally:
        await client.close()


def _kill_from_outside(
    service: EmbeddedService, scenario: Scenario, rng: random.Random, stop: threading.Event
) -> None:
    """SIGKILL the nats-server and the control plane at seeded moments while the job runs."""
    kills = [("nats", rng.uniform(0.5, 3.0)) for _ in range(scenario.nats_kills)]
    kills += [
        (rng.choice(["planner", "coordinator"]), rng.uniform(0.5, 4.0))
        for _ in range(scenario.control_kills)
    ]
    started = time.monotonic()
    for target, at in sorted(kills, key=lambda k: k[1]):
        if stop.wait(max(0.0, at - (time.monotonic() - started))):
            return
        if target == "nats":
            service.kill_nats()
        else:
            service.kill(target)
        _OUTSIDE[target] = _OUTSIDE.get(target, 0) + 1


_OUTSIDE: dict[str, int] = {}


def _outside_faults(scenario: Scenario, dead: set[str], hung: list[str]) -> dict[str, int]:
    counts = {f"kill {target} (outside)": n for target, n in _OUTSIDE.items()}
    _OUTSIDE.clear()
    if scenario.hang:
        counts["hang"] = 2 * len(hung)  # each hung batch, on each of its 2 attempts
    if scenario.stream_max_bytes:
        counts["stream limit"] = 1
    return counts


def _record(outcome: Outcome) -> None:
    OUTCOMES.append(outcome)
    assert not outcome.problems, (
        f"scenario {outcome.scenario} seed {outcome.seed} (rerun: -k '{outcome.scenario}-"
        f"{outcome.seed}'): {outcome.problems}; faults {outcome.faults}"
    )


@pytest.mark.parametrize(("scenario", "seed"), CI_RUNS, ids=[f"{n}-{s}" for n, s in CI_RUNS])
def test_faults_lose_and_double_no_document(scenario: str, seed: int, tmp_path: Path) -> None:
    outcome = run(scenario, seed, tmp_path)
    assert outcome.injected > 0, f"no fault was injected: {outcome}"
    _record(outcome)


FULL = [(name, seed) for name, seeds in FULL_SEEDS.items() for seed in seeds]


@pytest.mark.slow
@pytest.mark.parametrize(("scenario", "seed"), FULL, ids=[f"{n}-{s}" for n, s in FULL])
def test_every_fault_loses_and_doubles_no_document(
    scenario: str, seed: int, tmp_path: Path
) -> None:
    outcome = run(scenario, seed, tmp_path)
    assert outcome.injected > 0, f"no fault was injected: {outcome}"
    _record(outcome)

"""What the service tests share: running client calls, waiting on conditions with deadlines,
FIFOs where a test and a stage inside a worker meet, jobs run in a thread, written documents."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gristmill import Pipeline
from gristmill.client import ServiceClient
from gristmill.embedded import EmbeddedService
from gristmill.executors.service import ServiceExecutor
from gristmill.tasks import Task

ROOT = Path(__file__).parents[2]


@contextlib.contextmanager
def service_under(base: Path, **options: Any) -> Iterator[EmbeddedService]:
    """An embedded service with its state under `base`, allowed to write under `base` and to
    read there and in the repository (its examples); `options` go to `EmbeddedService`."""
    options.setdefault("output_root", str(base))
    options.setdefault("input_roots", (str(ROOT), str(base)))
    with EmbeddedService(base / "state", **options) as running:
        yield running


def client_call(service: EmbeddedService, call: Callable[[ServiceClient], Any]) -> Any:
    """Run `call(client)` on a fresh connection."""

    async def go() -> Any:
        client = await ServiceClient.connect(service.url)
        try:
            return await call(client)
        finally:
            await client.close()

    return asyncio.run(go())


def internal_call(service: EmbeddedService, call: Callable[[ServiceClient], Any]) -> Any:
    """Run `call(client)` on a connection with the service's own credentials (the supervisor's:
    every subject, stream and bucket), as the first team: for tests that look inside, or
    forge what no team may send."""
    import nats

    async def go() -> Any:
        own = service.service_credentials()
        nc = await nats.connect(service.url, **own.connect_options())
        try:
            return await call(ServiceClient(nc, service.teams[0]))
        finally:
            await nc.drain()

    return asyncio.run(go())


def until(condition: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
    """Wait for `condition()` to hold (polling a system we do not control), or fail."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.05)
    return value


def written(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.jsonl"))}


def doc_ids(directory: Path) -> list[str]:
    return [
        json.loads(line)["id"]
        for data in written(directory).values()
        for line in data.decode().splitlines()
    ]


def run_in_thread(pipeline: Pipeline, executor: ServiceExecutor) -> threading.Thread:
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["outputs"] = pipeline.run(executor)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.result = result  # type: ignore[attr-defined]
    thread.start()
    return thread


def finished(thread: threading.Thread, timeout_s: float = 180.0) -> list[Task[Any]]:
    thread.join(timeout_s)
    assert not thread.is_alive(), "the job did not finish in time"
    result = thread.result  # type: ignore[attr-defined]
    if "error" in result:
        raise result["error"]
    outputs: list[Task[Any]] = result["outputs"]
    return outputs


def fifos(directory: Path, *names: str) -> Path:
    """A new directory holding FIFOs `names` (how a test and a stage inside a worker meet)."""
    directory.mkdir()
    for name in names:
        os.mkfifo(directory / name)
    return directory


def read_fifo(path: Path, timeout_s: float = 120.0) -> str:
    """What a stage writes to the FIFO `path` (blocks until it does), with a deadline."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(path.read_text()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    assert box, f"nothing was written to {path} in {timeout_s:g} s"
    return box[0].strip()

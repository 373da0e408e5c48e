"""The embedded service `gristmill up` runs: NATS, Ray, planner, coordinator and workers on
this machine, as child processes of one supervisor.

The supervisor starts an embedded nats-server (JetStream, loopback, files under the state
dir) unless `GRISTMILL_NATS_URL` names a server, opens a Ray session (the workers connect to it
through `RAY_ADDRESS`), starts `python -m services.planner`, `services.coordinator` and the
workers, waits until each answers, and writes `<state dir>/service.json` so clients find it.
Stopping (SIGINT/SIGTERM to the supervisor, or `gristmill down`) stops them in reverse order.
The services are started by module name: gristmill imports nothing from `services`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from gristmill.config import SERVICE_FILE, ServiceSettings
from gristmill.errors import GristmillError
from gristmill.nats_server import EmbeddedNats

__all__ = ["EmbeddedService"]

log = logging.getLogger(__name__)


class EmbeddedService:
    """A whole service on this machine (see the module docstring)."""

    def __init__(
        self,
        state_dir: Path | str = ".gristmill",
        workers: int = 1,
        gpu_workers: int = 0,
        slots: int = 2,
        teams: tuple[str, ...] = ("default",),
        output_root: str | None = None,
        trust_code: bool = True,
        nats_url: str | None = None,
        start_timeout_s: float = 120.0,
    ):
        self.state_dir = Path(state_dir).resolve()
        self.workers = workers
        self.gpu_workers = gpu_workers
        self.slots = slots
        self.teams = teams
        self.output_root = output_root or os.getcwd()
        self.trust_code = trust_code
        self.nats_url = nats_url or os.environ.get("GRISTMILL_NATS_URL")
        self.start_timeout_s = start_timeout_s
        self.nats: EmbeddedNats | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._args: dict[str, list[str]] = {}
        self._env: dict[str, str] = {}
        self._ray: contextlib.ExitStack | None = None
        self.settings: ServiceSettings | None = None

    @property
    def url(self) -> str:
        """The NATS URL clients use."""
        assert self.settings is not None, "not started"
        return self.settings.nats_url

    def start(self) -> EmbeddedService:
        """Start everything and wait until it answers; on failure, stop what started."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from gristmill.executors.ray_cluster import ray_session

        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        if self.nats_url is None:
            self.nats = EmbeddedNats(self.state_dir / "nats").start()
            url = self.nats.url
        else:
            url = self.nats_url
        self.settings = ServiceSettings(
            nats_url=url,
            state_dir=self.state_dir,
            store_root=os.environ.get("GRISTMILL_STORE", str(self.state_dir / "store")),
            teams=self.teams,
            output_root=self.output_root,
            trust_code=self.trust_code,
        )
        self._ray = contextlib.ExitStack()
        session = self._ray.enter_context(ray_session())
        self._env = {**os.environ, **self.settings.env(), "RAY_ADDRESS": session.address}
        self._spawn("planner", ["services.planner"])
        self._spawn("coordinator", ["services.coordinator"])
        for index in range(self.workers):
            self.spawn_worker(f"cpu-{index}", "cpu", self.slots, wait=False)
        for index in range(self.gpu_workers):
            self.spawn_worker(f"gpu-{index}", "gpu", 1, wait=False)
        asyncio.run(self._wait_ready([n for n in self._args if n.startswith(("cpu-", "gpu-"))]))
        record = {
            "nats_url": url,
            "pid": os.getpid(),
            "store": self.settings.store_root,
            "processes": {name: p.pid for name, p in self.processes.items()},
        }
        (self.state_dir / SERVICE_FILE).write_text(json.dumps(record, indent=2))

    def spawn_worker(
        self, name: str, pool: str = "cpu", slots: int | None = None, wait: bool = True
    ) -> None:
        """Start a worker process whose id (and process name) is `name`; with `wait`, return
        once it has joined."""
        args = ["services.worker", "--pool", pool, "--slots", str(slots or self.slots)]
        self._spawn(name, [*args, "--id", name])
        if wait:
            asyncio.run(self._wait_ready([name]))

    def restart(self, name: str) -> None:
        """Start a stopped (or killed) child again, as it was started, and wait for it."""
        self._spawn(name, self._args[name])
        asyncio.run(self._wait_ready([name] if name.startswith(("cpu-", "gpu-")) else []))

    def _spawn(self, name: str, args: list[str]) -> None:
        self._args[name] = args
        log_path = self.state_dir / "logs" / f"{name}.log"
        with log_path.open("ab") as log_file:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", *args],
                env=self._env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the supervisor, which stops them
            )

    async def _wait_ready(self, workers: list[str]) -> None:
        from gristmill.bus.client import ServiceUnavailable, request
        from gristmill.bus.jobs import worker_key
        from gristmill.bus.streams import TeamLayout
        from gristmill.client import ServiceClient

        assert self.settings is not None
        client = await ServiceClient.connect(self.settings.nats_url, self.teams[0])
        deadline = time.monotonic() + self.start_timeout_s
        try:
            for verb in ("info", "status"):
                while True:
                    self._check_alive()
                    try:
                        await request(client.nc, self.teams[0], verb, timeout_s=1.0)
                        break
                    except ServiceUnavailable:
                        await self._pause(deadline, f"the service to answer {verb}")
            kv = await client.js.key_value(TeamLayout(self.teams[0]).bucket("assignments"))
            for worker in workers:
                while True:
                    self._check_alive()
                    with contextlib.suppress(Exception):
                        if (await kv.get(worker_key(worker))).value:
                            break
                    await self._pause(deadline, f"worker {worker} to join")
        finally:
            await client.close()

    @staticmethod
    async def _pause(deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            raise GristmillError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)  # polling a process we do not control: nothing to wait on

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                log_path = self.state_dir / "logs" / f"{name}.log"
                tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
                raise GristmillError(
                    f"{name} exited with status {process.returncode} while starting; "
                    f"its log ({log_path}) ends:\n{tail}"
                )

    def kill(self, name: str) -> None:
        """SIGKILL one child (chaos tests: nothing of it gets to clean up) and reap it."""
        process = self.processes.pop(name)
        process.kill()
        process.wait()

    def stop(self) -> None:
        """Stop every child (workers first), NATS and Ray; remove service.json."""
        order = sorted(self.processes, key=lambda n: {"planner": 1, "coordinator": 2}.get(n, 0))
        for name in order:
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name in order:
            process = self.processes.pop(name)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.nats is not None:
            self.nats.stop()
            self.nats = None
        if self._ray is not None:
            self._ray.close()
            self._ray = None
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / SERVICE_FILE).unlink()

    def __enter__(self) -> EmbeddedService:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

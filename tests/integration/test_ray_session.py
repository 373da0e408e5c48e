"""ray_session: starts Ray only when none runs, stops only what it started, and points
RAY_ADDRESS at its own cluster for the duration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import ray

from gristmill.executors.ray_cluster import ray_session

pytestmark = pytest.mark.integration


def test_a_session_starts_ray_reuses_it_inside_and_stops_it_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    with ray_session() as outer:
        assert outer.started_here
        assert ray.is_initialized()
        assert os.environ["RAY_ADDRESS"] == outer.address
        with ray_session() as inner:
            assert inner is outer
        assert ray.is_initialized()  # the inner session did not stop what it did not start
        with (
            pytest.raises(RuntimeError, match="started without the dashboard"),
            ray_session(dashboard=True),
        ):
            pass
    assert not ray.is_initialized()
    assert "RAY_ADDRESS" not in os.environ
    assert outer.stop_seconds > 0


def test_a_ray_the_user_started_is_left_running() -> None:
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        with ray_session() as session:
            assert not session.started_here
        assert ray.is_initialized()
    finally:
        ray.shutdown()


OTHER_RAY = """
import signal, sys, ray
ray.init(num_cpus=1, include_dashboard=False, _temp_dir=sys.argv[1], log_to_driver=False)
print(ray.get_runtime_context().gcs_address, flush=True)
try:
    signal.pause()  # until the test sends SIGINT
except KeyboardInterrupt:
    ray.shutdown()
"""


def test_xenna_runs_beside_another_ray_on_the_same_machine(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal
    import subprocess
    import sys
    import tempfile

    from gristmill import Pipeline
    from gristmill.executors.xenna import XennaExecutor

    from ray_stages import AddOne, MakeBatches

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    other_dir = tempfile.mkdtemp(prefix="gm-other-ray-")
    other = subprocess.Popen(
        [sys.executable, "-c", OTHER_RAY, other_dir], stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None
        other_address = other.stdout.readline().strip()  # blocks until that Ray is up
        assert other_address
        outputs = Pipeline("beside", [MakeBatches(num_tasks=3), AddOne()]).run(XennaExecutor())
        assert sorted(v for t in outputs for v in t.to_pyarrow()["n"].to_pylist()) == list(
            range(1, 16)
        )
        assert not ray.is_initialized()  # ours is stopped again; the other one was never touched
        assert other.poll() is None
    finally:
        other.send_signal(signal.SIGINT)
        try:
            other.wait(timeout=120)
        except subprocess.TimeoutExpired:  # its ray.shutdown() hung (a loaded machine): not ours
            other.kill()
            other.wait(timeout=30)


def test_a_state_directory_too_deep_for_rays_sockets_still_starts_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CI's pytest temp paths made Ray refuse its plasma socket (over 107 bytes); Ray's files
    # then move to a short directory named after the state directory.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    deep = tmp_path / ("d" * 60) / "state"
    with ray_session(state=deep) as session:
        assert session.started_here
        temp = ray._private.worker._global_node.get_temp_dir_path()
    assert not str(temp).startswith(str(deep))
    assert len(temp) <= 42
    assert os.path.basename(temp).startswith(f"gm-ray-{os.getuid()}-")

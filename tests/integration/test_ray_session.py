"""ray_session: starts Ray only when none runs, stops only what it started, and points
RAY_ADDRESS at its own cluster for the duration."""

from __future__ import annotations

import os

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

"""RayScaler against a real local Ray: its requests are read back from where Ray keeps them for
the autoscaler (v1: the GCS internal KV key `autoscaler_resource_request`; v2: the cluster
resource constraint in the GCS's cluster resource state)."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gristmill.executors.ray_cluster import ray_session
from services.coordinator.scaling.policy import Decision
from services.coordinator.scaling.ray_scaler import RayScaler

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]


def requested() -> dict[str, object]:
    """The autoscaler's standing request: which store holds it, and its bundles. Where
    `request_resources` leaves it (ray/autoscaler/_private/commands.py): v1 writes the bundles
    as JSON to the KV; v2 sends them to the GCS, which keeps them, counted by shape, as the
    cluster's resource constraint."""
    import json  # everything inside: the v2 test runs this function's source in a child

    from ray._private.ray_constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.autoscaler.v2.sdk import get_cluster_resource_state
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get, internal_kv_get_gcs_client

    if is_autoscaler_v2(fetch_from_server=True):
        gcs = internal_kv_get_gcs_client()  # type: ignore[no-untyped-call]
        state = get_cluster_resource_state(gcs)
        bundles = [
            dict(r.request.resources_bundle)
            for constraint in state.cluster_resource_constraints
            for r in constraint.resource_requests
            for _ in range(r.count)
        ]
        return {"store": "v2", "bundles": bundles}
    raw = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return {"store": "kv", "bundles": None if raw is None else json.loads(raw)}


@pytest.fixture(scope="module", autouse=True)
def ray() -> Iterator[None]:
    """One local Ray for the module (its autoscaler: v1, as a local cluster's is)."""
    with ray_session():
        yield


def decision(**workers: int) -> Decision:
    return Decision(at=0.0, workers=workers, slots={}, remove={}, gpus={}, reasons=())


def test_the_decisions_bundles_reach_the_autoscalers_request() -> None:
    scaler = RayScaler(cpus_per_worker=2, gpus_per_worker=1)

    bundles = scaler.apply(decision(cpu=3, gpu=2))

    expected = [{"CPU": 2.0}] * 3 + [{"GPU": 1.0}] * 2
    assert bundles == expected
    assert requested() == {"store": "kv", "bundles": expected}


def test_an_unchanged_decision_is_not_requested_again() -> None:
    from ray.autoscaler.sdk import request_resources

    scaler = RayScaler(cpus_per_worker=1, gpus_per_worker=1)
    scaler.apply(decision(cpu=2))
    request_resources(bundles=[{"CPU": 9.0}])  # someone else's request since

    assert scaler.apply(decision(cpu=2)) == [{"CPU": 1.0}] * 2
    assert requested()["bundles"] == [{"CPU": 9.0}]  # not sent again

    scaler.apply(decision(cpu=1, gpu=1))
    assert requested()["bundles"] == [{"CPU": 1.0}, {"GPU": 1.0}]


def test_no_workers_withdraws_the_request() -> None:
    scaler = RayScaler(cpus_per_worker=1, gpus_per_worker=1)
    scaler.apply(decision(cpu=4))

    assert scaler.apply(decision(cpu=0, gpu=0)) == []
    assert requested()["bundles"] == []


CONNECTS = """
import json, sys
import ray
from services.coordinator.scaling.policy import Decision
from services.coordinator.scaling.ray_scaler import RayScaler

assert not ray.is_initialized()
decision = Decision(at=0.0, workers={"cpu": 2, "gpu": 1}, slots={}, remove={}, gpus={}, reasons=())
print(json.dumps(RayScaler(0.5, 1).apply(decision)))
"""


def test_a_process_without_ray_connects_to_the_cluster_at_ray_address() -> None:
    # ray_session points RAY_ADDRESS at the module's cluster; the child inherits it.
    child = subprocess.run(
        [sys.executable, "-c", CONNECTS], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout.splitlines()[-1]) == [{"CPU": 0.5}] * 2 + [{"GPU": 1.0}]
    assert requested()["bundles"] == [{"CPU": 0.5}, {"CPU": 0.5}, {"GPU": 1.0}]


AUTOSCALER_V2 = (
    inspect.getsource(requested)
    + """
import json, sys
import ray
from services.coordinator.scaling.policy import Decision
from services.coordinator.scaling.ray_scaler import RayScaler

ray.init(num_cpus=1, include_dashboard=False, _temp_dir=sys.argv[1], log_to_driver=False)
try:
    scaler = RayScaler(cpus_per_worker=2, gpus_per_worker=0.5)
    for workers in ({"cpu": 3, "gpu": 2}, {"cpu": 1, "gpu": 0}):
        scaler.apply(Decision(at=0.0, workers=workers, slots={}, remove={}, gpus={}, reasons=()))
        print(json.dumps(requested()), flush=True)
finally:
    ray.shutdown()
"""
)


def test_with_autoscaler_v2_the_request_is_the_clusters_resource_constraint() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a cluster of its own
    env["RAY_enable_autoscaler_v2"] = "1"
    temp = tempfile.mkdtemp(prefix="gm-ray-v2-")  # short: Ray's socket paths must fit
    try:
        child = subprocess.run(
            [sys.executable, "-c", AUTOSCALER_V2, temp],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert child.returncode == 0, child.stderr
    first, second = (json.loads(line) for line in child.stdout.splitlines()[-2:])
    # The GCS keeps bundles counted by shape, so their order is not kept.
    assert first["store"] == "v2"
    assert sorted(first["bundles"], key=json.dumps) == sorted(
        [{"CPU": 2.0}] * 3 + [{"GPU": 0.5}] * 2, key=json.dumps
    )
    assert second == {"store": "v2", "bundles": [{"CPU": 2.0}]}

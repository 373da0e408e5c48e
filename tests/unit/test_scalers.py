"""Choosing a scaler by name, and RayScaler's bundles: no Ray needed (its requests reaching a
real Ray are tests/integration/test_ray_scaler.py)."""

from __future__ import annotations

import pytest

from gristmill.errors import GristmillError
from services.coordinator.scaling.policy import Decision
from services.coordinator.scaling.ray_scaler import RayScaler, ray_scaler_from_env
from services.coordinator.scaling.scalers import NoScaler, Scaler, scaler_from_env


def decision(gpus: int = 0, **workers: int) -> Decision:
    return Decision(at=0.0, workers=workers, slots={}, remove={}, gpus={"gpu": gpus}, reasons=())


def test_each_desired_worker_is_one_bundle_of_its_pools_shape() -> None:
    scaler = RayScaler(cpus_per_worker=2, gpus_per_worker=1)
    assert scaler.bundles(decision(gpu=2, cpu=3, gpus=2)) == [
        {"CPU": 2.0},
        {"CPU": 2.0},
        {"CPU": 2.0},
        {"GPU": 1.0},
        {"GPU": 1.0},
    ]


def test_gpu_bundles_follow_the_pools_workers_not_the_gpus_its_demand_packs_into() -> None:
    # Demand packs into 6 GPUs, but the pool's max held it at 2 workers: the autoscaler is
    # asked for what the workers take, so it does not start nodes the pool cannot use.
    scaler = RayScaler(cpus_per_worker=1, gpus_per_worker=2)
    assert scaler.bundles(decision(gpu=2, gpus=6)) == [{"GPU": 2.0}, {"GPU": 2.0}]


def test_fractional_gpu_workers_ask_for_their_fraction() -> None:
    scaler = RayScaler(cpus_per_worker=1, gpus_per_worker=0.5)
    assert scaler.bundles(decision(gpu=3, gpus=2)) == [{"GPU": 0.5}] * 3


def test_no_workers_is_no_bundles() -> None:
    assert RayScaler(1, 1).bundles(decision(cpu=0, gpu=0)) == []


@pytest.mark.parametrize(("cpus", "gpus"), [(0, 1), (1, 0), (-1, 1)])
def test_a_worker_without_cpus_or_gpus_is_refused(cpus: float, gpus: float) -> None:
    with pytest.raises(ValueError, match="a worker needs CPUs and GPUs above 0"):
        RayScaler(cpus, gpus)


def test_cpus_per_worker_default_to_the_workers_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRISTMILL_RAY_CPUS_PER_WORKER", raising=False)
    monkeypatch.delenv("GRISTMILL_RAY_GPUS_PER_WORKER", raising=False)
    monkeypatch.setenv("GRISTMILL_WORKER_SLOTS", "4")
    scaler = ray_scaler_from_env()
    assert (scaler.cpus_per_worker, scaler.gpus_per_worker) == (4.0, 1.0)

    monkeypatch.setenv("GRISTMILL_RAY_CPUS_PER_WORKER", "8")
    monkeypatch.setenv("GRISTMILL_RAY_GPUS_PER_WORKER", "0.25")
    scaler = ray_scaler_from_env()
    assert (scaler.cpus_per_worker, scaler.gpus_per_worker) == (8.0, 0.25)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("two", "GRISTMILL_RAY_CPUS_PER_WORKER must be a number, got 'two'"),
        ("0", "GRISTMILL_RAY_CPUS_PER_WORKER must be above 0, got '0'"),
    ],
)
def test_a_bad_cpus_per_worker_names_the_variable(
    value: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRISTMILL_RAY_CPUS_PER_WORKER", value)
    with pytest.raises(GristmillError) as raised:
        ray_scaler_from_env()
    assert str(raised.value) == message


def test_scalers_are_chosen_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRISTMILL_RAY_CPUS_PER_WORKER", raising=False)
    none: Scaler = scaler_from_env("none")
    ray: Scaler = scaler_from_env(" Ray ")  # making one connects to nothing yet
    assert (none.name, ray.name) == ("none", "ray")
    assert none.apply(decision(cpu=3)) is None
    assert isinstance(none, NoScaler)
    assert isinstance(ray, RayScaler)


def test_an_unknown_scaler_is_an_error_listing_the_choices() -> None:
    with pytest.raises(GristmillError) as raised:
        scaler_from_env("keda")
    assert str(raised.value) == "GRISTMILL_SCALER must be one of none, ray, kubernetes; got 'keda'"

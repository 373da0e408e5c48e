"""`Resources`: what a stage worker asks for, validated when it is made."""

from __future__ import annotations

import dataclasses

import pytest

from gristmill.errors import ResourcesError
from gristmill.stages import Resources

FIELDS = ["cpus", "gpus", "gpu_memory_gb"]


def test_defaults_are_one_cpu_and_no_gpu():
    res = Resources()
    assert (res.cpus, res.gpus, res.gpu_memory_gb) == (1.0, 0.0, 0.0)
    assert res.requires_gpu is False
    assert res.to_dict() == {"cpus": 1.0, "gpu_memory_gb": 0.0, "gpus": 0.0}


def test_resources_error_is_a_value_error():
    assert issubclass(ResourcesError, ValueError)


@pytest.mark.parametrize("field", FIELDS)
def test_negative_value_is_refused_naming_the_field(field):
    with pytest.raises(ResourcesError) as err:
        Resources(**{field: -1})
    assert str(err.value) == f"Resources.{field} must be a finite number >= 0, got -1"


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_value_is_refused_naming_the_field(field, value):
    with pytest.raises(ResourcesError, match=rf"^Resources\.{field} must be a finite number >= 0"):
        Resources(**{field: value})


@pytest.mark.parametrize("field", FIELDS)
def test_bool_is_refused_as_not_a_number(field):
    with pytest.raises(ResourcesError) as err:
        Resources(**{field: True})
    assert str(err.value) == f"Resources.{field} must be a number, got True"


@pytest.mark.parametrize("field", FIELDS)
def test_string_is_refused_as_not_a_number(field):
    with pytest.raises(ResourcesError) as err:
        Resources(**{field: "2"})
    assert str(err.value) == f"Resources.{field} must be a number, got '2'"


def test_gpus_and_gpu_memory_together_are_refused_as_exclusive():
    with pytest.raises(ResourcesError) as err:
        Resources(gpus=0.5, gpu_memory_gb=8)
    assert str(err.value) == "Resources: give gpus (0.5) or gpu_memory_gb (8), not both"


def test_zero_gpus_with_gpu_memory_is_fine():
    assert Resources(gpus=0, gpu_memory_gb=8).gpu_memory_gb == 8


@pytest.mark.parametrize("gpus", [0.25, 0.5, 1, 1.0, 2, 2.0, 8])
def test_fractions_below_one_and_whole_gpus_are_accepted(gpus):
    res = Resources(gpus=gpus)
    assert res.gpus == gpus
    assert res.requires_gpu is True


@pytest.mark.parametrize("gpus", [1.5, 2.25])
def test_fractional_gpus_above_one_are_refused(gpus):
    with pytest.raises(ResourcesError) as err:
        Resources(gpus=gpus)
    assert str(err.value) == (
        f"Resources.gpus above 1 must be a whole number of GPUs, got {gpus}; "
        f"fractions are for sharing one GPU (gpus < 1)"
    )


@pytest.mark.parametrize(
    ("res", "needs_gpu"),
    [
        (Resources(), False),
        (Resources(cpus=8), False),
        (Resources(cpus=0), False),
        (Resources(gpus=0.25), True),
        (Resources(gpu_memory_gb=0.5), True),
    ],
)
def test_requires_gpu(res, needs_gpu):
    assert res.requires_gpu is needs_gpu


def test_equal_requests_are_equal_and_hash_alike():
    assert Resources(cpus=2, gpus=0.5) == Resources(cpus=2.0, gpus=0.5)
    assert hash(Resources(cpus=2, gpus=0.5)) == hash(Resources(cpus=2.0, gpus=0.5))
    assert Resources() == Resources(cpus=1, gpus=0, gpu_memory_gb=0)


@pytest.mark.parametrize(
    "other", [Resources(cpus=2), Resources(gpus=0.5), Resources(gpu_memory_gb=4)]
)
def test_different_requests_are_not_equal(other):
    assert other != Resources()


def test_resources_are_immutable():
    res = Resources()
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.cpus = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("res", "text"),
    [
        (Resources(), "cpus=1"),
        (Resources(cpus=2.5), "cpus=2.5"),
        (Resources(cpus=1, gpus=0.25), "cpus=1 gpus=0.25"),
        (Resources(cpus=4, gpus=2), "cpus=4 gpus=2"),
        (Resources(gpu_memory_gb=16), "cpus=1 gpu_memory_gb=16"),
    ],
)
def test_describe(res, text):
    assert res.describe() == text

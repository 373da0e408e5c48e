"""Placement rules for the Ray executors: CPU shares and GPU requests (pure functions)."""

from __future__ import annotations

import pytest

from gristmill import Resources
from gristmill.errors import GristmillError
from gristmill.executors.placement import fit_cpus, gpu_request


def test_requests_that_fit_are_unchanged() -> None:
    assert fit_cpus([1.0, 0.5], 2.0) == [1.0, 0.5]


def test_six_one_cpu_steps_share_two_cores_evenly() -> None:
    assert fit_cpus([1.0] * 6, 2.0) == pytest.approx([2 / 6] * 6)
    assert sum(fit_cpus([1.0] * 6, 2.0)) == pytest.approx(2.0)


def test_proportions_are_kept_and_zero_stays_zero() -> None:
    assert fit_cpus([2.0, 1.0, 0.0, 1.0], 2.0) == pytest.approx([1.0, 0.5, 0.0, 0.5])


def test_a_cluster_without_cpus_is_an_error() -> None:
    with pytest.raises(GristmillError, match="no CPU"):
        fit_cpus([1.0], 0.0)


def test_cpu_only_stages_ask_for_no_gpu_even_without_gpus() -> None:
    assert gpu_request("s", Resources(cpus=1), 0.0, None) == 0.0


def test_fractional_and_whole_gpus_pass_through() -> None:
    assert gpu_request("s", Resources(gpus=0.25), 1.0, None) == 0.25
    assert gpu_request("s", Resources(gpus=2), 8.0, None) == 2


def test_gpu_memory_becomes_a_share_of_one_card() -> None:
    assert gpu_request("s", Resources(gpu_memory_gb=20), 1.0, 80.0) == 0.25


def test_a_gpu_stage_without_gpus_names_the_stage() -> None:
    with pytest.raises(GristmillError, match=r"stage 'embed' asks for gpus=0.25, but the Ray cluster has no GPU"):  # fmt: skip
        gpu_request("embed", Resources(gpus=0.25), 0.0, None)
    with pytest.raises(GristmillError, match=r"stage 'embed' asks for gpu_memory_gb=8, but"):
        gpu_request("embed", Resources(gpu_memory_gb=8), 0.0, None)


def test_impossible_gpu_requests_are_named() -> None:
    with pytest.raises(GristmillError, match=r"asks for 4 GPUs; the cluster has 2"):
        gpu_request("s", Resources(gpus=4), 2.0, 80.0)
    with pytest.raises(
        GristmillError, match=r"asks for 100 GB of GPU memory; a GPU here has 80 GB"
    ):
        gpu_request("s", Resources(gpu_memory_gb=100), 1.0, 80.0)
    with pytest.raises(GristmillError, match=r"memory could not be detected"):
        gpu_request("s", Resources(gpu_memory_gb=8), 1.0, None)

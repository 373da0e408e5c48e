"""`gristmill.executors` names every executor, and loads a backend only when it is asked for."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import gristmill.executors


def _fresh(code: str) -> object:
    """What `code` (run in a fresh interpreter) prints as JSON on its last line."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(result.stdout.splitlines()[-1])


def test_every_executor_imports_from_the_package() -> None:
    from gristmill.executors import RayDataExecutor, ServiceExecutor, XennaExecutor
    from gristmill.executors.ray_data import RayDataExecutor as FromRayData
    from gristmill.executors.service import ServiceExecutor as FromService
    from gristmill.executors.xenna import XennaExecutor as FromXenna

    assert XennaExecutor is FromXenna
    assert RayDataExecutor is FromRayData
    assert ServiceExecutor is FromService
    backends = {"XennaExecutor", "RayDataExecutor", "ServiceExecutor"}
    assert backends <= set(gristmill.executors.__all__)
    assert backends <= set(dir(gristmill.executors))


def test_importing_the_package_imports_no_backend() -> None:
    loaded = _fresh(
        "import json, sys\n"
        "import gristmill, gristmill.executors\n"
        "print(json.dumps([m for m in ('ray', 'cosmos_xenna', 'nats', 'faststream') if m in sys.modules]))\n"
    )
    assert loaded == []


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match=r"has no attribute 'DaskExecutor'$"):
        gristmill.executors.DaskExecutor  # noqa: B018

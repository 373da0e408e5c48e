"""The `gristmill` command line: describe, stages, version, and its error exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gristmill import __version__
from gristmill.cli import main

import toy_stages  # noqa: F401  (registers the toy stages the specs below name)


def _spec(tmp_path: Path, body: str) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(body)
    return str(path)


def test_describe_prints_the_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path, "name: toy\nstages:\n  - stage: AddLength\n  - stage: KeepLong\n")
    assert main(["describe", spec]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        "Pipeline 'toy': 2 stages in 1 steps",
        "  step 1  [cpus=1, batch_size=1]  (fused)  ends: last stage",
    ]
    assert main(["describe", "--no-fuse", spec]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        "Pipeline 'toy': 2 stages in 2 steps",
        "  step 1  [cpus=1, batch_size=1]  ends: fusion off",
    ]


def test_describe_of_a_bad_spec_exits_2_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _spec(tmp_path, "name: toy\nstages:\n  - stage: MakeDocs\n  - stage: KeepLong\n")
    assert main(["describe", spec]) == 2
    assert capsys.readouterr().err == (
        "gristmill: error: stage #2 'KeepLong' needs column 'length', which no earlier stage "
        "produces (available: 'doc_id', 'text'). Add a stage that produces it, or fix the "
        "stage's inputs().\n"
    )


def test_stages_lists_registered_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stages"]) == 0
    names = capsys.readouterr().out.split()
    assert {"AddLength", "KeepLong", "MakeDocs"} <= set(names)
    assert names == sorted(names)


def test_console_script_is_installed_and_reports_the_version() -> None:
    script = Path(sys.executable).parent / "gristmill"
    result = subprocess.run([script, "--version"], capture_output=True, text=True, check=True)
    assert result.stdout == f"gristmill {__version__}\n"
    assert __version__ == "0.1.0"

"""`gristmill run` on a machine with no service: it starts one, runs the pipeline, stops it —
what `make demo` does."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gristmill.cli import main

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]


def test_gristmill_run_starts_a_service_runs_the_pipeline_and_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GRISTMILL_NATS_URL", raising=False)
    monkeypatch.setenv("GRISTMILL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("GRISTMILL_INPUT_ROOTS", f"{ROOT},{tmp_path}")
    spec = str(ROOT / "examples" / "pipelines" / "quality.yaml")

    assert main(["run", spec, "--input", str(ROOT / "examples" / "data"), "--output", "out"]) == 0

    out = capsys.readouterr().out
    assert re.search(r"^gristmill service up at nats://127\.0\.0\.1:\d+ ", out, re.MULTILINE)
    assert re.search(r"job j[0-9a-f]{15} completed in [0-9.]+ s: 449 documents in, 340 out, 109 dropped; 0 failed tasks", out)  # fmt: skip
    assert f"output: {tmp_path / 'out'}\n" in out
    assert out.endswith("gristmill service stopped\n")
    ids = [
        json.loads(line)["id"]
        for path in sorted((tmp_path / "out").glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    assert len(ids) == len(set(ids)) == 340
    assert not (tmp_path / "state" / "service.json").exists()
    assert main(["down"]) == 0
    assert capsys.readouterr().out == (
        f"no gristmill service runs with state dir {tmp_path / 'state'}\n"
    )


def test_a_registered_only_service_refuses_a_pipeline_bringing_its_own_classes(
    tmp_path: Path,
) -> None:
    from gristmill import Pipeline
    from gristmill.client import JobRejected
    from gristmill.embedded import EmbeddedService
    from gristmill.executors.service import ServiceExecutor
    from gristmill.stages.text.io import JsonlReader

    from service_stages import RecordCalls

    pipeline = Pipeline(
        "own", [JsonlReader(file_paths=str(ROOT / "examples" / "data")), RecordCalls("x.log")]
    )
    with (
        EmbeddedService(tmp_path / "state", workers=0, trust_code=False) as service,
        pytest.raises(JobRejected) as caught,
    ):
        pipeline.run(ServiceExecutor(service.url))
    assert str(caught.value) == (
        "stage #3 is the class service_stages:RecordCalls, which is not registered on this "
        "service; team default may use registered stages only (its own classes run where the "
        "teams file's trusted_teams names it and the service is not --registered-only): "
        "install the stage where the service runs, under the entry points 'gristmill.stages'"
    )


def test_gristmill_up_with_a_teams_file_gives_each_team_its_credentials_and_only_its_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GRISTMILL_NATS_URL", raising=False)
    monkeypatch.delenv("GRISTMILL_CREDENTIALS", raising=False)
    monkeypatch.setenv("GRISTMILL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("GRISTMILL_INPUT_ROOTS", f"{ROOT},{tmp_path}")
    teams = tmp_path / "teams.yaml"
    teams.write_text("teams:\n  alpha: {weight: 3}\n  beta: {}\ntrusted_teams: [alpha, beta]\n")
    spec = str(ROOT / "examples" / "pipelines" / "quality.yaml")
    creds = tmp_path / "state" / "credentials"

    assert main(["up", "--detach", "--teams-file", str(teams)]) == 0
    try:
        out = capsys.readouterr().out
        assert f"credentials: {creds}\n" in out
        for team in ("alpha", "beta"):
            assert (creds / f"{team}.creds").stat().st_mode & 0o777 == 0o600
        alpha, beta = str(creds / "alpha.creds"), str(creds / "beta.creds")

        assert main(["status"]) == 2  # two teams: which one is not guessed
        assert capsys.readouterr().err == (
            "gristmill: error: the service has several teams (alpha, beta): pass --credentials "
            "FILE (or set GRISTMILL_CREDENTIALS), or name a team\n"
        )
        data = str(ROOT / "examples" / "data")
        assert main(["run", spec, "--input", data, "--output", "alpha/out", "--credentials", alpha]) == 0  # fmt: skip
        [job] = re.findall(r"^job (j[0-9a-f]{15}) submitted$", capsys.readouterr().out, re.M)

        assert main(["status", "--credentials", alpha]) == 0
        assert re.search(rf"^{job}  quality  completed  tasks ", capsys.readouterr().out, re.M)
        assert main(["status", "--credentials", beta]) == 0
        assert capsys.readouterr().out.startswith("no jobs\n")  # alpha's job is not beta's
        ids = [
            json.loads(line)["id"]
            for path in sorted((tmp_path / "alpha" / "out").glob("*.jsonl"))
            for line in path.read_text().splitlines()
        ]
        assert len(ids) == len(set(ids)) == 340
    finally:
        assert main(["down"]) == 0

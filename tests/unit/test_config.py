"""Service settings come from GRISTMILL_* variables; clients find the embedded service."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gristmill.config import ServiceSettings, discover_nats_url
from gristmill.errors import GristmillError


def test_settings_read_the_environment_and_give_it_to_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRISTMILL_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("GRISTMILL_NATS_URL", "nats://127.0.0.1:4999")
    monkeypatch.setenv("GRISTMILL_TEAMS", "web, books")
    monkeypatch.setenv("GRISTMILL_TRUST_CODE", "0")
    monkeypatch.setenv("GRISTMILL_OUTPUT_ROOT", "/data/out")
    monkeypatch.delenv("GRISTMILL_STORE", raising=False)
    settings = ServiceSettings.from_env()
    assert settings == ServiceSettings(
        nats_url="nats://127.0.0.1:4999",
        state_dir=tmp_path,
        store_root=str(tmp_path / "store"),
        teams=("web", "books"),
        output_root="/data/out",
        trust_code=False,
    )
    assert ServiceSettings.from_env("nats://other:1").nats_url == "nats://other:1"
    for key, value in settings.env().items():
        monkeypatch.setenv(key, value)
    assert ServiceSettings.from_env() == settings


def test_bad_settings_are_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRISTMILL_NATS_URL", "nats://x:1")
    monkeypatch.setenv("GRISTMILL_TRUST_CODE", "maybe")
    with pytest.raises(GristmillError, match="GRISTMILL_TRUST_CODE must be 1 or 0, got 'maybe'"):
        ServiceSettings.from_env()
    monkeypatch.setenv("GRISTMILL_TRUST_CODE", "1")
    monkeypatch.setenv("GRISTMILL_TEAMS", "Web Team")
    with pytest.raises(GristmillError, match="team 'Web Team' cannot be used in a subject"):
        ServiceSettings.from_env()


def test_clients_find_the_embedded_service_or_say_how_to_start_one(tmp_path: Path) -> None:
    message = (
        f"no gristmill service found: {tmp_path / 'service.json'} does not exist; start one with "
        f"`gristmill up` (or set GRISTMILL_NATS_URL to a running one)"
    )
    with pytest.raises(GristmillError, match=re.escape(message)):
        discover_nats_url(tmp_path)
    (tmp_path / "service.json").write_text(json.dumps({"nats_url": "nats://127.0.0.1:5"}))
    assert discover_nats_url(tmp_path) == "nats://127.0.0.1:5"
    (tmp_path / "service.json").write_text("{")
    with pytest.raises(GristmillError, match=r"service.json is damaged .*; run `gristmill down`"):
        discover_nats_url(tmp_path)


def test_teams_whose_streams_would_be_shared_are_refused(tmp_path: Path) -> None:
    with pytest.raises(GristmillError) as caught:
        ServiceSettings(nats_url="nats://x", state_dir=tmp_path, store_root="s", teams=("a-b", "a_b"))  # fmt: skip
    assert str(caught.value) == (
        "teams 'a-b' and 'a_b' would share streams and buckets (both become 'a_b'); rename one "
        "of them"
    )
    ServiceSettings(nats_url="nats://x", state_dir=tmp_path, store_root="s", teams=("a-b", "ab"))


def test_limits_and_roots_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRISTMILL_NATS_URL", "nats://h:1")
    monkeypatch.setenv("GRISTMILL_INPUT_ROOTS", "/data, s3://bucket/in")
    monkeypatch.setenv("GRISTMILL_STREAM_MAX_BYTES", "1048576")
    monkeypatch.setenv("GRISTMILL_RETENTION_S", "60")
    settings = ServiceSettings.from_env()
    assert settings.input_roots == ("/data", "s3://bucket/in")
    assert settings.readable_roots_of("default") == ("/data", "s3://bucket/in")
    assert (settings.stream_max_bytes, settings.retention_s) == (1 << 20, 60.0)
    assert ServiceSettings.from_env().env()["GRISTMILL_INPUT_ROOTS"] == "/data,s3://bucket/in"
    monkeypatch.setenv("GRISTMILL_RETENTION_S", "soon")
    with pytest.raises(GristmillError, match=r"GRISTMILL_RETENTION_S must be a number, got 'soon'"):
        ServiceSettings.from_env()
    monkeypatch.delenv("GRISTMILL_RETENTION_S")
    monkeypatch.delenv("GRISTMILL_INPUT_ROOTS")
    assert ServiceSettings.from_env().readable_roots_of("default") == (
        ServiceSettings.from_env().output_root,
    )

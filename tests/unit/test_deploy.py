"""What a deployment beyond one machine is made of, without a cluster: the replica count
streams and buckets get, NATS URLs listing several servers, the cluster's server configs and
the components' secrets `gristmill deploy files` writes, and the probe settings."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from gristmill import credentials as creds
from gristmill.bus.broker import nats_servers
from gristmill.bus.streams import StreamLimits, TeamLayout
from gristmill.cli import main
from gristmill.config import ServiceSettings
from gristmill.deploy import nats_cluster_configs, write_deploy_files
from gristmill.errors import GristmillError
from gristmill.nats_server import ClusterRoutes, server_config
from gristmill.teams import TeamsConfig


def test_streams_and_buckets_take_the_replica_count_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRISTMILL_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("GRISTMILL_NATS_URL", "nats://n1:4222,nats://n2:4222")
    monkeypatch.setenv("GRISTMILL_REPLICAS", "3")
    settings = ServiceSettings.from_env()
    assert settings.replicas == 3
    assert settings.env()["GRISTMILL_REPLICAS"] == "3"
    assert settings.stream_limits() == StreamLimits(replicas=3)
    configs = TeamLayout("web").stream_configs(settings.stream_limits())
    assert [(c["name"], c["num_replicas"]) for c in configs] == [
        ("GM_WEB_TASKS", 3),
        ("GM_WEB_EVENTS", 3),
        ("GM_WEB_DLQ", 3),
        ("GM_WEB_SPANS", 3),
    ]
    monkeypatch.delenv("GRISTMILL_REPLICAS")
    assert ServiceSettings.from_env().replicas == 1  # the embedded default: one server


@pytest.mark.parametrize(
    ("raw", "shown"), [("0", "0"), ("6", "6"), ("three", "'three'"), ("-1", "'-1'")]
)
def test_a_replica_count_jetstream_cannot_keep_is_refused(
    raw: str, shown: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRISTMILL_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("GRISTMILL_NATS_URL", "nats://n1:4222")
    monkeypatch.setenv("GRISTMILL_REPLICAS", raw)
    with pytest.raises(GristmillError) as caught:
        ServiceSettings.from_env()
    assert str(caught.value) == (
        f"GRISTMILL_REPLICAS must be 1 to 5 (JetStream keeps at most 5 copies), got {shown}"
        if raw.isdigit()
        else f"GRISTMILL_REPLICAS must be 1 to 5, got {shown}"
    )


def test_a_nats_url_may_list_a_clusters_servers() -> None:
    assert nats_servers("nats://a:4222") == ["nats://a:4222"]
    assert nats_servers("nats://a:4222, nats://b:4222,nats://c:4222") == ["nats://a:4222", "nats://b:4222", "nats://c:4222"]  # fmt: skip
    with pytest.raises(ValueError, match="no NATS server in ' , '"):
        nats_servers(" , ")


def test_probe_ports_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRISTMILL_NATS_URL", "nats://n1:4222")
    monkeypatch.setenv("GRISTMILL_STATE_DIR", str(tmp_path))
    assert (ServiceSettings.from_env().health_host, ServiceSettings.from_env().health_port) == (
        "127.0.0.1",
        0,
    )
    monkeypatch.setenv("GRISTMILL_HEALTH_PORT", "8081")
    monkeypatch.setenv("GRISTMILL_HEALTH_HOST", "0.0.0.0")
    assert (ServiceSettings.from_env().health_host, ServiceSettings.from_env().health_port) == (
        "0.0.0.0",
        8081,
    )
    monkeypatch.setenv("GRISTMILL_HEALTH_PORT", "http")
    with pytest.raises(GristmillError, match=r"^GRISTMILL_HEALTH_PORT must be a port number \(0-65535\), got 'http'$"):  # fmt: skip
        ServiceSettings.from_env()


def test_a_cluster_servers_config_routes_to_every_server_with_its_own_user() -> None:
    routes = ClusterRoutes("gm", "0.0.0.0:6222", ("n1:6222", "n2:6222"), "route", "s3cret")
    text = server_config(
        "gm-1", "0.0.0.0:4222", "0.0.0.0:8222", "/data", "authorization {}\n", routes
    )
    assert text.splitlines()[:7] == [
        "server_name: gm-1",
        "listen: 0.0.0.0:4222",
        "http: 0.0.0.0:8222",
        "max_payload: 8MB",
        "jetstream {",
        '  store_dir: "/data"',
        "}",
    ]
    assert (
        "  routes: [nats-route://route:s3cret@n1:6222, nats-route://route:s3cret@n2:6222]" in text
    )
    assert '    user: "route"' in text
    assert '    password: "s3cret"' in text
    assert "cluster" not in server_config("gm", "a:1", "a:2", "/d", "authorization {}\n")


def _users(config: str) -> list[str]:
    block = json.loads(config[config.index("\nauthorization ") + len("\nauthorization ") :])
    return sorted(u["user"] for u in block["users"])


def test_deploy_files_are_one_config_per_server_and_one_file_per_secret(tmp_path: Path) -> None:
    teams = TeamsConfig.of_names(("web", "books"))
    written = write_deploy_files(
        tmp_path / "out", teams, tmp_path / "creds", nodes=3, host="nats-{i}.nats"
    )
    names = sorted(p.name for p in written)
    assert names == ["coordinator.creds", "http-tokens.json", "nats-1.conf", "nats-2.conf", "nats-3.conf", "operator.token", "planner.creds", "worker.creds"]  # fmt: skip
    assert {stat.S_IMODE(p.stat().st_mode) for p in written} == {0o600}
    first = (tmp_path / "out" / "nats-1.conf").read_text()
    assert "server_name: gristmill-1" in first
    assert "@nats-0.nats:6222, nats-route://" in first
    assert "@nats-2.nats:6222]" in first
    identities = creds.ensure_credentials(tmp_path / "creds", teams.names)
    assert _users(first) == sorted(c.user for c in identities)  # every team and component
    planner = creds.read_credentials(tmp_path / "out" / "planner.creds")
    assert (planner.kind, planner.name) == ("service", "planner")
    operator = creds.read_credentials(creds.service_file(tmp_path / "creds", "operator"))
    assert (tmp_path / "out" / "operator.token").read_text() == operator.http_token
    again = nats_cluster_configs(teams, tmp_path / "creds", nodes=3, host="nats-{i}.nats")
    route = next(line for line in first.splitlines() if line.startswith("  routes:"))
    assert route in again["nats-2.conf"]  # the same route password on every run


def test_one_server_has_no_routes(tmp_path: Path) -> None:
    configs = nats_cluster_configs(TeamsConfig.of_names(("web",)), tmp_path / "creds", nodes=1)
    assert list(configs) == ["nats-1.conf"]
    assert "cluster {" not in configs["nats-1.conf"]


def test_the_cli_writes_the_deploy_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teams_file = tmp_path / "teams.yaml"
    teams_file.write_text("teams:\n  web: {}\n")
    status = main(["deploy", "files", "--out", str(tmp_path / "out"), "--teams-file", str(teams_file), "--credentials-dir", str(tmp_path / "creds"), "--nodes", "2"])  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == str(tmp_path / "out" / "nats-1.conf")
    assert (
        printed[-1]
        == f"teams' credentials (hand each team its own): {tmp_path / 'creds'}/<team>.creds"
    )
    assert (tmp_path / "creds" / "web.creds").exists()

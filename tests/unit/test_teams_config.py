"""Teams without servers: the teams file, credentials files and their errors, the NATS
permissions each team gets, the quota messages, and how an in-flight quota is split."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from gristmill.bus.permissions import inbox_prefix, team_permissions
from gristmill.credentials import (
    CredentialError,
    TokenTable,
    ensure_credentials,
    nats_authorization,
    read_credentials,
    resolve_credentials,
    service_file,
    team_file,
)
from gristmill.errors import GristmillError
from gristmill.teams import TeamsConfig, parse_bytes
from services.coordinator.sharing import split_cap
from services.planner.quotas import running_jobs_refusal, size, store_refusal


def test_a_teams_file_gives_weights_quotas_roots_and_trust(tmp_path: Path) -> None:
    path = tmp_path / "teams.yaml"
    path.write_text(
        "teams:\n"
        "  alpha: {weight: 3, max_running_jobs: 2, max_store_bytes: 1.5GiB}\n"
        "  beta:\n"
        "trusted_teams: [alpha]\n"
    )
    config = TeamsConfig.load(path)
    assert config.names == ("alpha", "beta")
    assert config.teams["alpha"].weight == 3.0
    assert config.teams["alpha"].max_store_bytes == 3 << 29
    assert config.teams["beta"].max_running_jobs is None
    assert (config.trusted("alpha"), config.trusted("beta")) == (True, False)
    assert config.output_root("beta", "/srv/out") == "/srv/out/beta"
    assert config.input_roots("beta", (), "/srv/out/beta") == ("/srv/out/beta",)
    assert TeamsConfig.load(_write(tmp_path, config.to_yaml())) == config


def test_one_team_alone_is_trusted_and_writes_to_the_deployments_root() -> None:
    config = TeamsConfig.of_names(["default"])
    assert config.trusted("default")
    assert config.output_root("default", "/srv/out") == "/srv/out"
    several = TeamsConfig.of_names(["a", "b"])
    assert not several.trusted("a")
    assert not several.trusted("b")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("teams: {alpha: {weight: 0}}", "teams.alpha.weight: Input should be greater than 0"),
        (
            "teams: {alpha: {quota: 1}}",
            "teams.alpha.quota: Extra inputs are not permitted",
        ),
        (
            "teams: {alpha: {}}\ntrusted_teams: [zeta]",
            "teams file: Value error, trusted_teams names teams that are not listed: zeta",
        ),
        (
            "teams: {alpha: {max_store_bytes: lots}}",
            "teams.alpha.max_store_bytes: Value error, not a size: 'lots' (use bytes, or a "
            "number with KB, MiB, GB, ...)",
        ),
        ("teams: {}", "teams file: Value error, no teams: name at least one"),
    ],
)
def test_a_bad_teams_file_is_named_with_what_is_wrong(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(GristmillError) as caught:
        TeamsConfig.load(path)
    assert str(caught.value) == f"the teams file {path} is not valid: {problem}"


def test_unreadable_or_non_yaml_teams_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(GristmillError, match=r"cannot read the teams file .*nope.yaml: No such"):
        TeamsConfig.load(tmp_path / "nope.yaml")
    with pytest.raises(GristmillError, match=r"the teams file .* is not YAML"):
        TeamsConfig.load(_write(tmp_path, "teams: [unclosed"))


def test_sizes_read_with_units() -> None:
    assert [parse_bytes(v) for v in (12, "12", "2KB", "2KiB", "1.5 MB")] == [
        12,
        12,
        2000,
        2048,
        1_500_000,
    ]
    with pytest.raises(ValueError, match="not a size: True"):
        parse_bytes(True)


def test_credentials_are_made_once_private_and_kept(tmp_path: Path) -> None:
    made = ensure_credentials(tmp_path, ("alpha", "beta"))
    assert [(c.kind, c.name) for c in made][:2] == [("team", "alpha"), ("team", "beta")]
    path = team_file(tmp_path, "alpha")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(service_file(tmp_path, "worker")).st_mode) == 0o600
    again = ensure_credentials(tmp_path, ("alpha", "beta"))
    assert [c.password for c in again] == [c.password for c in made]
    alpha = read_credentials(path)
    assert alpha.connect_options() == {
        "user": "alpha",
        "password": alpha.password,
        "inbox_prefix": "_INBOX_alpha",
    }
    assert read_credentials(service_file(tmp_path, "planner")).user == "_gm_planner"
    table = TokenTable.load(tmp_path / "http-tokens.json")
    assert table.owner(alpha.http_token) == "alpha"
    assert table.owner(read_credentials(service_file(tmp_path, "operator")).http_token) == "*"
    assert table.owner(read_credentials(service_file(tmp_path, "worker")).http_token) is None
    assert table.owner("guess") is None


def test_bad_credentials_files_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(CredentialError) as caught:
        read_credentials(tmp_path / "gone.creds")
    assert str(caught.value) == f"credentials file {tmp_path / 'gone.creds'} does not exist"
    garbled = _write(tmp_path, '{"kind": "team"}', "x.creds")
    with pytest.raises(CredentialError) as caught:
        read_credentials(garbled)
    assert str(caught.value) == f"{garbled} is not a gristmill credentials file (KeyError: 'name')"
    fields = {"kind": "team", "name": "alpha", "user": "_gm_planner", "password": "p"}
    forged = _write(tmp_path, json.dumps({**fields, "http_token": "t"}), "y.creds")
    with pytest.raises(CredentialError) as caught:
        read_credentials(forged)
    assert str(caught.value) == f"{forged} names user '_gm_planner' for team alpha"
    if os.geteuid() != 0:  # root reads any file
        locked = _write(tmp_path, "{}", "locked.creds")
        locked.chmod(0)
        with pytest.raises(CredentialError, match=r"cannot read credentials file .*Permission"):
            read_credentials(locked)


def test_a_client_finds_the_only_teams_file_or_asks_which(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GRISTMILL_CREDENTIALS", raising=False)
    state = tmp_path / "state"
    with pytest.raises(CredentialError) as caught:
        resolve_credentials(None, None, "nats://x", state)
    assert str(caught.value) == (
        "no credentials: pass --credentials FILE (or set GRISTMILL_CREDENTIALS); `gristmill up` "
        f"writes each team's file to {state / 'credentials'}"
    )
    ensure_credentials(state / "credentials", ("alpha",))
    assert resolve_credentials(None, None, "nats://x", state).team == "alpha"
    ensure_credentials(state / "credentials", ("alpha", "beta"))
    with pytest.raises(CredentialError) as caught:
        resolve_credentials(None, None, "nats://x", state)
    assert str(caught.value) == (
        "the service has several teams (alpha, beta): pass --credentials FILE (or set "
        "GRISTMILL_CREDENTIALS), or name a team"
    )
    assert resolve_credentials(None, "beta", "nats://x", state).team == "beta"
    monkeypatch.setenv("GRISTMILL_CREDENTIALS", str(team_file(state / "credentials", "alpha")))
    with pytest.raises(CredentialError) as caught:
        resolve_credentials(None, "beta", "nats://x", state)
    assert str(caught.value) == (
        f"{team_file(state / 'credentials', 'alpha')} are team alpha's, not team beta's"
    )


def test_a_team_may_reach_only_its_own_api_and_its_readable_streams() -> None:
    allowed = team_permissions("alpha")
    assert allowed["subscribe"] == {"allow": ["_INBOX_alpha.>"]}
    publish = allowed["publish"]["allow"]
    assert publish[0] == "gm.alpha.api.>"
    assert all("ALPHA" in p or p.startswith("gm.alpha.") for p in publish)
    assert not [p for p in publish if "TASKS" in p or "$KV" in p or p.endswith("INFO")]
    assert "$JS.API.CONSUMER.CREATE.GM_ALPHA_EVENTS.>" in publish
    assert "$JS.API.CONSUMER.MSG.NEXT.GM_ALPHA_EVENTS.>" in publish
    assert inbox_prefix("alpha") == "_INBOX_alpha"


def test_the_servers_users_have_hashed_passwords_and_no_anonymous_user(tmp_path: Path) -> None:
    made = ensure_credentials(tmp_path, ("alpha",))
    block = nats_authorization(made)
    assert block.startswith("authorization {")
    users = json.loads(block.removeprefix("authorization "))["users"]
    assert [u["user"] for u in users] == [c.user for c in made]
    assert all(u["password"].startswith("$2b$") for u in users)
    assert all(c.password not in block for c in made)
    assert "no_auth_user" not in block


def test_quota_refusals_name_the_quota_the_limit_and_the_use() -> None:
    assert running_jobs_refusal("alpha", None, {"j1", "j2"}) is None
    assert running_jobs_refusal("alpha", 3, {"j1", "j2"}) is None
    assert running_jobs_refusal("alpha", 2, {"j2", "j1"}) == (
        "team alpha is at its quota max_running_jobs=2: 2 jobs are running (j1, j2); submit "
        "again when one has finished"
    )
    assert store_refusal("alpha", 1 << 20, 5) is None
    assert store_refusal("alpha", 1 << 20, 3 << 20) == (
        "team alpha is at its quota max_store_bytes=1048576 (1.0 MiB): its store holds 3145728 "
        "bytes (3.0 MiB); collect finished jobs (`gristmill gc`) and submit again"
    )
    assert [size(n) for n in (5, 2048, 5 << 30)] == ["5 B", "2.0 KiB", "5.0 GiB"]


def test_an_in_flight_quota_is_split_over_workers_by_slots_adding_up_exactly() -> None:
    assert split_cap(4, {"a": 2, "b": 2}) == {"a": 2, "b": 2}
    assert split_cap(3, {"a": 2, "b": 2}) == {"a": 2, "b": 1}
    assert split_cap(1, {"a": 4, "b": 4, "c": 4}) == {"a": 1, "b": 0, "c": 0}
    assert split_cap(5, {"a": 1, "b": 3}) == {"a": 1, "b": 3}  # no more than the slots
    assert sum(split_cap(7, {"a": 3, "b": 5, "c": 1}).values()) == 7
    assert split_cap(2, {}) == {}


def _write(directory: Path, text: str, name: str = "teams.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path

"""Files for deployments beyond one machine, from the teams file the embedded service uses
(`gristmill deploy files --out DIR`): the configuration of each server of a NATS cluster, and
each service component's credentials, one file per secret.

Each server gets the same `authorization` block as the embedded server (every team's user and
every service component's, with bcrypt-hashed passwords and the same permissions), JetStream,
and routes to the others that authenticate with a route user of their own. The credentials are
made in the credentials directory where missing, as `gristmill up` makes them, and copied flat
into the output (`planner.creds`, `coordinator.creds`, `worker.creds`, `http-tokens.json`, and
`operator.token`, the operator's HTTP bearer token for KEDA), which is what compose's `secrets`
and kustomize's `secretGenerator` read.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from gristmill import credentials as creds_
from gristmill.fs import write_private
from gristmill.nats_server import ClusterRoutes, server_config
from gristmill.teams import TeamsConfig

__all__ = ["ROUTE_PASSWORD_FILE", "nats_cluster_configs", "write_deploy_files"]

# The components that run in a deployment, each with its own credentials file.
DEPLOYED_ROLES = ("planner", "coordinator", "worker")

ROUTE_PASSWORD_FILE = "nats-route.password"


def _route_password(credentials_dir: Path) -> str:
    path = credentials_dir / ROUTE_PASSWORD_FILE
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_urlsafe(24)
    write_private(path, password + "\n")
    return password


def nats_cluster_configs(
    teams: TeamsConfig,
    credentials_dir: Path,
    nodes: int = 3,
    host: str = "nats-{n}",
    client_port: int = 4222,
    cluster_port: int = 6222,
    monitor_port: int = 8222,
    store_dir: str = "/data/jetstream",
    cluster_name: str = "gristmill",
) -> dict[str, str]:
    """`nats-<n>.conf` for each of `nodes` servers; `host` names server n as the others reach
    it: `{n}` counts from 1 (compose services `nats-1`...), `{i}` from 0 (a StatefulSet's pods,
    `nats-{i}.nats`)."""
    if nodes < 1:
        raise ValueError(f"a NATS cluster needs at least one server, got {nodes}")
    identities = creds_.ensure_credentials(credentials_dir, teams.names)
    authorization = creds_.nats_authorization(identities)
    password = _route_password(credentials_dir)
    peers = tuple(f"{host.format(n=n, i=n - 1)}:{cluster_port}" for n in range(1, nodes + 1))
    configs = {}
    for n in range(1, nodes + 1):
        cluster = ClusterRoutes(cluster_name, f"0.0.0.0:{cluster_port}", peers, "route", password)
        configs[f"nats-{n}.conf"] = server_config(
            f"{cluster_name}-{n}",
            f"0.0.0.0:{client_port}",
            f"0.0.0.0:{monitor_port}",
            store_dir,
            authorization,
            cluster if nodes > 1 else None,
        )
    return configs


def write_deploy_files(
    out: Path, teams: TeamsConfig, credentials_dir: Path, nodes: int = 3, host: str = "nats-{n}"
) -> list[Path]:
    """Write the NATS servers' configs and the components' secrets under `out` (private files:
    they hold passwords and password hashes); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    files = dict(nats_cluster_configs(teams, credentials_dir, nodes, host))
    for role in DEPLOYED_ROLES:
        files[f"{role}.creds"] = creds_.service_file(credentials_dir, role).read_text()
    files[creds_.TOKENS_FILE] = (credentials_dir / creds_.TOKENS_FILE).read_text()
    operator = creds_.read_credentials(creds_.service_file(credentials_dir, creds_.OPERATOR))
    files["operator.token"] = operator.http_token
    written = []
    for name, text in files.items():
        write_private(out / name, text)
        written.append(out / name)
    return written

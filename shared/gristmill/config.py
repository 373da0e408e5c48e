"""Service settings, from `GRISTMILL_*` environment variables (the CLI flags of the same names
override them).

| variable                 | default                       | meaning                              |
| ------------------------ | ----------------------------- | ------------------------------------ |
| GRISTMILL_NATS_URL       | the embedded service's URL    | the NATS server every service uses   |
| GRISTMILL_STATE_DIR      | `.gristmill`                  | embedded NATS data, store, Ray files |
| GRISTMILL_STORE          | `<state dir>/store`           | where task payloads live (fsspec)    |
| GRISTMILL_TEAMS          | `default`                     | teams this deployment serves         |
| GRISTMILL_TEAMS_FILE     | none                          | teams with weights, quotas, trust    |
| GRISTMILL_CREDENTIALS_DIR| `<state dir>/credentials`     | credentials `up` writes and reads    |
| GRISTMILL_CREDENTIALS    | found in the credentials dir  | the file this process connects with  |
| GRISTMILL_OUTPUT_ROOT    | the directory `up` ran in     | where jobs may write (per deployment)|
| GRISTMILL_TRUST_CODE     | `1`                           | `0`: no team's own classes run       |
| GRISTMILL_INPUT_ROOTS    | the output root               | where jobs may read (comma-separated)|
| GRISTMILL_STREAM_MAX_BYTES | 1 GiB                       | each team's tasks/events/DLQ streams |
| GRISTMILL_REPLICAS       | 1                             | stream and bucket copies (3: cluster)|
| GRISTMILL_RETENTION_S    | 86400 (a day)                 | finished jobs kept before collection |
| GRISTMILL_IDLE_ACTOR_S   | 60                            | an idle step actor is stopped after  |
| GRISTMILL_HTTP_HOST      | 127.0.0.1                     | the coordinator's HTTP API listens on|
| GRISTMILL_HTTP_PORT      | 0 (any free port; `up` picks) | ... and on this port                 |
| GRISTMILL_HEALTH_PORT    | none (no probes)              | planner, worker: /healthz, /readyz   |
| GRISTMILL_HEALTH_HOST    | 127.0.0.1                     | ... on this address (0.0.0.0 in pods)|
| GRISTMILL_TRACING        | 1                             | trace jobs (OpenTelemetry)           |
| GRISTMILL_DRAIN_S        | 10                            | a stopping worker's runs may end in  |
| GRISTMILL_MIN_WORKERS    | none (the pool keeps its size)| fewest CPU workers (autoscaling)     |
| GRISTMILL_MAX_WORKERS    | none (the pool keeps its size)| most CPU workers (autoscaling)       |
| GRISTMILL_GPU_MIN_WORKERS| none                          | fewest GPU workers                   |
| GRISTMILL_GPU_MAX_WORKERS| none                          | most GPU workers                     |
| GRISTMILL_WORKER_SLOTS   | 2                             | slots of each CPU worker             |
| GRISTMILL_SCALE_DOWN_AFTER_S | 30                        | demand low this long: shrink a pool  |
| GRISTMILL_SCALE_GRACE_S  | 30                            | a worker just ready is kept this long|
| GRISTMILL_SCALER         | none                          | carry decisions out: ray, kubernetes |
| GRISTMILL_STEP_SPLIT     | shared                        | `even`: static split (a baseline)    |

OTLP export uses OpenTelemetry's own variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, ...).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from gristmill.bus.streams import StreamLimits, layout_name
from gristmill.bus.subjects import check_token
from gristmill.errors import GristmillError
from gristmill.teams import TeamPolicy, TeamsConfig

__all__ = ["ServiceSettings", "discover_nats_url", "env_replicas", "nats_url", "state_dir"]

SERVICE_FILE = "service.json"


def state_dir() -> Path:
    """gristmill's state directory: `$GRISTMILL_STATE_DIR`, or `.gristmill` here."""
    return Path(os.environ.get("GRISTMILL_STATE_DIR", ".gristmill")).resolve()


def nats_url(explicit: str | None = None) -> str:
    """The service's NATS URL: `explicit`, else `$GRISTMILL_NATS_URL`, else the embedded
    service's under the state directory."""
    return explicit or os.environ.get("GRISTMILL_NATS_URL") or discover_nats_url(state_dir())


def _flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off", ""):
        return False
    raise GristmillError(f"GRISTMILL_TRUST_CODE must be 1 or 0, got {value!r}")


def _number(name: str, default: float, zero: bool = False) -> float:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise GristmillError(f"{name} must be a number, got {raw!r}") from None
    if value < 0 or (value == 0 and not zero):
        raise GristmillError(f"{name} must be above 0, got {raw!r}")
    return value


_POOL_PREFIX = {"cpu": "", "gpu": "GPU_"}


def _choice(name: str, choices: tuple[str, ...]) -> str:
    raw = os.environ.get(name, "") or choices[0]
    if raw not in choices:
        raise GristmillError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _pool_bounds() -> tuple[tuple[str, int, int], ...]:
    """The pools given autoscaling bounds (`GRISTMILL_[GPU_]MIN_WORKERS`, `..._MAX_WORKERS`)."""
    bounds = []
    for pool, prefix in _POOL_PREFIX.items():
        low_raw = os.environ.get(f"GRISTMILL_{prefix}MIN_WORKERS", "")
        high_raw = os.environ.get(f"GRISTMILL_{prefix}MAX_WORKERS", "")
        if not high_raw:
            if low_raw:
                raise GristmillError(
                    f"GRISTMILL_{prefix}MIN_WORKERS needs GRISTMILL_{prefix}MAX_WORKERS too"
                )
            continue
        low = int(_number(f"GRISTMILL_{prefix}MIN_WORKERS", 0, zero=True))
        high = int(_number(f"GRISTMILL_{prefix}MAX_WORKERS", 1, zero=True))
        if low > high:
            raise GristmillError(
                f"GRISTMILL_{prefix}MIN_WORKERS ({low}) is above GRISTMILL_{prefix}MAX_WORKERS "
                f"({high})"
            )
        bounds.append((pool, low, high))
    return tuple(bounds)


def _port(raw: str, name: str = "GRISTMILL_HTTP_PORT") -> int:
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) > 65535:
        raise GristmillError(f"{name} must be a port number (0-65535), got {raw!r}")
    return int(raw)


def env_replicas() -> int:
    """`$GRISTMILL_REPLICAS`: copies of each stream and bucket (default 1)."""
    return _replicas(os.environ.get("GRISTMILL_REPLICAS", ""))


def _replicas(raw: str) -> int:
    if not raw:
        return 1
    if not raw.isdigit():
        raise GristmillError(f"GRISTMILL_REPLICAS must be 1 to 5, got {raw!r}")
    return int(raw)


def _list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class ServiceSettings:
    """What every service process needs to know about its deployment."""

    nats_url: str
    state_dir: Path
    store_root: str
    teams: tuple[str, ...] = ("default",)
    output_root: str = field(default_factory=os.getcwd)
    trust_code: bool = True
    input_roots: tuple[str, ...] = ()  # empty: the output root
    stream_max_bytes: int = 1 << 30
    replicas: int = 1
    retention_s: float = 86400.0
    idle_actor_s: float = 60.0
    http_host: str = "127.0.0.1"
    http_port: int = 0
    health_host: str = "127.0.0.1"
    health_port: int = 0  # 0: no probe endpoints (the embedded supervisor watches its children)
    teams_config: TeamsConfig | None = None  # None: `teams` with the defaults
    credentials_dir: Path | None = None  # None: `<state dir>/credentials`
    drain_s: float = 10.0
    # Autoscaling bounds per pool (None: the pool is as large as it is; nothing scales it).
    pool_bounds: tuple[tuple[str, int, int], ...] = ()
    worker_slots: int = 2
    scale_down_after_s: float = 30.0
    scale_grace_s: float = 30.0
    scaler: str = "none"
    step_split: str = "shared"  # "even": the static baseline the autoscaling bench compares

    def __post_init__(self) -> None:
        if self.teams_config is None:
            object.__setattr__(self, "teams_config", TeamsConfig.of_names(self.teams))
        elif self.teams_config.names != self.teams:
            object.__setattr__(self, "teams", self.teams_config.names)
        if self.credentials_dir is None:
            object.__setattr__(self, "credentials_dir", self.state_dir / "credentials")
        if isinstance(self.replicas, bool) or self.replicas not in range(1, 6):
            raise GristmillError(
                f"GRISTMILL_REPLICAS must be 1 to 5 (JetStream keeps at most 5 copies), "
                f"got {self.replicas!r}"
            )
        seen: dict[str, str] = {}
        for team in self.teams:
            check_token("team", team)
            other = seen.setdefault(layout_name(team), team)
            if other != team:
                raise GristmillError(
                    f"teams {other!r} and {team!r} would share streams and buckets "
                    f"(both become {layout_name(team)!r}); rename one of them"
                )

    @property
    def policies(self) -> TeamsConfig:
        """The teams' weights, quotas, roots and trust."""
        assert self.teams_config is not None
        return self.teams_config

    @property
    def credentials(self) -> Path:
        """The directory of the teams' and the components' credentials."""
        assert self.credentials_dir is not None
        return self.credentials_dir

    def policy(self, team: str) -> TeamPolicy:
        """`team`'s weight, quotas and roots."""
        return self.policies.teams[team]

    def trusts(self, team: str) -> bool:
        """Whether the service runs `team`'s own classes."""
        return self.trust_code and self.policies.trusted(team)

    def output_root_of(self, team: str) -> str:
        """Where `team`'s jobs may write."""
        return self.policies.output_root(team, self.output_root)

    def readable_roots_of(self, team: str) -> tuple[str, ...]:
        """Where `team`'s jobs may read input files."""
        return self.policies.input_roots(team, self.input_roots, self.output_root_of(team))

    def stream_limits(self) -> StreamLimits:
        """The limits each team's streams are created with."""
        return StreamLimits(max_bytes=self.stream_max_bytes, replicas=self.replicas)

    @classmethod
    def from_env(cls, url: str | None = None) -> ServiceSettings:
        """Settings from the environment; `url` wins over `GRISTMILL_NATS_URL`."""
        directory = state_dir()
        teams_file = os.environ.get("GRISTMILL_TEAMS_FILE", "")
        config = TeamsConfig.load(teams_file) if teams_file else None
        credentials = os.environ.get("GRISTMILL_CREDENTIALS_DIR", "")
        return cls(
            nats_url=nats_url(url),
            state_dir=directory,
            store_root=os.environ.get("GRISTMILL_STORE", str(directory / "store")),
            teams=config.names if config else _list(os.environ.get("GRISTMILL_TEAMS", "default")),
            teams_config=config,
            credentials_dir=Path(credentials) if credentials else None,
            output_root=os.environ.get("GRISTMILL_OUTPUT_ROOT", os.getcwd()),
            trust_code=_flag(os.environ.get("GRISTMILL_TRUST_CODE", "1")),
            input_roots=_list(os.environ.get("GRISTMILL_INPUT_ROOTS", "")),
            stream_max_bytes=int(_number("GRISTMILL_STREAM_MAX_BYTES", 1 << 30)),
            replicas=env_replicas(),
            retention_s=_number("GRISTMILL_RETENTION_S", 86400.0),
            idle_actor_s=_number("GRISTMILL_IDLE_ACTOR_S", 60.0),
            http_host=os.environ.get("GRISTMILL_HTTP_HOST", "127.0.0.1"),
            http_port=_port(os.environ.get("GRISTMILL_HTTP_PORT", "")),
            health_host=os.environ.get("GRISTMILL_HEALTH_HOST", "127.0.0.1"),
            health_port=_port(os.environ.get("GRISTMILL_HEALTH_PORT", ""), "GRISTMILL_HEALTH_PORT"),
            drain_s=_number("GRISTMILL_DRAIN_S", 10.0),
            pool_bounds=_pool_bounds(),
            worker_slots=int(_number("GRISTMILL_WORKER_SLOTS", 2)),
            scale_down_after_s=_number("GRISTMILL_SCALE_DOWN_AFTER_S", 30.0, zero=True),
            scale_grace_s=_number("GRISTMILL_SCALE_GRACE_S", 30.0, zero=True),
            scaler=os.environ.get("GRISTMILL_SCALER", "none") or "none",
            step_split=_choice("GRISTMILL_STEP_SPLIT", ("shared", "even")),
        )

    def env(self) -> dict[str, str]:
        """These settings as environment variables, for child processes."""
        return {
            "GRISTMILL_NATS_URL": self.nats_url,
            "GRISTMILL_STATE_DIR": str(self.state_dir),
            "GRISTMILL_STORE": self.store_root,
            "GRISTMILL_TEAMS": ",".join(self.teams),
            "GRISTMILL_OUTPUT_ROOT": self.output_root,
            "GRISTMILL_TRUST_CODE": "1" if self.trust_code else "0",
            "GRISTMILL_INPUT_ROOTS": ",".join(self.input_roots),
            "GRISTMILL_STREAM_MAX_BYTES": str(self.stream_max_bytes),
            "GRISTMILL_REPLICAS": str(self.replicas),
            "GRISTMILL_RETENTION_S": repr(self.retention_s),
            "GRISTMILL_IDLE_ACTOR_S": repr(self.idle_actor_s),
            "GRISTMILL_HTTP_HOST": self.http_host,
            "GRISTMILL_HTTP_PORT": str(self.http_port),
            "GRISTMILL_CREDENTIALS_DIR": str(self.credentials),
            "GRISTMILL_DRAIN_S": repr(self.drain_s),
            "GRISTMILL_WORKER_SLOTS": str(self.worker_slots),
            "GRISTMILL_SCALE_DOWN_AFTER_S": repr(self.scale_down_after_s),
            "GRISTMILL_SCALE_GRACE_S": repr(self.scale_grace_s),
            "GRISTMILL_SCALER": self.scaler,
            "GRISTMILL_STEP_SPLIT": self.step_split,
            **{
                f"GRISTMILL_{_POOL_PREFIX[pool]}{edge}_WORKERS": str(value)
                for pool, low, high in self.pool_bounds
                for edge, value in (("MIN", low), ("MAX", high))
            },
        }


def discover_nats_url(state_dir: Path) -> str:
    """The URL of the embedded service `gristmill up` runs with this state dir."""
    path = state_dir / SERVICE_FILE
    try:
        return str(json.loads(path.read_text())["nats_url"])
    except FileNotFoundError:
        raise GristmillError(
            f"no gristmill service found: {path} does not exist; start one with `gristmill up` "
            f"(or set GRISTMILL_NATS_URL to a running one)"
        ) from None
    except (ValueError, KeyError) as exc:
        raise GristmillError(f"{path} is damaged ({exc}); run `gristmill down` and `up`") from exc

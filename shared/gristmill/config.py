"""Service settings, from `GRISTMILL_*` environment variables (the CLI flags of the same names
override them).

| variable                 | default                       | meaning                              |
| ------------------------ | ----------------------------- | ------------------------------------ |
| GRISTMILL_NATS_URL       | the embedded service's URL    | the NATS server every service uses   |
| GRISTMILL_STATE_DIR      | `.gristmill`                  | embedded NATS data, store, Ray files |
| GRISTMILL_STORE          | `<state dir>/store`           | where task payloads live (fsspec)    |
| GRISTMILL_TEAMS          | `default`                     | teams this deployment serves         |
| GRISTMILL_OUTPUT_ROOT    | the directory `up` ran in     | where jobs may write (per deployment)|
| GRISTMILL_TRUST_CODE     | `1`                           | run submitters' own classes          |
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from gristmill.bus.subjects import check_token
from gristmill.errors import GristmillError

__all__ = ["ServiceSettings", "discover_nats_url", "nats_url", "state_dir"]

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


@dataclass(frozen=True)
class ServiceSettings:
    """What every service process needs to know about its deployment."""

    nats_url: str
    state_dir: Path
    store_root: str
    teams: tuple[str, ...] = ("default",)
    output_root: str = field(default_factory=os.getcwd)
    trust_code: bool = True

    def __post_init__(self) -> None:
        for team in self.teams:
            check_token("team", team)

    @classmethod
    def from_env(cls, url: str | None = None) -> ServiceSettings:
        """Settings from the environment; `url` wins over `GRISTMILL_NATS_URL`."""
        directory = state_dir()
        teams = tuple(
            t.strip() for t in os.environ.get("GRISTMILL_TEAMS", "default").split(",") if t.strip()
        )
        return cls(
            nats_url=nats_url(url),
            state_dir=directory,
            store_root=os.environ.get("GRISTMILL_STORE", str(directory / "store")),
            teams=teams,
            output_root=os.environ.get("GRISTMILL_OUTPUT_ROOT", os.getcwd()),
            trust_code=_flag(os.environ.get("GRISTMILL_TRUST_CODE", "1")),
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

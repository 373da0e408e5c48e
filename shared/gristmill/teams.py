"""The teams a deployment serves, and what each may use: weight, quotas, roots, code trust.

Teams come from `GRISTMILL_TEAMS` (names, defaults for everything else) or a YAML teams file
(`GRISTMILL_TEAMS_FILE`, `gristmill up --teams-file`):

    teams:
      alpha: {weight: 3, max_running_jobs: 4, max_in_flight_tasks: 32, max_store_bytes: 50GiB}
      beta: {}
    trusted_teams: [alpha]

- `weight` (1): the team's share of worker slots against the other teams';
- `max_running_jobs`, `max_in_flight_tasks`, `max_store_bytes` (no limit): unfinished jobs at
  once (more are refused), task runs at once over all workers (dispatch waits), bytes in the
  team's store (submissions refused); sizes may be written `50GiB`;
- `output_root` (one team: the deployment's; more: `<output root>/<team>`): where it writes;
- `input_roots` (the deployment's, else its output root): where its jobs may read;
- `trusted_teams` (one team: that team; more: none): whose own classes the service runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gristmill import fs
from gristmill.bus.subjects import check_token
from gristmill.errors import GristmillError, field_problems

__all__ = ["TeamPolicy", "TeamsConfig", "parse_bytes"]

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS.update({"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40})
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_bytes(value: Any) -> int:
    """A byte count from an int or a string such as `500MB` or `2GiB`."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        return value
    match = _SIZE.fullmatch(str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {value!r} (use bytes, or a number with KB, MiB, GB, ...)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


class TeamPolicy(BaseModel):
    """One team's weight, quotas and roots (None: no limit, or the deployment's default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: float = Field(1.0, gt=0)
    max_running_jobs: int | None = Field(None, ge=1)
    max_in_flight_tasks: int | None = Field(None, ge=1)
    max_store_bytes: int | None = Field(None, ge=1)
    output_root: str | None = None
    input_roots: tuple[str, ...] | None = None

    @field_validator("max_store_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return None if value is None else parse_bytes(value)


class TeamsConfig(BaseModel):
    """Every team of a deployment and whose code it trusts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    teams: dict[str, TeamPolicy]
    trusted_teams: tuple[str, ...] | None = None

    @field_validator("teams", mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {name: policy or {} for name, policy in value.items()}
        if isinstance(value, list):  # a plain list of names
            return {name: {} for name in value}
        return value

    @model_validator(mode="after")
    def _named(self) -> TeamsConfig:
        if not self.teams:
            raise ValueError("no teams: name at least one")
        for team in self.teams:
            check_token("team", team)
        unknown = sorted(set(self.trusted_teams or ()) - set(self.teams))
        if unknown:
            raise ValueError(f"trusted_teams names teams that are not listed: {', '.join(unknown)}")
        return self

    @classmethod
    def of_names(cls, names: tuple[str, ...] | list[str]) -> TeamsConfig:
        """Teams by name, each with the defaults."""
        return cls(teams={check_token("team", name): TeamPolicy() for name in names})

    @classmethod
    def load(cls, path: str | Path) -> TeamsConfig:
        """A teams file; an error names the file and what is wrong in it."""
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise GristmillError(f"cannot read the teams file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise GristmillError(f"the teams file {path} is not YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise GristmillError(f"the teams file {path} must be a mapping with 'teams:'")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = field_problems(exc.errors(), "teams file")
            raise GristmillError(f"the teams file {path} is not valid: {problems}") from None
        except GristmillError as exc:
            raise GristmillError(f"the teams file {path} is not valid: {exc}") from None

    @property
    def names(self) -> tuple[str, ...]:
        """The teams, in the order given."""
        return tuple(self.teams)

    def trusted(self, team: str) -> bool:
        """Whether `team` may ship its own classes (one team alone is trusted by default)."""
        if self.trusted_teams is None:
            return len(self.teams) == 1
        return team in self.trusted_teams

    def output_root(self, team: str, deployment_root: str) -> str:
        """Where `team`'s jobs may write."""
        own = self.teams[team].output_root
        if own:
            return own
        if len(self.teams) == 1:
            return deployment_root
        return fs.join(deployment_root, team)

    def input_roots(
        self, team: str, deployment_roots: tuple[str, ...], output_root: str
    ) -> tuple[str, ...]:
        """Where `team`'s jobs may read."""
        own = self.teams[team].input_roots
        if own:
            return tuple(own)
        return deployment_roots or (output_root,)

    def to_yaml(self) -> str:
        """This configuration as a teams file (for child processes)."""
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)

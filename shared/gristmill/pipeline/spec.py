"""Pipeline specs: a pipeline as plain data (a dict, or YAML), naming stages in the registry.

name: quality
description: optional words
stages:
  - stage: WordCountFilter          # a registered stage name
    params: {min_words: 50}         # its constructor arguments, validated
    with: {batch_size: 4}           # optional: name, resources, batch_size, fans_out,
                                    # task_timeout_s
"""

from __future__ import annotations

import functools
import inspect
import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from gristmill.errors import SpecError, StageParamsError
from gristmill.stages import ProcessingStage, Resources, get_stage_class, stage_registry_name
from gristmill.stages.base import STAGE_SETTINGS, init_signature

__all__ = ["PipelineSpec", "StageSpec", "load_spec", "stage_from_spec", "stage_to_spec"]

AnyStage = ProcessingStage[Any, Any]


class StageSpec(BaseModel):
    """One stage of a spec."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    stage: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    # Set when the class travels by value: the SHA-256 of the submitter's module that defines
    # it (see `gristmill.pipeline.portable`), and then `stage` is the class's qualified name.
    code: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class PipelineSpec(BaseModel):
    """A whole pipeline as data."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str | None = None
    stages: list[StageSpec] = Field(min_length=1)

    def to_dict(self) -> dict[str, Any]:
        """The spec as a plain dict, leaving out empty parts."""
        raw: dict[str, Any] = {"name": self.name}
        if self.description:
            raw["description"] = self.description
        raw["stages"] = []
        for stage in self.stages:
            entry: dict[str, Any] = {"stage": stage.stage}
            if stage.params:
                entry["params"] = stage.params
            if stage.with_:
                entry["with"] = stage.with_
            if stage.code:
                entry["code"] = stage.code
            raw["stages"].append(entry)
        return raw


def load_spec(source: PipelineSpec | dict[str, Any] | str | Path) -> PipelineSpec:
    """Read a spec from a dict, a `PipelineSpec`, or the path of a YAML file."""
    if isinstance(source, PipelineSpec):
        return source
    origin = "pipeline spec"
    if isinstance(source, str | Path):
        path = Path(source)
        origin = f"pipeline spec {str(path)!r}"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SpecError(f"{origin}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"{origin}: cannot read it ({exc})") from exc
        try:
            source = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or exc
            raise SpecError(f"{origin}:{where}: invalid YAML: {problem}") from exc
    if not isinstance(source, dict):
        raise SpecError(f"{origin}: expected a mapping with 'name' and 'stages'")
    try:
        return PipelineSpec.model_validate(source)
    except ValidationError as exc:
        raise SpecError(f"{origin}: {_explain(exc)}") from exc


ClassLoader = Callable[[str, str], type]


def stage_from_spec(
    spec: StageSpec, position: int, load_class: ClassLoader | None = None
) -> AnyStage:
    """Build the stage a spec entry describes; errors name its position and stage.

    An entry with `code` needs `load_class(code, qualname)`, which only a caller that trusts
    the submitter's code provides; without it such an entry is refused."""
    label = f"stage #{position} '{spec.stage}'"
    if spec.code is None:
        cls = get_stage_class(spec.stage)
    elif load_class is None:
        raise SpecError(
            f"{label} is the submitter's own class (code {spec.code[:12]}), not a registered "
            f"stage; this service runs registered stages only"
        )
    else:
        cls = load_class(spec.code, spec.stage)
    try:
        validated = _params_model(cls).model_validate(spec.params)
    except ValidationError as exc:
        raise StageParamsError(f"{label}: bad params: {_explain(exc)}") from exc
    kwargs = {key: getattr(validated, key) for key in spec.params}
    try:
        stage = cls(**kwargs)
    except Exception as exc:
        raise StageParamsError(f"{label}: {type(exc).__name__}: {exc}") from exc
    unknown = sorted(set(spec.with_) - set(STAGE_SETTINGS))
    if unknown:
        raise StageParamsError(
            f"{label}: 'with' accepts {', '.join(STAGE_SETTINGS)}; got {', '.join(unknown)} "
            f"(constructor arguments go in 'params')"
        )
    if not spec.with_:
        return stage
    try:
        return stage.with_(**spec.with_)
    except Exception as exc:
        raise StageParamsError(f"{label}: bad 'with': {exc}") from exc


def stage_to_spec(stage: AnyStage, code: str | None = None) -> StageSpec:
    """The spec entry that rebuilds `stage`: its registry name (or, with `code`, its class's
    qualified name in that module), the parameters that differ from their defaults, and the
    settings that differ from what its constructor gives."""
    cls = type(stage)
    name = cls.__qualname__ if code else stage_registry_name(cls)
    params = stage.get_params()
    signature = init_signature(cls).parameters
    params = {
        key: value
        for key, value in params.items()
        if signature[key].default is inspect.Parameter.empty or signature[key].default != value
    }
    for key, value in params.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise SpecError(
                f"stage '{stage.name}': parameter '{key}' = {value!r} cannot be written to a spec "
                f"(only strings, numbers, booleans, None, lists and mappings can)"
            ) from None
    fresh = cls(**params)
    overrides: dict[str, Any] = {}
    for setting in STAGE_SETTINGS:
        value = getattr(stage, setting)
        if value != getattr(fresh, setting):
            overrides[setting] = value.to_dict() if isinstance(value, Resources) else value
    return StageSpec.model_validate(
        {"stage": name, "params": params, "with": overrides, "code": code}
    )


@functools.cache
def _params_model(cls: type) -> type[BaseModel]:
    """A pydantic model of `cls.__init__`'s parameters, for validating spec params."""
    signature = init_signature(cls)
    try:
        # The constructor itself, inherited ones too (mypy refuses `cls.__init__`).
        hints = typing.get_type_hints(getattr(cls, "__init__"))  # noqa: B009
    except Exception:  # unresolvable annotations: validate names and presence only
        hints = {}
    fields: dict[str, Any] = {}
    extra = "forbid"
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            extra = "allow"
            continue
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (hints.get(param.name, Any), default)
    config = ConfigDict(extra=extra, arbitrary_types_allowed=True)  # type: ignore[typeddict-item]
    model: type[BaseModel] = create_model(f"{cls.__name__}Params", __config__=config, **fields)
    return model


def _explain(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown parameter"
        problems.append(f"{where}: {message}")
    return "; ".join(problems)

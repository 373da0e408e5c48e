"""The stage registry: the names a pipeline spec may use, mapped to stage classes.

Names come from two places: `register_stage` (a decorator, for code the caller trusts) and the
entry-point group `gristmill.stages` of installed distributions (what an operator installed).
Specs and messages carry only these names, never import strings.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import EntryPoint, entry_points
from typing import Any, overload

from gristmill.errors import StageRegistryError, UnknownStageError
from gristmill.stages.base import ProcessingStage

__all__ = [
    "ENTRY_POINT_GROUP",
    "get_stage_class",
    "installed_stage_name",
    "register_stage",
    "registered_stage_names",
    "scratch_registrations",
    "stage_registry_name",
]

ENTRY_POINT_GROUP = "gristmill.stages"

StageClass = type[ProcessingStage[Any, Any]]

_BY_NAME: dict[str, StageClass] = {}
_BY_CLASS: dict[StageClass, str] = {}


@overload
def register_stage(cls: StageClass, *, name: str | None = None) -> StageClass: ...
@overload
def register_stage(
    cls: None = None, *, name: str | None = None
) -> Callable[[StageClass], StageClass]: ...
def register_stage(
    cls: StageClass | None = None, *, name: str | None = None
) -> StageClass | Callable[[StageClass], StageClass]:
    """Register a stage class under `name` (default: the class name). Usable as a decorator,
    bare or called: `@register_stage` or `@register_stage(name="MyFilter")`."""

    def add(stage_cls: StageClass) -> StageClass:
        if not (isinstance(stage_cls, type) and issubclass(stage_cls, ProcessingStage)):
            raise StageRegistryError(f"{stage_cls!r} is not a ProcessingStage subclass")
        key = name or stage_cls.__name__
        existing = _BY_NAME.get(key)
        if existing is not None and _path(existing) != _path(stage_cls):
            raise StageRegistryError(
                f"stage name '{key}' is already registered to {_path(existing)}; "
                f"register {_path(stage_cls)} under another name"
            )
        if existing is not None:  # the same class again (a reloaded module): keep the newest
            _BY_CLASS.pop(existing, None)
        _BY_NAME[key] = stage_cls
        _BY_CLASS[stage_cls] = key
        return stage_cls

    return add(cls) if cls is not None else add


def get_stage_class(name: str) -> StageClass:
    """The stage class registered as `name`, loading its entry point on first use."""
    if name in _BY_NAME:
        return _BY_NAME[name]
    points = _entry_points().get(name, [])
    if not points:
        known = ", ".join(registered_stage_names()) or "none"
        raise UnknownStageError(f"unknown stage '{name}' (registered stages: {known})")
    if len({p.value for p in points}) > 1:
        values = ", ".join(sorted(p.value for p in points))
        raise StageRegistryError(
            f"stage name '{name}' is claimed by several entry points: {values}"
        )
    try:
        loaded: StageClass = points[0].load()
    except Exception as exc:
        raise StageRegistryError(
            f"stage '{name}': cannot load entry point {points[0].value}: {exc}"
        ) from exc
    return register_stage(loaded, name=name)


def registered_stage_names() -> list[str]:
    """Every name a spec may use, sorted (entry points are listed without being loaded)."""
    return sorted(set(_BY_NAME) | set(_entry_points()))


def stage_registry_name(cls: type) -> str:
    """The name `cls` is registered under, for writing specs."""
    if cls in _BY_CLASS:
        return _BY_CLASS[cls]
    name = installed_stage_name(cls)
    if name is not None:
        return name
    raise StageRegistryError(
        f"stage class {_path(cls)} is not registered, so a spec cannot name it; "
        f"decorate it with @register_stage or expose it in the '{ENTRY_POINT_GROUP}' entry points"
    )


def installed_stage_name(cls: type) -> str | None:
    """The entry-point name of `cls` when an installed distribution exposes it (what every
    process of a deployment can load by name), else None."""
    path = _path(cls)
    for name, points in _entry_points().items():
        if any(p.value == path or _already_loaded(p) is cls for p in points):
            return name
    return None


@contextmanager
def scratch_registrations() -> Iterator[None]:
    """Run the block with an empty registry and restore this process's on leaving (code loaded
    by value registers its classes as it runs: its names must neither clash with this
    process's nor claim them)."""
    by_name, by_class = dict(_BY_NAME), dict(_BY_CLASS)
    _BY_NAME.clear()
    _BY_CLASS.clear()
    try:
        yield
    finally:
        _BY_NAME.clear()
        _BY_NAME.update(by_name)
        _BY_CLASS.clear()
        _BY_CLASS.update(by_class)


def _already_loaded(point: EntryPoint) -> object:
    """What an entry point names, if its module is imported already (importing is not free)."""
    module = sys.modules.get(point.module)
    return getattr(module, point.attr, None) if module is not None and point.attr else None


def _path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _entry_points() -> dict[str, list[EntryPoint]]:
    """The installed distributions' stage entry points, read once per import path (scanning
    every distribution's metadata takes milliseconds, and a spec names several stages)."""
    return _scan(tuple(sys.path))


@functools.lru_cache(maxsize=4)
def _scan(path: tuple[str, ...]) -> dict[str, list[EntryPoint]]:
    found: dict[str, list[EntryPoint]] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(point.name, []).append(point)
    return found

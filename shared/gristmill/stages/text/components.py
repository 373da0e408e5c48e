"""Named building blocks that stages hold (filters, modifiers) and their spec form.

A `ScoreFilter` holds a `DocumentFilter`; a `Modify` holds a `DocumentModifier`. In a pipeline
spec such an object is written as `{"filter": "WordCountFilter", "params": {...}}` (or
`"modifier"`), naming a class registered here when it was defined.
"""

from __future__ import annotations

import inspect
from typing import Any

from gristmill.errors import SpecError, UnknownStageError

__all__ = ["Component", "ComponentRegistry"]


class Component:
    """Something with constructor parameters kept as same-named attributes."""

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this object."""
        names = inspect.signature(type(self)).parameters
        return {n: getattr(self, n) for n in names if n not in ("args", "kwargs")}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"


class ComponentRegistry[T: Component]:
    """Classes of one kind by name, and the conversion of their objects to and from specs."""

    def __init__(self, kind: str, base: type[T]):
        self.kind = kind
        self.base = base
        self._classes: dict[str, type[T]] = {}

    def add(self, cls: type[T]) -> None:
        """Register a concrete, public class under its class name."""
        if not inspect.isabstract(cls) and not cls.__name__.startswith("_"):
            self._classes[cls.__name__] = cls

    def to_spec(self, obj: T) -> dict[str, Any]:
        """`{kind: class name, "params": {...}}`."""
        return {self.kind: type(obj).__name__, "params": obj.get_params()}

    def from_spec(self, spec: T | dict[str, Any]) -> T:
        """The object `spec` describes (or `spec` itself when it already is one)."""
        if isinstance(spec, self.base):
            return spec
        if not isinstance(spec, dict) or self.kind not in spec:
            raise SpecError(
                f"a {self.kind} spec is a mapping with '{self.kind}' and 'params', got {spec!r}"
            )
        unknown = set(spec) - {self.kind, "params"}
        if unknown:
            raise SpecError(
                f"a {self.kind} spec has '{self.kind}' and 'params' only, not {sorted(unknown)}"
            )
        cls = self._classes.get(spec[self.kind])
        if cls is None:
            known = ", ".join(sorted(self._classes))
            raise UnknownStageError(f"unknown {self.kind} '{spec[self.kind]}' (known: {known})")
        try:
            return cls(**spec.get("params", {}))
        except TypeError as exc:
            raise SpecError(f"{self.kind} '{spec[self.kind]}': {exc}") from exc

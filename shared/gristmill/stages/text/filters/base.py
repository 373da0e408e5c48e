"""`DocumentFilter`: scores a document and decides whether to keep it.

A filter defines the score of one document (`score_document`) and the rule on it
(`keep_document`); that pair is the definition, and the reference every faster path must match.
Filters with a column-wide path override `score_column` / `keep_column`, which see a whole Arrow
text column at once. Filters are plain objects, so one instance can serve many stages and
threads.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import pyarrow as pa

from gristmill.errors import SpecError, UnknownStageError

__all__ = ["DocumentFilter", "filter_from_spec", "filter_to_spec"]

_FILTERS: dict[str, type[DocumentFilter]] = {}


class DocumentFilter(ABC):
    """Decides, document by document, what a `ScoreFilter` keeps.

    `name` (the stage name a `ScoreFilter` takes) defaults to the class name; NeMo Curator's
    heuristic filters keep NeMo's names. For specs, keep each `__init__` parameter as an
    attribute of the same name.
    """

    _name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not inspect.isabstract(cls):
            _FILTERS[cls.__name__] = cls

    @property
    def name(self) -> str:
        """The filter's name, used as its stage's name and in drop records."""
        return self._name or type(self).__name__

    @abstractmethod
    def score_document(self, text: str) -> Any:
        """The score of one document."""

    @abstractmethod
    def keep_document(self, score: Any) -> bool:
        """Whether a document with this score is kept."""

    def score_column(self, texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Scores of a whole text column (default: `score_document` on each)."""
        return np.array([self.score_document(t) for t in texts.to_pylist()])

    def keep_column(self, scores: np.ndarray) -> np.ndarray:
        """Keep decisions for a column of scores (default: `keep_document` on each)."""
        return np.fromiter((self.keep_document(s) for s in scores), bool, len(scores))

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this filter."""
        names = [p for p in inspect.signature(type(self)).parameters if p not in ("args", "kwargs")]
        return {n: getattr(self, n) for n in names}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"


def filter_to_spec(filter_obj: DocumentFilter) -> dict[str, Any]:
    """A filter as spec data: `{"filter": class name, "params": {...}}`."""
    return {"filter": type(filter_obj).__name__, "params": filter_obj.get_params()}


def filter_from_spec(spec: DocumentFilter | dict[str, Any]) -> DocumentFilter:
    """A filter from `filter_to_spec`'s form (or the filter itself)."""
    if isinstance(spec, DocumentFilter):
        return spec
    if not isinstance(spec, dict) or "filter" not in spec:
        raise SpecError(f"a filter spec is a mapping with 'filter' and 'params', got {spec!r}")
    unknown = set(spec) - {"filter", "params"}
    if unknown:
        raise SpecError(f"a filter spec has 'filter' and 'params' only, not {sorted(unknown)}")
    cls = _FILTERS.get(spec["filter"])
    if cls is None:
        known = ", ".join(sorted(_FILTERS))
        raise UnknownStageError(f"unknown filter '{spec['filter']}' (known filters: {known})")
    try:
        return cls(**spec.get("params", {}))
    except TypeError as exc:
        raise SpecError(f"filter '{spec['filter']}': {exc}") from exc

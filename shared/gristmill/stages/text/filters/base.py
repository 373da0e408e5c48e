"""`DocumentFilter`: scores a document and decides whether to keep it.

A filter defines the score of one document (`score_document`) and the rule on it
(`keep_document`); that pair is the definition, and the reference every faster path must match.
Filters with a column-wide path override `score_column` / `keep_column`, which see a whole Arrow
text column at once. Filters are plain objects, so one instance can serve many stages and
threads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import pyarrow as pa

from gristmill.stages.text.components import Component, ComponentRegistry

__all__ = ["FILTERS", "DocumentFilter"]


class DocumentFilter(Component, ABC):
    """Decides, document by document, what a `ScoreFilter` keeps.

    `name` (the stage name a `ScoreFilter` takes) defaults to the class name; NeMo Curator's
    heuristic filters keep NeMo's names. For specs, keep each `__init__` parameter as an
    attribute of the same name.
    """

    _name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        FILTERS.add(cls)

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


FILTERS = ComponentRegistry("filter", DocumentFilter)  # type: ignore[type-abstract]

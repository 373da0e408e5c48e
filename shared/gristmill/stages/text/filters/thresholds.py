"""The three shapes of keep rule the heuristic filters use, each with its column-wide form."""

from __future__ import annotations

from typing import Any

import numpy as np

from gristmill.stages.text.filters.base import DocumentFilter

__all__ = ["AtLeast", "AtMost", "Between", "check_lang"]


def check_lang(lang: str) -> str:
    """Every language is split on whitespace here; refuse the ones that need a segmenter."""
    if lang.lower() in ("zh", "ja"):
        raise ValueError(
            f"lang={lang!r} needs a word segmenter (jieba, MeCab) that gristmill does not ship; "
            f"segment the text first, or use a filter that does not count words"
        )
    return lang


class AtMost(DocumentFilter):
    """Keep iff score <= `self.limit` (the limit is inclusive, as in NeMo Curator)."""

    limit: float

    def keep_document(self, score: Any) -> bool:
        """score <= limit."""
        return bool(score <= self.limit)

    def keep_column(self, scores: np.ndarray) -> np.ndarray:
        """scores <= limit, element-wise."""
        return np.asarray(scores) <= self.limit


class AtLeast(DocumentFilter):
    """Keep iff score >= `self.floor` (inclusive)."""

    floor: float

    def keep_document(self, score: Any) -> bool:
        """score >= floor."""
        return bool(score >= self.floor)

    def keep_column(self, scores: np.ndarray) -> np.ndarray:
        """scores >= floor, element-wise."""
        return np.asarray(scores) >= self.floor


class Between(DocumentFilter):
    """Keep iff `self.low` <= score <= `self.high` (both inclusive)."""

    low: float
    high: float

    def keep_document(self, score: Any) -> bool:
        """low <= score <= high."""
        return bool(self.low <= score <= self.high)

    def keep_column(self, scores: np.ndarray) -> np.ndarray:
        """low <= scores <= high, element-wise."""
        values = np.asarray(scores)
        return (values >= self.low) & (values <= self.high)

"""Filters on the characters of a document: ratios over its length in code points (raw,
unstripped text), URLs, substrings and boilerplate."""

from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gristmill.stages.text.filters import kernels
from gristmill.stages.text.filters.base import DocumentFilter
from gristmill.stages.text.filters.constants import (
    ALPHANUMERIC,
    DIGITS,
    PARENTHESES,
    POLICY_SUBSTRINGS,
    URL_PATTERN,
    WHITE_SPACE,
)
from gristmill.stages.text.filters.text_utils import paragraphs
from gristmill.stages.text.filters.thresholds import AtMost

__all__ = [
    "BoilerPlateStringFilter",
    "NonAlphaNumericFilter",
    "NumbersFilter",
    "ParenthesesFilter",
    "PornographicUrlsFilter",
    "SubstringFilter",
    "UrlsFilter",
    "WhiteSpaceFilter",
]


class _CharRatio(AtMost):
    """Score = characters in `chars` / all characters; an empty document scores 1.0."""

    chars: frozenset[str]
    count_others = False  # score the characters *not* in `chars` instead

    def score_document(self, text: str) -> float:
        """The ratio for one document."""
        if not text:
            return 1.0
        hits = sum(1 for c in text if c in self.chars)
        return (len(text) - hits if self.count_others else hits) / len(text)

    def score_column(self, texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """The ratios of a column, in C."""
        if not kernels.available():
            return super().score_column(texts)
        totals, hits = kernels.char_counts(texts, self.chars)
        numerators = totals - hits if self.count_others else hits
        ratios = np.ones(len(totals), np.float64)
        np.divide(numerators, totals, out=ratios, where=totals > 0)
        return ratios


class NonAlphaNumericFilter(_CharRatio):
    """Keeps documents where at most `max_non_alpha_numeric_to_text_ratio` of the characters are
    not "alphanumeric" in NeMo Curator's sense: ASCII letters and digits, newline, ? ! , . —
    so spaces and non-ASCII letters count against a document."""

    _name = "alpha_numeric"
    chars = ALPHANUMERIC
    count_others = True

    def __init__(self, max_non_alpha_numeric_to_text_ratio: float = 0.25):
        self.max_non_alpha_numeric_to_text_ratio = max_non_alpha_numeric_to_text_ratio
        self.limit = max_non_alpha_numeric_to_text_ratio


class NumbersFilter(_CharRatio):
    """Keeps documents where at most `max_number_to_text_ratio` of the characters are ASCII
    digits."""

    _name = "numbers_ratio"
    chars = DIGITS

    def __init__(self, max_number_to_text_ratio: float = 0.15):
        self.max_number_to_text_ratio = max_number_to_text_ratio
        self.limit = max_number_to_text_ratio


class WhiteSpaceFilter(_CharRatio):
    """Keeps documents where at most `max_white_space_ratio` of the characters are tab, newline,
    carriage return, backspace or space (other Unicode spaces do not count)."""

    _name = "white_space"
    chars = WHITE_SPACE

    def __init__(self, max_white_space_ratio: float = 0.25):
        self.max_white_space_ratio = max_white_space_ratio
        self.limit = max_white_space_ratio


class ParenthesesFilter(_CharRatio):
    """Keeps documents where at most `max_parentheses_ratio` of the characters are one of
    { } ⟨ ⟩ [ ] ( )."""

    _name = "parentheses_ratio"
    chars = PARENTHESES

    def __init__(self, max_parentheses_ratio: float = 0.1):
        self.max_parentheses_ratio = max_parentheses_ratio
        self.limit = max_parentheses_ratio


def _url_pattern(url_regex: str | None) -> re.Pattern[str]:
    return re.compile(url_regex) if url_regex is not None else URL_PATTERN


class UrlsFilter(AtMost):
    """Keeps documents where URLs make up at most `max_url_to_text_ratio` of the characters.

    The default URL pattern is NeMo Curator's, which stops at the first '/', ':' or '?' after
    the host; pass `url_regex` for another. An empty document scores 1.0.
    """

    _name = "urls_ratio"

    def __init__(self, max_url_to_text_ratio: float = 0.2, url_regex: str | None = None):
        self.max_url_to_text_ratio, self.url_regex = max_url_to_text_ratio, url_regex
        self.limit = max_url_to_text_ratio
        self._pattern = _url_pattern(url_regex)

    def score_document(self, text: str) -> float:
        """URL characters / all characters."""
        if not text:
            return 1.0
        return sum(len(m) for m in self._pattern.findall(text)) / len(text)


class PornographicUrlsFilter(DocumentFilter):
    """Drops documents with a URL containing "porn" (case-sensitive; with the default pattern
    only the scheme and host are looked at). Score 1 for such a document, else 0."""

    def __init__(self, url_regex: str | None = None):
        self.url_regex = url_regex
        self._pattern = _url_pattern(url_regex)

    def score_document(self, text: str) -> int:
        """1 if a URL contains "porn"."""
        return int(any("porn" in url for url in self._pattern.findall(text)))

    def keep_document(self, score: Any) -> bool:
        """Keep unless the score is 1."""
        return bool(score != 1)


class SubstringFilter(DocumentFilter):
    """Keeps documents that have `substring` at `position`: "prefix", "suffix" or "any"
    (case-sensitive, raw text). Score 1 when they do, else 0."""

    def __init__(self, substring: str, position: Literal["prefix", "suffix", "any"]):
        if position not in ("prefix", "suffix", "any"):
            raise ValueError(f"position must be 'prefix', 'suffix' or 'any', got {position!r}")
        self.substring, self.position = substring, position

    def score_document(self, text: str) -> int:
        """1 if the substring is where it should be."""
        if self.position == "prefix":
            return int(text.startswith(self.substring))
        if self.position == "suffix":
            return int(text.endswith(self.substring))
        return int(self.substring in text)

    def score_column(self, texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """The same, for a whole column (Arrow kernels)."""
        if self.position == "prefix":
            found = pc.starts_with(texts, self.substring)
        elif self.position == "suffix":
            found = pc.ends_with(texts, self.substring)
        else:
            found = pc.match_substring(texts, self.substring)
        return np.asarray(found.to_numpy(zero_copy_only=False), np.int64)

    def keep_document(self, score: Any) -> bool:
        """Keep iff the score is 1."""
        return bool(score == 1)

    def keep_column(self, scores: np.ndarray) -> np.ndarray:
        """scores == 1."""
        keep: np.ndarray = np.asarray(scores) == 1
        return keep


class BoilerPlateStringFilter(AtMost):
    """Keeps documents where at most `max_boilerplate_string_ratio` of the paragraphs mention a
    policy or cookie notice ("terms of use", "privacy policy", ...); "lorem ipsum" anywhere
    scores 1.0. `remove_if_at_top_or_bottom` is accepted for compatibility and, as in NeMo
    Curator, used only by the modifier of the same idea."""

    _name = "boilerplate_string_ratio"

    def __init__(
        self, remove_if_at_top_or_bottom: bool = True, max_boilerplate_string_ratio: float = 0.4
    ):
        self.remove_if_at_top_or_bottom = remove_if_at_top_or_bottom
        self.max_boilerplate_string_ratio = max_boilerplate_string_ratio
        self.limit = max_boilerplate_string_ratio

    def score_document(self, text: str) -> float:
        """Boilerplate paragraphs / paragraphs."""
        found = paragraphs(text)
        boilerplate = 0
        for paragraph in found:
            lowered = paragraph.strip().lower()
            if "lorem ipsum" in lowered:
                return 1.0
            if any(p in lowered for p in POLICY_SUBSTRINGS):
                boilerplate += 1
        return boilerplate / len(found)

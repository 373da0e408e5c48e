"""Filters on repetition: repeated lines and paragraphs, and repeating n-grams of words.

The line and paragraph filters score the *unique* share (keep iff score >= threshold, although
NeMo Curator names the parameters max_...). Where NeMo Curator divides by zero on a blank
document, these score 0.0, which rejects it, as its newest paragraph filter already does.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from gristmill.stages.text.filters import kernels
from gristmill.stages.text.filters.text_utils import lines, ngrams, paragraphs, words
from gristmill.stages.text.filters.thresholds import AtLeast, AtMost, check_lang

__all__ = [
    "RepeatedLinesByCharFilter",
    "RepeatedLinesFilter",
    "RepeatedParagraphsByCharFilter",
    "RepeatedParagraphsFilter",
    "RepeatingDuplicateNGramsFilter",
    "RepeatingTopNGramsFilter",
]


def _unique_share(parts: list[str]) -> float:
    return len(set(parts)) / len(parts) if parts else 0.0


def _unique_char_share(parts: list[str]) -> float:
    total = sum(len(p) for p in parts)
    return sum(len(p) for p in set(parts)) / total if total else 0.0


class RepeatedLinesFilter(AtLeast):
    """Keeps documents where at least `max_repeated_line_fraction` of the lines are distinct."""

    _name = "repeated_lines"

    def __init__(self, max_repeated_line_fraction: float = 0.7):
        self.max_repeated_line_fraction = max_repeated_line_fraction
        self.floor = max_repeated_line_fraction

    def score_document(self, text: str) -> float:
        """Distinct lines / lines."""
        return _unique_share(lines(text))


class RepeatedParagraphsFilter(AtLeast):
    """Keeps documents where at least `max_repeated_paragraphs_ratio` of the paragraphs are
    distinct."""

    _name = "repeated_paragraphs"

    def __init__(self, max_repeated_paragraphs_ratio: float = 0.7):
        self.max_repeated_paragraphs_ratio = max_repeated_paragraphs_ratio
        self.floor = max_repeated_paragraphs_ratio

    def score_document(self, text: str) -> float:
        """Distinct paragraphs / paragraphs."""
        return _unique_share(paragraphs(text)) if text.strip() else 0.0


class RepeatedLinesByCharFilter(AtLeast):
    """Keeps documents where distinct lines hold at least `max_repeated_lines_char_ratio` of the
    characters of all lines."""

    _name = "repeated_lines_char"

    def __init__(self, max_repeated_lines_char_ratio: float = 0.8):
        self.max_repeated_lines_char_ratio = max_repeated_lines_char_ratio
        self.floor = max_repeated_lines_char_ratio

    def score_document(self, text: str) -> float:
        """Characters of distinct lines / characters of all lines."""
        return _unique_char_share(lines(text))


class RepeatedParagraphsByCharFilter(AtLeast):
    """Keeps documents where distinct paragraphs hold at least
    `max_repeated_paragraphs_char_ratio` of the characters of all paragraphs."""

    _name = "repeated_paragraphs_char"

    def __init__(self, max_repeated_paragraphs_char_ratio: float = 0.8):
        self.max_repeated_paragraphs_char_ratio = max_repeated_paragraphs_char_ratio
        self.floor = max_repeated_paragraphs_char_ratio

    def score_document(self, text: str) -> float:
        """Characters of distinct paragraphs / characters of all paragraphs."""
        return _unique_char_share(paragraphs(text))


class RepeatingTopNGramsFilter(AtMost):
    """Keeps documents whose most frequent word n-gram covers at most
    `max_repeating_ngram_ratio` of the characters.

    As in NeMo Curator, the score is the share of the document's characters removed by deleting
    every non-overlapping occurrence of the top n-gram, its words joined by single spaces, from
    the raw text. Where NeMo picks among equally frequent n-grams in set order (which changes
    from process to process), the n-gram that occurs first in the document wins here, so every
    run scores alike. Fewer than n words scores 1.0.
    """

    def __init__(self, n: int = 2, max_repeating_ngram_ratio: float = 0.2, lang: str = "en"):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n, self.max_repeating_ngram_ratio, self.lang = (
            n,
            max_repeating_ngram_ratio,
            check_lang(lang),
        )
        self.limit = max_repeating_ngram_ratio
        self._name = f"repeating_top_{n}grams"

    def score_document(self, text: str) -> float:
        """Characters of the top n-gram's occurrences / characters."""
        grams = ngrams(words(text), self.n)
        if not grams:
            return 1.0
        counts: dict[tuple[str, ...], int] = {}
        for gram in grams:  # dicts keep first-insertion order: ties go to the earliest n-gram
            counts[gram] = counts.get(gram, 0) + 1
        top = max(counts, key=counts.__getitem__)
        joined = " ".join(top)
        return (len(text) - len(text.replace(joined, ""))) / len(text)

    def score_column(self, texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """The scores of a column, in C."""
        if not kernels.available():
            return super().score_column(texts)
        return kernels.ngram_scores(texts, self.n, duplicate=False)


class RepeatingDuplicateNGramsFilter(AtMost):
    """Keeps documents where repeated word n-grams cover at most
    `max_repeating_duplicate_ngram_ratio` of the characters.

    NeMo Curator's measure: walking the n-grams in order, every n-gram seen before adds the
    length of its words not already counted by the previous repeated n-gram, plus the spaces
    between them (one per word boundary); first occurrences add nothing. Divided by the
    document's length. Fewer than n words scores 1.0.
    """

    def __init__(
        self, n: int = 2, max_repeating_duplicate_ngram_ratio: float = 0.2, lang: str = "en"
    ):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.n = n
        self.max_repeating_duplicate_ngram_ratio = max_repeating_duplicate_ngram_ratio
        self.lang = check_lang(lang)
        self.limit = max_repeating_duplicate_ngram_ratio
        self._name = f"repeating_dup_{n}gram"

    def score_document(self, text: str) -> float:
        """Characters covered by repeated n-grams / characters."""
        grams = ngrams(words(text), self.n)
        if not grams:
            return 1.0
        seen: set[tuple[str, ...]] = set()
        covered = 0
        overlap = 0  # words of this n-gram already counted by the previous repeated one
        for gram in grams:
            if gram in seen:
                covered += sum(len(w) for w in gram[overlap:]) + min(self.n - overlap, self.n - 1)
                overlap = self.n
            seen.add(gram)
            overlap = max(overlap - 1, 0)
        return covered / len(text)

    def score_column(self, texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """The scores of a column, in C."""
        if not kernels.available():
            return super().score_column(texts)
        return kernels.ngram_scores(texts, self.n, duplicate=True)

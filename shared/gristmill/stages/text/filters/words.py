"""Filters on the words of a document (`str.split()` words; lengths in code points)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from gristmill.stages.text.filters import kernels
from gristmill.stages.text.filters.constants import (
    ALPHA,
    COMMON_ENGLISH_WORDS,
    ELLIPSIS_MARKS,
    HASH_RUNS,
)
from gristmill.stages.text.filters.text_utils import words
from gristmill.stages.text.filters.thresholds import AtLeast, AtMost, Between, check_lang

__all__ = [
    "CommonEnglishWordsFilter",
    "LongWordFilter",
    "MeanWordLengthFilter",
    "SymbolsToWordsFilter",
    "WordCountFilter",
    "WordsWithoutAlphabetsFilter",
]


class WordCountFilter(Between):
    """Keeps documents of `min_words` to `max_words` words (inclusive). Score: the word count."""

    _name = "word_count"

    def __init__(self, min_words: int = 50, max_words: int = 100000, lang: str = "en"):
        self.min_words, self.max_words, self.lang = min_words, max_words, check_lang(lang)
        self.low, self.high = min_words, max_words

    def score_document(self, text: str) -> int:
        """The number of words."""
        return len(words(text))

    def score_column(self, texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Word counts of a column, in C."""
        if not kernels.available():
            return super().score_column(texts)
        return kernels.word_stats(texts)[0]


class MeanWordLengthFilter(Between):
    """Keeps documents whose mean word length is in [min, max]. A document without words
    scores 0.0."""

    _name = "mean_word_length"

    def __init__(
        self, min_mean_word_length: int = 3, max_mean_word_length: int = 10, lang: str = "en"
    ):
        self.min_mean_word_length = min_mean_word_length
        self.max_mean_word_length = max_mean_word_length
        self.lang = check_lang(lang)
        self.low, self.high = min_mean_word_length, max_mean_word_length

    def score_document(self, text: str) -> float:
        """Mean length of the words."""
        found = words(text)
        return sum(len(w) for w in found) / len(found) if found else 0.0

    def score_column(self, texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Mean word lengths of a column, in C."""
        if not kernels.available():
            return super().score_column(texts)
        counts, total, _ = kernels.word_stats(texts)
        means = np.zeros(len(counts), np.float64)
        np.divide(total, counts, out=means, where=counts > 0)
        return means


class LongWordFilter(AtMost):
    """Keeps documents whose longest word has at most `max_word_length` code points. A document
    without words scores `max_word_length + 1` (rejected)."""

    _name = "max_word_length"

    def __init__(self, max_word_length: int = 1000, lang: str = "en"):
        self.max_word_length, self.lang = max_word_length, check_lang(lang)
        self.limit = max_word_length

    def score_document(self, text: str) -> int:
        """The longest word's length."""
        found = words(text)
        return max(len(w) for w in found) if found else self.max_word_length + 1

    def score_column(self, texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Longest word lengths of a column, in C."""
        if not kernels.available():
            return super().score_column(texts)
        counts, _, longest = kernels.word_stats(texts)
        return np.where(counts > 0, longest, self.max_word_length + 1)


class SymbolsToWordsFilter(AtMost):
    """Keeps documents where at most `max_symbol_to_word_ratio` of the words are symbols.

    A word is a symbol when it is exactly an ellipsis mark, or when it has more runs of '#' than
    half its length (NeMo Curator's definition: '#' and '#a#' are symbols, '##' is not). A
    document without words scores 1.0.
    """

    _name = "symbol_to_word"

    def __init__(self, max_symbol_to_word_ratio: float = 0.1, lang: str = "en"):
        self.max_symbol_to_word_ratio, self.lang = max_symbol_to_word_ratio, check_lang(lang)
        self.limit = max_symbol_to_word_ratio

    def score_document(self, text: str) -> float:
        """Symbol words / words."""
        found = words(text)
        if not found:
            return 1.0
        symbols = sum(
            1 for w in found if w in ELLIPSIS_MARKS or len(HASH_RUNS.findall(w)) / len(w) > 0.5
        )
        return symbols / len(found)


class CommonEnglishWordsFilter(AtLeast):
    """Keeps documents with at least `min_num_common_words` of: the, be, to, of, and, that,
    have, with (exact, case-sensitive words). With `stop_at_false` the count stops at the
    minimum, which changes the score but never the decision."""

    _name = "common_english_words"

    def __init__(self, min_num_common_words: int = 2, stop_at_false: bool = True):
        self.min_num_common_words, self.stop_at_false = min_num_common_words, stop_at_false
        self.floor = min_num_common_words

    def score_document(self, text: str) -> int:
        """How many common words (capped at the minimum with `stop_at_false`)."""
        count = 0
        for word in words(text):
            if word in COMMON_ENGLISH_WORDS:
                count += 1
                if self.stop_at_false and count >= self.min_num_common_words:
                    break
        return count


class WordsWithoutAlphabetsFilter(AtLeast):
    """Keeps documents where at least `min_words_with_alphabets` of the words contain a letter
    (Unicode Alphabetic). The score is that fraction; a document without words scores 0.0."""

    _name = "words_without_alphabets"

    def __init__(self, min_words_with_alphabets: float = 0.8, lang: str = "en"):
        self.min_words_with_alphabets, self.lang = min_words_with_alphabets, check_lang(lang)
        self.floor = min_words_with_alphabets

    def score_document(self, text: str) -> float:
        """Words with a letter / words."""
        found = words(text)
        if not found:
            return 0.0
        return sum(1 for w in found if ALPHA.search(w)) / len(found)

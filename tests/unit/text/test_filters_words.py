"""Word filters: hand-computed scores, inclusive thresholds, blank and non-Latin text, long
documents, and the column (C kernel) path agreeing with the document path."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pytest

from gristmill.stages.text.filters import (
    CommonEnglishWordsFilter,
    DocumentFilter,
    LongWordFilter,
    MeanWordLengthFilter,
    SymbolsToWordsFilter,
    WordCountFilter,
    WordsWithoutAlphabetsFilter,
)

from column_checks import SHAPES, check_column_matches_documents, check_shape_scores_alike

BLANKS = ["", "   ", " \t\n\r ", "\u00a0\u3000\u2003\x1c\x85"]  # str.split() sees no word in any

DOCS = [
    "ab cd",
    "",
    " ",
    "\t\n",
    "a\u00a0b",
    "x\u3000y\u3000z",
    "p\u2003q",
    "s\x1ct\x1fu",
    "tab\tsep\tvalues",
    "😀 😀😀 🎉",
    "中文 字符 测试",
    "Привет мир",
    "مرحبا بالعالم",
    "the cat and the dog",
    "The cat, the. AND",
    "# ## ### #a# ...",
    "… [...] (...) […] -» read more",
    "123 456 a1",
    "Ⅻ ª ٣ \u0301",
    "e\u0301 é",
    "a\u200bb",
    "  leading and trailing  ",
    "\u00a0",
    "x" * 1500,
    "word " * 60,
    "with that have to of be",
    "line\nbreaks\r\nand\rcr",
    "\x85next\u2028line\u2029para",
    "zero\u180ewidth mongolian",
    "ab cd " * 50,
]

FILTERS: dict[str, Callable[[], DocumentFilter]] = {
    "word_count": lambda: WordCountFilter(min_words=3, max_words=6),
    "mean_word_length": MeanWordLengthFilter,
    "max_word_length": lambda: LongWordFilter(max_word_length=5),
    "symbol_to_word": SymbolsToWordsFilter,
    "common_english_words": CommonEnglishWordsFilter,
    "common_english_words_no_stop": lambda: CommonEnglishWordsFilter(stop_at_false=False),
    "words_without_alphabets": WordsWithoutAlphabetsFilter,
}


# ---- names, defaults, languages -------------------------------------------------------------


def test_names_and_default_parameters_follow_nemo_curator() -> None:
    assert WordCountFilter().name == "word_count"
    assert WordCountFilter().get_params() == {"min_words": 50, "max_words": 100000, "lang": "en"}
    assert MeanWordLengthFilter().name == "mean_word_length"
    assert MeanWordLengthFilter().get_params() == {
        "min_mean_word_length": 3,
        "max_mean_word_length": 10,
        "lang": "en",
    }
    assert LongWordFilter().name == "max_word_length"
    assert LongWordFilter().get_params() == {"max_word_length": 1000, "lang": "en"}
    assert SymbolsToWordsFilter().name == "symbol_to_word"
    assert SymbolsToWordsFilter().get_params() == {"max_symbol_to_word_ratio": 0.1, "lang": "en"}
    assert CommonEnglishWordsFilter().name == "common_english_words"
    assert CommonEnglishWordsFilter().get_params() == {
        "min_num_common_words": 2,
        "stop_at_false": True,
    }
    assert WordsWithoutAlphabetsFilter().name == "words_without_alphabets"
    assert WordsWithoutAlphabetsFilter().get_params() == {
        "min_words_with_alphabets": 0.8,
        "lang": "en",
    }


LANG_FILTERS = [
    WordCountFilter,
    MeanWordLengthFilter,
    LongWordFilter,
    SymbolsToWordsFilter,
    WordsWithoutAlphabetsFilter,
]


@pytest.mark.parametrize("cls", LANG_FILTERS)
@pytest.mark.parametrize("lang", ["zh", "ja", "ZH", "Ja"])
def test_languages_that_need_a_segmenter_are_refused(cls: type, lang: str) -> None:
    with pytest.raises(ValueError, match="segmenter"):
        cls(lang=lang)


@pytest.mark.parametrize(
    ("cls", "score"),
    [
        (WordCountFilter, 3),
        (MeanWordLengthFilter, 11 / 3),  # (2 + 4 + 5) / 3
        (LongWordFilter, 5),
        (SymbolsToWordsFilter, 0.0),
        (WordsWithoutAlphabetsFilter, 1.0),
    ],
)
def test_other_languages_split_on_whitespace_like_english(cls: type, score: float) -> None:
    assert cls(lang="fr").lang == "fr"
    assert cls(lang="fr").score_document("un deux trois") == score


# ---- WordCountFilter ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("ab cd", 2),
        ("  the quick\tbrown\nfox  ", 4),
        ("a\u00a0b\u3000c\u2003d\x1ce", 5),  # every str.isspace() character separates words
        ("a\u200bb zero\u180ewidth", 2),  # U+200B and U+180E are not whitespace
        ("你好 世界", 2),
        ("中文没有空格", 1),
        ("Привет мир", 2),
        ("مرحبا بالعالم", 2),
        ("😀 😀😀", 2),
        ("the, The the.", 3),
        *[(blank, 0) for blank in BLANKS],
    ],
)
def test_word_count_counts_whitespace_separated_words(text: str, words: int) -> None:
    assert WordCountFilter().score_document(text) == words


def test_word_count_keeps_both_bounds_inclusively() -> None:
    f = WordCountFilter(min_words=2, max_words=4)
    scores = [f.score_document(t) for t in ["a", "a b", "a b c", "a b c d", "a b c d e"]]
    assert scores == [1, 2, 3, 4, 5]
    assert [f.keep_document(s) for s in scores] == [False, True, True, True, False]
    assert f.keep_document(f.score_document("")) is False


def test_word_count_of_a_200000_word_document() -> None:
    assert WordCountFilter().score_document("word " * 200_000) == 200_000
    f = WordCountFilter()  # max_words=100000, inclusive
    assert f.keep_document(f.score_document("w " * 100_000)) is True
    assert f.keep_document(f.score_document("w " * 100_001)) is False


# ---- MeanWordLengthFilter -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mean"),
    [
        ("ab cde", 2.5),  # (2 + 3) / 2
        ("hello world", 5.0),
        ("a\u00a0bb\u3000ccc", 2.0),  # (1 + 2 + 3) / 3
        ("你好 世界", 2.0),  # code points, not bytes: (2 + 2) / 2
        ("Привет мир", 4.5),  # (6 + 3) / 2
        ("مرحبا بالعالم", 6.0),  # (5 + 7) / 2
        ("😀😀 😀", 1.5),  # (2 + 1) / 2
        ("e\u0301", 2.0),  # a decomposed é is two code points
        *[(blank, 0.0) for blank in BLANKS],
    ],
)
def test_mean_word_length_is_the_mean_code_point_length(text: str, mean: float) -> None:
    assert MeanWordLengthFilter().score_document(text) == mean


def test_mean_word_length_keeps_the_range_3_to_10_inclusively() -> None:
    f = MeanWordLengthFilter()
    texts = ["ab abc", "ab abcd", "abc", "abcdefghij", "abcdefghij abcdefghijk", "abcdefghijk"]
    scores = [f.score_document(t) for t in texts]
    assert scores == [2.5, 3.0, 3.0, 10.0, 10.5, 11.0]
    assert [f.keep_document(s) for s in scores] == [False, True, True, True, False, False]
    assert f.keep_document(f.score_document("")) is False  # 0.0 < 3


def test_mean_word_length_of_a_200000_word_document() -> None:
    assert MeanWordLengthFilter().score_document("abcd " * 200_000) == 4.0
    assert MeanWordLengthFilter().score_document("ab abcd " * 100_000) == 3.0  # (2 + 4) / 2


# ---- LongWordFilter -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "longest"),
    [
        ("a abc ab", 3),
        ("你好世界 中", 4),
        ("Привет мир", 6),
        ("مرحبا بالعالم", 7),
        ("😀😀😀 x", 3),
        ("a\u00a0bcdefg", 6),  # NBSP splits: "a", "bcdefg"
        *[(blank, 1001) for blank in BLANKS],  # no word: max_word_length + 1
    ],
)
def test_long_word_scores_the_longest_word(text: str, longest: int) -> None:
    assert LongWordFilter().score_document(text) == longest


def test_long_word_keeps_words_up_to_the_limit_inclusively() -> None:
    f = LongWordFilter(max_word_length=3)
    assert [f.score_document(t) for t in ["ab", "abc", "abcd"]] == [2, 3, 4]
    assert [f.keep_document(s) for s in [2, 3, 4]] == [True, True, False]
    assert f.score_document("") == 4  # 3 + 1, rejected
    assert f.keep_document(f.score_document("  ")) is False
    assert LongWordFilter().keep_document(LongWordFilter().score_document("x" * 1000)) is True
    assert LongWordFilter().keep_document(LongWordFilter().score_document("x" * 1001)) is False


def test_long_word_of_a_200000_word_document() -> None:
    assert LongWordFilter().score_document("ab " * 199_999 + "abcdef") == 6


# ---- SymbolsToWordsFilter -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ratio"),
    [
        ("hello # world ## ###", 1 / 5),  # only "#": "##" has 1 run / 2 chars, not > 0.5
        ("#a# ... … [...] (...) […] -» x", 7 / 8),  # "#a#": 2 runs / 3 chars
        ("a... read more read more..", 0.0),  # not whole-word ellipses
        ("你好 世界 …", 1 / 3),
        ("# 😀", 1 / 2),
        ("Привет мир", 0.0),
        *[(blank, 1.0) for blank in BLANKS],
    ],
)
def test_symbols_to_words_is_the_share_of_symbol_words(text: str, ratio: float) -> None:
    assert SymbolsToWordsFilter().score_document(text) == ratio


def test_symbols_to_words_keeps_up_to_a_tenth_inclusively() -> None:
    f = SymbolsToWordsFilter()
    below, at, above = "# " + "w " * 10, "# " + "w " * 9, "# " + "w " * 8
    assert [f.score_document(t) for t in (below, at, above)] == [1 / 11, 0.1, 1 / 9]
    assert [f.keep_document(f.score_document(t)) for t in (below, at, above)] == [
        True,
        True,
        False,
    ]
    assert f.keep_document(f.score_document("")) is False  # 1.0


def test_symbols_to_words_of_a_200000_word_document() -> None:
    text = "a b c d e f g h i # " * 20_000  # 200000 words, 20000 of them "#"
    assert SymbolsToWordsFilter().score_document(text) == 0.1
    assert SymbolsToWordsFilter().keep_document(0.1) is True


# ---- CommonEnglishWordsFilter ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "capped", "full"),
    [
        ("the cat and the dog", 2, 3),
        ("to be or not to be", 2, 4),
        ("The cat, the. AND", 0, 0),  # case-sensitive, punctuation attached
        ("the, and", 1, 1),
        ("the 中文 of", 2, 2),
        ("thе of", 1, 1),  # the first "thе" has a Cyrillic е (U+0435)
        ("的 了 是 и и", 0, 0),
        ("with\u00a0that", 2, 2),
        *[(blank, 0, 0) for blank in BLANKS],
    ],
)
def test_common_english_words_counts_exact_words(text: str, capped: int, full: int) -> None:
    assert CommonEnglishWordsFilter().score_document(text) == capped
    assert CommonEnglishWordsFilter(stop_at_false=False).score_document(text) == full


def test_common_english_words_keeps_at_least_the_minimum_inclusively() -> None:
    f = CommonEnglishWordsFilter()
    assert [f.score_document(t) for t in ["a cat", "the cat", "the and"]] == [0, 1, 2]
    assert [f.keep_document(s) for s in [0, 1, 2, 3]] == [False, False, True, True]
    three = CommonEnglishWordsFilter(min_num_common_words=3)
    assert three.score_document("to be or not to be") == 3  # stops at the minimum
    assert three.keep_document(2) is False
    assert three.keep_document(3) is True


def test_common_english_words_of_a_200000_word_document() -> None:
    text = "the of " * 100_000
    assert CommonEnglishWordsFilter().score_document(text) == 2
    assert CommonEnglishWordsFilter(stop_at_false=False).score_document(text) == 200_000


# ---- WordsWithoutAlphabetsFilter ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ratio"),
    [
        ("abc 123 a1 !!", 2 / 4),  # abc, a1 have letters
        ("中文 Привет مرحبا 123", 3 / 4),
        ("😀 😀", 0.0),  # emoji are not alphabetic
        ("Ⅻ ª ـ", 1.0),  # letter number, ordinal indicator, tatweel are Alphabetic
        ("٣ ² \u0301", 0.0),  # digits and a combining accent are not
        *[(blank, 0.0) for blank in BLANKS],
    ],
)
def test_words_with_alphabets_is_the_share_of_words_with_a_letter(text: str, ratio: float) -> None:
    assert WordsWithoutAlphabetsFilter().score_document(text) == ratio


def test_words_with_alphabets_keeps_at_least_the_minimum_inclusively() -> None:
    f = WordsWithoutAlphabetsFilter()
    texts = ["a b c 1", "a b c d 1", "a b c d e 1"]
    assert [f.score_document(t) for t in texts] == [0.75, 0.8, 5 / 6]
    assert [f.keep_document(f.score_document(t)) for t in texts] == [False, True, True]
    assert f.keep_document(f.score_document("")) is False


def test_words_with_alphabets_of_a_200000_word_document() -> None:
    assert WordsWithoutAlphabetsFilter().score_document("abc 123 " * 100_000) == 0.5


# ---- the column path ------------------------------------------------------------------------


@pytest.mark.parametrize("key", FILTERS)
def test_column_scores_equal_document_scores_with_and_without_c_kernels(
    key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    check_column_matches_documents(FILTERS[key](), DOCS, monkeypatch)


@pytest.mark.parametrize("kernels_on", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("key", FILTERS)
def test_chunked_sliced_and_large_string_columns_score_alike(
    key: str, shape: str, kernels_on: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    check_shape_scores_alike(FILTERS[key](), DOCS, shape, kernels_on, monkeypatch)


def test_an_empty_column_scores_to_an_empty_array() -> None:
    assert WordCountFilter().score_column(pa.array([], pa.string())).tolist() == []


def test_a_column_large_enough_to_be_split_across_threads_keeps_document_order() -> None:
    counts = [100_000 + i for i in range(40)]  # 40 documents of ~300 KB: several threads
    column = pa.array(["ab " * c for c in counts])
    assert WordCountFilter().score_column(column).tolist() == counts
    assert MeanWordLengthFilter().score_column(column).tolist() == [2.0] * 40

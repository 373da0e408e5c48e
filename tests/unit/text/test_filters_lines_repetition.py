"""Line, paragraph and n-gram filters: hand-computed scores, inclusive thresholds, blank and
non-Latin text, long documents, the top n-gram tie rule and raw-substring scoring, and the
column (C kernel) path agreeing with the document path in every process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pyarrow as pa
import pytest

from gristmill.stages.text.filters import (
    BulletsFilter,
    DocumentFilter,
    EllipsisFilter,
    PunctuationFilter,
    RepeatedLinesByCharFilter,
    RepeatedLinesFilter,
    RepeatedParagraphsByCharFilter,
    RepeatedParagraphsFilter,
    RepeatingDuplicateNGramsFilter,
    RepeatingTopNGramsFilter,
)

from column_checks import SHAPES, check_column_matches_documents, check_shape_scores_alike, keeps

DOCS = [
    "a b a b c",
    "",
    " ",
    "\t\n",
    "a\u00a0b a\u00a0b",
    "x\u3000y\u3000x\u3000y",
    "p\u2003q p q",
    "s\x1ct s t",
    "😀 😀 😀 🎉",
    "你好 世界 你好 世界",
    "Привет мир Привет мир",
    "مرحبا بالعالم مرحبا",
    "• one\n  ◦ two\nthree\n\n",
    "wait...\nmore…\nRead more\nplain",
    "Hello.\nWhy?\nno end\n",
    "p1\n\np2\n\np1",
    "a\n\n\n\nb\n\n\n\nc",
    "xx yy p q p q xx yy",
    "c d aa bb c d aa bb",
    "he is he is the island",
    "a\nb a\nb",
    "a  b a b",
    "x y z x y z x y z",
    "a b c a b c",
    "e\u0301 e\u0301 e\u0301",
    "\x85a\u2028b a b",
    "word " * 80,
    "ab cd\r\nab cd\r\n",
    "\u00a0",
    "aaaa\nbb\naaaa",
]

FILTERS: dict[str, Callable[[], DocumentFilter]] = {
    "bullet_ratio": BulletsFilter,
    "punctuation": PunctuationFilter,
    "ellipsis": EllipsisFilter,
    "repeated_lines": RepeatedLinesFilter,
    "repeated_paragraphs": RepeatedParagraphsFilter,
    "repeated_lines_char": RepeatedLinesByCharFilter,
    "repeated_paragraphs_char": RepeatedParagraphsByCharFilter,
    **{f"top_{n}": (lambda n=n: RepeatingTopNGramsFilter(n=n)) for n in (1, 2, 3, 5)},
    **{f"dup_{n}": (lambda n=n: RepeatingDuplicateNGramsFilter(n=n)) for n in (1, 2, 3, 5)},
}


BLANK_LINES = ["", "   ", " \n\t\n \r\n", "\u3000\n\u00a0"]  # no non-blank line


def _scores(f: DocumentFilter, texts: list[str]) -> list[object]:
    return [f.score_document(t) for t in texts]


# ---- names and defaults ---------------------------------------------------------------------


def test_names_and_default_parameters_follow_nemo_curator() -> None:
    expected = {
        BulletsFilter(): ("bullet_ratio", {"max_bullet_lines_ratio": 0.9}),
        PunctuationFilter(): ("punctuation", {"max_num_sentences_without_endmark_ratio": 0.85}),
        EllipsisFilter(): ("ellipsis", {"max_num_lines_ending_with_ellipsis_ratio": 0.3}),
        RepeatedLinesFilter(): ("repeated_lines", {"max_repeated_line_fraction": 0.7}),
        RepeatedParagraphsFilter(): (
            "repeated_paragraphs",
            {"max_repeated_paragraphs_ratio": 0.7},
        ),
        RepeatedLinesByCharFilter(): (
            "repeated_lines_char",
            {"max_repeated_lines_char_ratio": 0.8},
        ),
        RepeatedParagraphsByCharFilter(): (
            "repeated_paragraphs_char",
            {"max_repeated_paragraphs_char_ratio": 0.8},
        ),
        RepeatingTopNGramsFilter(): (
            "repeating_top_2grams",
            {"n": 2, "max_repeating_ngram_ratio": 0.2, "lang": "en"},
        ),
        RepeatingDuplicateNGramsFilter(): (
            "repeating_dup_2gram",
            {"n": 2, "max_repeating_duplicate_ngram_ratio": 0.2, "lang": "en"},
        ),
    }
    for f, (name, params) in expected.items():
        assert (f.name, f.get_params()) == (name, params)
    assert RepeatingTopNGramsFilter(n=3).name == "repeating_top_3grams"
    assert RepeatingDuplicateNGramsFilter(n=5).name == "repeating_dup_5gram"


@pytest.mark.parametrize("cls", [RepeatingTopNGramsFilter, RepeatingDuplicateNGramsFilter])
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"lang": "zh"}, "segmenter"), ({"lang": "ja"}, "segmenter"), ({"n": 0}, "n must be >= 1")],
)
def test_ngram_filters_refuse_segmenter_languages_and_n_below_one(
    cls: type, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


# ---- BulletsFilter, PunctuationFilter, EllipsisFilter ---------------------------------------


def test_bullets_is_the_share_of_lines_starting_with_a_bullet() -> None:
    f = BulletsFilter()
    assert f.score_document("• one\n  ◦ two\nthree\n\n") == 2 / 3  # blank lines are no lines
    assert f.score_document("- dash\n* star\n· middot") == 0.0
    assert f.score_document("• 中文\n● Привет\nمرحبا") == 2 / 3
    assert _scores(f, BLANK_LINES) == [1.0] * 4  # no lines: rejected


def test_bullets_keeps_up_to_090_inclusively() -> None:
    texts = ["• x\n" * k + "x\n" * (10 - k) for k in (8, 9, 10)]  # 8/10, 9/10, 10/10
    assert _scores(BulletsFilter(), texts) == [0.8, 0.9, 1.0]
    assert keeps(BulletsFilter(), texts) == [True, True, False]
    assert keeps(BulletsFilter(), [""]) == [False]


def test_punctuation_is_the_share_of_lines_without_an_end_mark() -> None:
    f = PunctuationFilter()
    assert f.score_document('Hello.\nWhy?\nno end\nquote\'  \nsaid "x"') == 1 / 5
    assert f.score_document("你好。\nПривет!\nمرحبا؟") == 2 / 3  # 。 and ؟ are no end marks
    assert f.score_document("wait…") == 1.0
    assert _scores(f, BLANK_LINES) == [1.0] * 4


def test_punctuation_keeps_up_to_085_inclusively() -> None:
    texts = ["x\n" * k + "x.\n" * (20 - k) for k in (16, 17, 18)]  # 16/20, 17/20, 18/20
    assert _scores(PunctuationFilter(), texts) == [0.8, 0.85, 0.9]
    assert keeps(PunctuationFilter(), texts) == [True, True, False]


def test_ellipsis_is_the_share_of_lines_ending_in_an_ellipsis() -> None:
    f = EllipsisFilter()
    assert f.score_document("wait...\nmore…\nRead more\nplain\n[...]") == 4 / 5
    assert f.score_document("next -»\n(...)\n[…]\nread more..") == 1.0
    assert f.score_document("続く…\nПродолжение...\n中文") == 2 / 3
    assert _scores(f, BLANK_LINES) == [1.0] * 4


def test_ellipsis_keeps_up_to_030_inclusively() -> None:
    texts = ["x...\n" * k + "x\n" * (10 - k) for k in (2, 3, 4)]  # 2/10, 3/10, 4/10
    assert _scores(EllipsisFilter(), texts) == [0.2, 0.3, 0.4]
    assert keeps(EllipsisFilter(), texts) == [True, True, False]


# ---- repeated lines and paragraphs ----------------------------------------------------------


def test_repeated_lines_is_the_share_of_distinct_lines() -> None:
    f = RepeatedLinesFilter()
    assert f.score_document("a\nb\na\nc") == 3 / 4
    assert f.score_document("abc\nabc \nabc") == 2 / 3  # lines are compared unstripped
    assert f.score_document("中文\n中文\nПривет") == 2 / 3
    assert _scores(f, BLANK_LINES) == [0.0] * 4  # NeMo divides by zero; gristmill rejects


def test_repeated_paragraphs_is_the_share_of_distinct_paragraphs() -> None:
    f = RepeatedParagraphsFilter()
    assert f.score_document("p1\n\np2\n\np1") == 2 / 3
    assert f.score_document("a\n\n\nb") == 1.0  # "a", "\nb"
    assert f.score_document("a\n\n\n\nb\n\n\n\nc") == 4 / 5  # "a", "", "b", "", "c"
    assert f.score_document("中文\n\n中文") == 1 / 2
    assert _scores(f, [*BLANK_LINES, "\n\n"]) == [0.0] * 5


def test_repeated_lines_by_char_is_the_share_of_characters_in_distinct_lines() -> None:
    f = RepeatedLinesByCharFilter()
    assert f.score_document("aaaa\nbb\naaaa") == 6 / 10  # (4 + 2) / (4 + 2 + 4)
    assert f.score_document("ab \r\nab") == 1.0  # "ab \r" and "ab" differ
    assert f.score_document("中文\n中文\n😀") == 3 / 5
    assert _scores(f, BLANK_LINES) == [0.0] * 4


def test_repeated_paragraphs_by_char_is_the_share_of_characters_in_distinct_paragraphs() -> None:
    f = RepeatedParagraphsByCharFilter()
    assert f.score_document("aaaa\n\nbb\n\naaaa") == 6 / 10
    assert f.score_document("Привет\n\nПривет\n\n中") == 7 / 13  # (6 + 1) / (6 + 6 + 1)
    assert _scores(f, ["", "\n\n", "\n\n\n\n"]) == [0.0] * 3  # no characters at all
    assert f.score_document("   ") == 1.0  # one paragraph of three spaces, as in NeMo


@pytest.mark.parametrize(
    ("f", "text", "score", "keep"),
    [
        (RepeatedLinesFilter(), "a\nb\nc\nd\ne\nf\na\na\na\na", 0.6, False),  # 6/10
        (RepeatedLinesFilter(), "a\nb\nc\nd\ne\nf\ng\na\na\na", 0.7, True),  # 7/10
        (RepeatedLinesFilter(), "a\nb\nc\nd\ne\nf\ng\nh\na\na", 0.8, True),  # 8/10
        (RepeatedParagraphsFilter(), "a\n\nb\n\nc\n\nd\n\ne\n\nf\n\na\n\na\n\na\n\na", 0.6, False),
        (RepeatedParagraphsFilter(), "a\n\nb\n\nc\n\nd\n\ne\n\nf\n\ng\n\na\n\na\n\na", 0.7, True),
        (RepeatedParagraphsFilter(), "a\n\nb\n\nc\n\nd\n\ne\n\nf\n\ng\n\nh\n\na\n\na", 0.8, True),
        (RepeatedLinesByCharFilter(), "aaaaaa\nb\nb\nb\nb", 0.7, False),  # (6 + 1) / 10
        (RepeatedLinesByCharFilter(), "aaaaaaa\nb\nb\nb", 0.8, True),  # (7 + 1) / 10
        (RepeatedLinesByCharFilter(), "aaaaaaaa\nb\nb", 0.9, True),  # (8 + 1) / 10
        (RepeatedParagraphsByCharFilter(), "aaaaaa\n\nb\n\nb\n\nb\n\nb", 0.7, False),
        (RepeatedParagraphsByCharFilter(), "aaaaaaa\n\nb\n\nb\n\nb", 0.8, True),
        (RepeatedParagraphsByCharFilter(), "aaaaaaaa\n\nb\n\nb", 0.9, True),
    ],
)
def test_repetition_filters_keep_at_least_the_threshold_inclusively(
    f: DocumentFilter, text: str, score: float, keep: bool
) -> None:
    assert f.score_document(text) == score
    assert f.keep_document(score) is keep


# ---- RepeatingTopNGramsFilter ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text", "score"),
    [
        (2, "a b a b c", 6 / 9),  # top "a b" occurs twice: 6 of 9 characters
        (2, "a\nb a\nb", 0.0),  # top "a b" never occurs with a single space
        (2, "a b\na\nb", 3 / 7),  # only the first "a b" is a substring
        (2, "a  b a b", 3 / 8),  # a double space breaks the first occurrence
        (2, "he is he is the island", 15 / 22),  # "t[he is]land" counts too
        (2, "a a a", 3 / 5),  # non-overlapping: one "a a"
        (2, "你好 世界 你好 世界", 10 / 11),
        (2, "😀 😀 😀", 3 / 5),  # code points
        (1, "да да нет", 4 / 9),
        (3, "a b", 1.0),  # fewer than n words
        (2, "", 1.0),
        (2, "   ", 1.0),
        (2, "\u3000\u00a0", 1.0),
    ],
)
def test_top_ngram_score_is_the_share_removed_with_its_occurrences(
    n: int, text: str, score: float
) -> None:
    assert RepeatingTopNGramsFilter(n=n).score_document(text) == score


@pytest.mark.parametrize(
    ("text", "score"),
    [
        # (xx,yy), (p,q) twice each; (p,q) reaches two first but (xx,yy) occurs first.
        # "xx yy" twice: 10/19; "p q" would give 6/19.
        ("xx yy p q p q xx yy", 10 / 19),
        # (c,d), (d,aa), (aa,bb) twice each: "c d" wins, 6/19; "aa bb" would give 10/19.
        ("c d aa bb c d aa bb", 6 / 19),
        ("q w e r t y", 3 / 11),  # all once: "q w"
    ],
)
def test_top_ngram_ties_go_to_the_ngram_occurring_first(text: str, score: float) -> None:
    f = RepeatingTopNGramsFilter(n=2)
    assert f.score_document(text) == score
    assert f.score_column(pa.array([text])).tolist() == [score]


def test_top_ngram_keeps_up_to_a_fifth_inclusively() -> None:
    texts = ["a b cc dd eeeeee", "a b cc dd eeeee", "a b cc dd eeee"]  # "a b": 3/16, 3/15, 3/14
    assert _scores(RepeatingTopNGramsFilter(), texts) == [3 / 16, 0.2, 3 / 14]
    assert keeps(RepeatingTopNGramsFilter(), texts) == [True, True, False]
    assert keeps(RepeatingTopNGramsFilter(), ["", "one"]) == [False, False]


def test_top_ngram_of_a_200000_word_document() -> None:
    # 100000 x "a b " : the 100000 occurrences of "a b" hold 300000 of 400000 characters
    text = "a b " * 100_000
    assert RepeatingTopNGramsFilter(n=2).score_document(text) == 0.75
    assert RepeatingTopNGramsFilter(n=2).score_column(pa.array([text])).tolist() == [0.75]


def test_top_ngram_scores_are_the_same_in_every_process() -> None:
    script = (
        "import json, pyarrow as pa\n"
        "from gristmill.stages.text.filters import RepeatingTopNGramsFilter, kernels\n"
        "docs = ['xx yy p q p q xx yy', 'c d aa bb c d aa bb', 'q w e r t y']\n"
        "f = RepeatingTopNGramsFilter(n=2)\n"
        "out = [f.score_document(d) for d in docs] + f.score_column(pa.array(docs)).tolist()\n"
        "kernels.available = lambda: False\n"
        "out += f.score_column(pa.array(docs)).tolist()\n"
        "print(json.dumps(out))\n"
    )
    for seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        assert json.loads(done.stdout) == [10 / 19, 6 / 19, 3 / 11] * 3


# ---- RepeatingDuplicateNGramsFilter ---------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text", "score"),
    [
        (2, "a b c a b c", 5 / 11),  # second "a b": 1+1+1; then "b c" adds "c" + 1 space
        (3, "x y z x y z x y z", 11 / 17),
        (2, "aa bb cc aa bb", 5 / 14),  # the repeated "aa bb": 2 + 2 + 1 space
        (2, "a b a b a b", 7 / 11),  # 3, then 2 per overlapping repeat: 3 + 2 + 2
        (2, "the cat the dog the cat", 7 / 23),  # only the last "the cat" repeats
        (1, "a a a", 2 / 5),  # one character per repeated word, no spaces for n = 1
        (1, " a a ", 1 / 5),  # the raw length counts the outer spaces
        (2, "你好 世界 你好 世界", 5 / 11),
        (1, "😀 😀", 1 / 3),
        (2, "a", 1.0),  # fewer than n words
        (2, "", 1.0),
        (2, "   ", 1.0),
        (2, "\u3000\u00a0", 1.0),
    ],
)
def test_duplicate_ngram_score_is_the_share_covered_by_repeats(
    n: int, text: str, score: float
) -> None:
    assert RepeatingDuplicateNGramsFilter(n=n).score_document(text) == score


def test_duplicate_ngram_keeps_up_to_a_fifth_inclusively() -> None:
    texts = ["a b a b cc ddddd", "a b a b cc dddd", "a b a b cc ddd"]  # 3/16, 3/15, 3/14
    assert _scores(RepeatingDuplicateNGramsFilter(), texts) == [3 / 16, 0.2, 3 / 14]
    assert keeps(RepeatingDuplicateNGramsFilter(), texts) == [True, True, False]
    assert keeps(RepeatingDuplicateNGramsFilter(), ["", "one"]) == [False, False]


def test_duplicate_ngram_of_a_200000_word_document() -> None:
    # k = 100000 x "a b ": 2k - 3 repeated bigrams, the first adds 3, each next one 2:
    # 3 + 2 * (2k - 4) = 4k - 5 = 399995 of 4k = 400000 characters
    text = "a b " * 100_000
    assert RepeatingDuplicateNGramsFilter(n=2).score_document(text) == 399_995 / 400_000
    column = RepeatingDuplicateNGramsFilter(n=2).score_column(pa.array([text]))
    assert column.tolist() == [399_995 / 400_000]


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


def test_a_column_large_enough_to_be_split_across_threads_keeps_document_order() -> None:
    ks = [60_000 + i for i in range(40)]  # 40 x ~240 KB: several threads
    column = pa.array(["a b " * k for k in ks])
    dup = RepeatingDuplicateNGramsFilter(n=2).score_column(column).tolist()
    assert dup == [(4 * k - 5) / (4 * k) for k in ks]
    assert RepeatingTopNGramsFilter(n=2).score_column(column).tolist() == [0.75] * 40

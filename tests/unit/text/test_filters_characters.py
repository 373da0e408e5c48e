"""Character filters: hand-computed ratios over the raw text's code points, inclusive
thresholds, blank and non-Latin text, URLs, substrings, boilerplate, and the column path
agreeing with the document path."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pytest

from gristmill.stages.text.filters import (
    BoilerPlateStringFilter,
    DocumentFilter,
    NonAlphaNumericFilter,
    NumbersFilter,
    ParenthesesFilter,
    PornographicUrlsFilter,
    SubstringFilter,
    UrlsFilter,
    WhiteSpaceFilter,
)

from column_checks import SHAPES, check_column_matches_documents, check_shape_scores_alike, keeps

DOCS = [
    "ab, cd!",
    "",
    " ",
    "\t\n",
    "a\u00a0b",
    "x\u3000y\u2003z",
    "s\x1ct\bu\r",
    "😀 (😀) 🎉",
    "中文（注）[注]",
    "Привет, мир 2024",
    "مرحبا ١٢٣ 123",
    "see https://www.example.com/path?q=1",
    "http://pornhub.com/x and http://example.com/porn",
    "HTTP://UPPER.COM",
    "{a} ⟨b⟩ [c] (d)",
    "٣²① 0123456789",
    "Privacy Policy\n\nbody text\n\nterms of use",
    "lorem ipsum dolor",
    "\n\n\n\n",
    "abcabc",
    "cab",
    "ab",
    "a\n\nb\n\nc\n\nd\n\nThis site uses cookies",
    "e\u0301\u0301",
    "\x85\u2028\u2029",
    "x" * 2000,
    "1 2 3 " * 40,
    "http://a.b:8080 http://c.d",
    "tab\tsep\tvalues\n",
    "\u00a0",
]

FILTERS: dict[str, Callable[[], DocumentFilter]] = {
    "alpha_numeric": NonAlphaNumericFilter,
    "numbers_ratio": NumbersFilter,
    "urls_ratio": UrlsFilter,
    "urls_ratio_custom": lambda: UrlsFilter(url_regex=r"https?://\S+"),
    "white_space": WhiteSpaceFilter,
    "parentheses_ratio": ParenthesesFilter,
    "pornographic_urls": PornographicUrlsFilter,
    "prefix": lambda: SubstringFilter("ab", "prefix"),
    "suffix": lambda: SubstringFilter("ab", "suffix"),
    "any": lambda: SubstringFilter("😀", "any"),
    "boilerplate_string_ratio": BoilerPlateStringFilter,
}


# ---- names and defaults ---------------------------------------------------------------------


def test_names_and_default_parameters_follow_nemo_curator() -> None:
    expected = {
        NonAlphaNumericFilter(): ("alpha_numeric", {"max_non_alpha_numeric_to_text_ratio": 0.25}),
        NumbersFilter(): ("numbers_ratio", {"max_number_to_text_ratio": 0.15}),
        UrlsFilter(): ("urls_ratio", {"max_url_to_text_ratio": 0.2, "url_regex": None}),
        WhiteSpaceFilter(): ("white_space", {"max_white_space_ratio": 0.25}),
        ParenthesesFilter(): ("parentheses_ratio", {"max_parentheses_ratio": 0.1}),
        PornographicUrlsFilter(): ("PornographicUrlsFilter", {"url_regex": None}),
        SubstringFilter("x", "any"): ("SubstringFilter", {"substring": "x", "position": "any"}),
        BoilerPlateStringFilter(): (
            "boilerplate_string_ratio",
            {"remove_if_at_top_or_bottom": True, "max_boilerplate_string_ratio": 0.4},
        ),
    }
    for f, (name, params) in expected.items():
        assert (f.name, f.get_params()) == (name, params)


# ---- NonAlphaNumericFilter ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ratio"),
    [
        ("ab, cd!", 1 / 7),  # only the space: , and ! count as "alphanumeric"
        ("a-b c", 2 / 5),
        ("a\nb", 0.0),  # LF is in the class
        ("a\rb", 1 / 3),  # CR is not
        ("中文", 1.0),
        ("Привет", 1.0),
        ("مرحبا", 1.0),
        ("a😀", 1 / 2),
        ("é", 1.0),
        ("", 1.0),
        ("   ", 1.0),
        ("\n\n", 0.0),
        ("\u3000", 1.0),
    ],
)
def test_non_alpha_numeric_is_the_share_outside_ascii_alnum_and_lf_punct(
    text: str, ratio: float
) -> None:
    assert NonAlphaNumericFilter().score_document(text) == ratio


def test_non_alpha_numeric_keeps_up_to_a_quarter_inclusively() -> None:
    texts = ["abc d", "ab c", "a b"]  # 1/5, 1/4, 1/3
    assert [NonAlphaNumericFilter().score_document(t) for t in texts] == [0.2, 0.25, 1 / 3]
    assert keeps(NonAlphaNumericFilter(), texts) == [True, True, False]
    assert keeps(NonAlphaNumericFilter(), ["", "  "]) == [False, False]


# ---- NumbersFilter --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ratio"),
    [
        ("abc 123", 3 / 7),
        ("٣²①", 0.0),  # ASCII digits only
        ("1٣", 1 / 2),
        ("中文12", 2 / 4),
        ("Привет 2024", 4 / 11),
        ("😀1", 1 / 2),
        ("", 1.0),
        ("   ", 0.0),
        ("\u3000\t", 0.0),
    ],
)
def test_numbers_is_the_share_of_ascii_digits(text: str, ratio: float) -> None:
    assert NumbersFilter().score_document(text) == ratio


def test_numbers_keeps_up_to_015_inclusively() -> None:
    texts = ["12" + "a" * 18, "123" + "a" * 17, "1234" + "a" * 16]  # 2/20, 3/20, 4/20
    assert [NumbersFilter().score_document(t) for t in texts] == [0.1, 0.15, 0.2]
    assert keeps(NumbersFilter(), texts) == [True, True, False]
    assert keeps(NumbersFilter(), ["", " "]) == [False, True]


# ---- UrlsFilter -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ratio"),
    [
        ("see https://www.example.com/path?q=1", 23 / 36),  # the match stops at "/"
        ("http://a.b:8080", 10 / 15),  # and at ":"
        ("http://a.b http://c.d", 20 / 21),
        ("HTTP://X.COM", 0.0),  # case-sensitive
        ("見て http://example.com/日本", 18 / 24),
        ("http://例え.jp", 0.0),  # a non-ASCII host is no URL for this pattern
        ("", 1.0),
        ("   ", 0.0),
    ],
)
def test_urls_is_the_share_of_url_characters(text: str, ratio: float) -> None:
    assert UrlsFilter().score_document(text) == ratio


def test_urls_with_a_custom_regex() -> None:
    f = UrlsFilter(url_regex=r"https?://\S+")
    assert f.score_document("see https://www.example.com/path?q=1") == 32 / 36
    assert f.url_regex == r"https?://\S+"


def test_urls_keeps_up_to_a_fifth_inclusively() -> None:
    texts = ["http://ab " + "x" * n for n in (36, 35, 34)]  # 9/46, 9/45, 9/44
    assert [UrlsFilter().score_document(t) for t in texts] == [9 / 46, 0.2, 9 / 44]
    assert keeps(UrlsFilter(), texts) == [True, True, False]
    assert keeps(UrlsFilter(), ["", " "]) == [False, True]


# ---- WhiteSpaceFilter -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ratio"),
    [
        ("a b\tc\nd\re\bf", 5 / 11),  # space, tab, LF, CR, backspace
        ("a\u00a0b\u3000c\u2003d\x0be\x0cf", 0.0),  # other whitespace does not count
        ("你好 世界", 1 / 5),
        ("😀 😀", 1 / 3),
        ("", 1.0),
        ("   ", 1.0),
        ("\u3000\u3000", 0.0),
    ],
)
def test_white_space_is_the_share_of_tab_lf_cr_backspace_space(text: str, ratio: float) -> None:
    assert WhiteSpaceFilter().score_document(text) == ratio


def test_white_space_keeps_up_to_a_quarter_inclusively() -> None:
    texts = ["abc d", "ab c", "a b"]
    assert [WhiteSpaceFilter().score_document(t) for t in texts] == [0.2, 0.25, 1 / 3]
    assert keeps(WhiteSpaceFilter(), texts) == [True, True, False]
    assert keeps(WhiteSpaceFilter(), ["", "\u3000"]) == [False, True]


# ---- ParenthesesFilter ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ratio"),
    [
        ("(a) [b] {c} ⟨d⟩", 8 / 15),
        ("<a>（b）【c】", 0.0),  # angle brackets and full-width brackets do not count
        ("中(文)", 2 / 4),
        ("Привет (мир)", 2 / 12),
        ("", 1.0),
        ("  ", 0.0),
    ],
)
def test_parentheses_is_the_share_of_bracket_characters(text: str, ratio: float) -> None:
    assert ParenthesesFilter().score_document(text) == ratio


def test_parentheses_keeps_up_to_a_tenth_inclusively() -> None:
    texts = ["(" + "a" * 10, "(" + "a" * 9, "(" + "a" * 8]  # 1/11, 1/10, 1/9
    assert [ParenthesesFilter().score_document(t) for t in texts] == [1 / 11, 0.1, 1 / 9]
    assert keeps(ParenthesesFilter(), texts) == [True, True, False]
    assert keeps(ParenthesesFilter(), ["", " "]) == [False, True]


# ---- PornographicUrlsFilter -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("visit http://pornhub.com/x", 1),
        ("https://www.free-porn.example", 1),
        ("http://example.com/porn", 0),  # the path is not part of the match
        ("porn without a url", 0),
        ("http://PORN.com", 0),  # case-sensitive
        ("見て http://porn.jp/日本", 1),
        ("порно http://example.ru", 0),
        ("", 0),
        ("   ", 0),
    ],
)
def test_pornographic_urls_scores_one_for_porn_in_a_url(text: str, score: int) -> None:
    assert PornographicUrlsFilter().score_document(text) == score


def test_pornographic_urls_keeps_score_zero_and_drops_score_one() -> None:
    f = PornographicUrlsFilter()
    assert [f.keep_document(0), f.keep_document(1)] == [True, False]
    assert keeps(f, ["", "http://porn.com"]) == [True, False]
    custom = PornographicUrlsFilter(url_regex=r"https?://\S+")
    assert custom.score_document("http://example.com/porn") == 1


# ---- SubstringFilter ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("substring", "position", "text", "score"),
    [
        ("ab", "prefix", "abc", 1),
        ("ab", "prefix", "cab", 0),
        ("ab", "prefix", "Abc", 0),  # case-sensitive
        ("ab", "prefix", " abc", 0),  # raw text, not stripped
        ("ab", "suffix", "cab", 1),
        ("ab", "suffix", "cab\n", 0),
        ("ab", "any", "xaby", 1),
        ("ab", "any", "a b", 0),
        ("中文", "prefix", "中文字", 1),
        ("😀", "suffix", "hi😀", 1),
        ("мир", "any", "Привет мир!", 1),
        ("ab", "prefix", "", 0),
        ("ab", "any", "   ", 0),
        ("", "any", "", 1),
    ],
)
def test_substring_scores_one_when_the_substring_is_in_place(
    substring: str, position: str, text: str, score: int
) -> None:
    assert SubstringFilter(substring, position).score_document(text) == score  # type: ignore[arg-type]


def test_substring_keeps_score_one_only_and_refuses_unknown_positions() -> None:
    f = SubstringFilter("ab", "prefix")
    assert [f.keep_document(1), f.keep_document(0)] == [True, False]
    with pytest.raises(ValueError, match="position must be 'prefix', 'suffix' or 'any'"):
        SubstringFilter("ab", "middle")  # type: ignore[arg-type]


# ---- BoilerPlateStringFilter ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ratio"),
    [
        ("Intro\n\nRead our Privacy Policy\n\nBody\n\nTerms of Use apply\n\nEnd", 2 / 5),
        ("Privacy policy\n\nbody\n\ncookie policy", 2 / 3),
        ("This website uses cookies", 1.0),
        ("a\n\nb\n\nLorem Ipsum dolor", 1.0),  # lorem ipsum anywhere
        ("privacy policy and terms of use", 1.0),  # a paragraph counts once
        ("隐私政策\n\nPRIVACY POLICY", 1 / 2),
        ("Политика конфиденциальности", 0.0),
        ("", 0.0),  # one empty paragraph
        ("   ", 0.0),
        ("\n\n\n", 0.0),
    ],
)
def test_boilerplate_is_the_share_of_policy_paragraphs(text: str, ratio: float) -> None:
    assert BoilerPlateStringFilter().score_document(text) == ratio
    assert BoilerPlateStringFilter(remove_if_at_top_or_bottom=False).score_document(text) == ratio


def test_boilerplate_keeps_up_to_040_inclusively() -> None:
    texts = [
        "terms of use\n\nb\n\nc",  # 1/3
        "terms of use\n\nb\n\nc\n\nd\n\nprivacy policy",  # 2/5
        "terms of use\n\nb",  # 1/2
    ]
    assert [BoilerPlateStringFilter().score_document(t) for t in texts] == [1 / 3, 0.4, 0.5]
    assert keeps(BoilerPlateStringFilter(), texts) == [True, True, False]
    assert keeps(BoilerPlateStringFilter(), ["", "  "]) == [True, True]


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
    sizes = [300_000 + i for i in range(40)]  # ~12 MB of text: several threads
    column = pa.array(["7" * 3 + "a" * (s - 3) for s in sizes])
    assert NumbersFilter().score_column(column).tolist() == [3 / s for s in sizes]

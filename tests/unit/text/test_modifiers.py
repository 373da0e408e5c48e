"""Modifiers and the Modify stage: exact outputs for each modifier, and the stage's plumbing."""

from __future__ import annotations

import pyarrow as pa
import pytest

from gristmill import DocumentBatch, Pipeline
from gristmill.errors import UnknownStageError
from gristmill.stages.text.modifiers import (
    BoilerPlateStringModifier,
    LineRemover,
    MarkdownRemover,
    Modify,
    NewlineNormalizer,
    QuotationRemover,
    Slicer,
    UnicodeReformatter,
    UrlRemover,
)


def _run(stage: Modify, texts: list[str], **columns: list[object]) -> pa.Table:
    batch = DocumentBatch(task_id="t", data=pa.table({"text": texts, **columns}))
    [out] = Pipeline("m", [stage]).run(initial_tasks=[batch])
    return out.to_pyarrow()


def test_unicode_reformatter_repairs_mojibake_but_keeps_curly_quotes_and_ligatures() -> None:
    fixer = UnicodeReformatter()
    assert (
        fixer.modify_document("The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.")
        == "The Mona Lisa doesn’t have eyebrows."
    )
    assert fixer.modify_document("“ﬁne”") == "“ﬁne”"  # no uncurling, no ligature fixing
    assert UnicodeReformatter(uncurl_quotes=True).modify_document("“fine”") == '"fine"'


def test_newline_normalizer_shortens_runs_of_three_or_more() -> None:
    normalizer = NewlineNormalizer()
    text = "a\n\nb\n\n\n\nc\r\n\r\n\r\nd\n\n\n"
    assert normalizer.modify_document(text) == "a\n\nb\n\nc\r\n\r\nd\n\n"
    assert normalizer.modify_column(pa.array([text, ""])).to_pylist() == [
        "a\n\nb\n\nc\r\n\r\nd\n\n",
        "",
    ]


def test_url_remover_deletes_urls_and_keeps_the_spaces_around_them() -> None:
    text = "see https://example.com/a?b=1 and WWW.Example.org, or HTTP://x.y"
    assert UrlRemover().modify_document(text) == "see  and  or "


def test_line_remover_deletes_only_exactly_equal_lines() -> None:
    text = "Share this\nkeep me\nShare this \nShare this"
    assert LineRemover(["Share this"]).modify_document(text) == "keep me\nShare this "


def test_markdown_remover_keeps_words_of_emphasis_and_links() -> None:
    text = "**bold** and *it* in snake_case\n__under__ _u_ [the text](https://x.org)"
    assert MarkdownRemover().modify_document(text) == "bold and it in snake_case\nunder u the text"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"quoted line"', "quoted line"),
        ('""', '""'),  # two characters or fewer: left alone
        ('"a"', "a"),
        ('"first"\nsecond"', '"first"\nsecond"'),  # first line ends with a quote: not a wrapper
        ('"first\nsecond"', "first\nsecond"),
        ("no quotes", "no quotes"),
    ],
)
def test_quotation_remover(text: str, expected: str) -> None:
    assert QuotationRemover().modify_document(text) == expected


def test_slicer_by_positions_and_by_markers() -> None:
    text = "  header BEGIN body text END footer  "
    assert Slicer(left=2, right=8).modify_document(text) == "header"
    assert Slicer(left="BEGIN", right="END").modify_document(text) == "BEGIN body text END"
    assert (
        Slicer(left="BEGIN", right="END", include_left=False, include_right=False).modify_document(
            text
        )
        == "body text"
    )
    assert Slicer(left="MISSING").modify_document(text) == ""
    assert Slicer(strip=False).modify_document(text) == text


def test_boilerplate_modifier_removes_header_and_footer_blocks_only() -> None:
    modifier = BoilerPlateStringModifier()
    page = "We use cookies on this site.\n\nThe article.\n\nMore article.\n\nPrivacy Policy | Terms of Use"
    assert modifier.modify_document(page) == "The article.\n\nMore article."
    middle = "The article.\n\nRead our privacy policy.\n\nMore article."
    assert modifier.modify_document(middle) == middle
    assert modifier.modify_document("Lorem ipsum dolor.\n\nText.") == ""
    assert BoilerPlateStringModifier(remove_if_at_top_or_bottom=False).modify_document(page) == ""
    assert modifier.modify_document("Terms of use.") == "Terms of use."  # every paragraph: kept


def test_modify_rewrites_in_place_or_into_a_new_column_and_removes_nothing() -> None:
    texts = ["visit https://a.b now", "plain", ""]
    in_place = _run(Modify(UrlRemover()), texts)
    assert in_place.column("text").to_pylist() == ["visit  now", "plain", ""]
    copied = _run(Modify(UrlRemover(), output_fields="clean"), texts)
    assert copied.column("text").to_pylist() == texts
    assert copied.column("clean").to_pylist() == ["visit  now", "plain", ""]


def test_modify_chains_modifiers_functions_and_spec_data_in_order() -> None:
    stage = Modify(
        [UrlRemover(), str.upper, {"modifier": "Slicer", "params": {"left": 0, "right": 5}}]
    )
    assert stage.name == "modifier_chain_of_UrlRemover_upper_Slicer"
    assert _run(stage, ["go https://x.y there"]).column("text").to_pylist() == ["GO  T"]


def test_modify_spec_round_trip_and_unknown_modifier() -> None:
    pipeline = Pipeline("m", [Modify([NewlineNormalizer(), LineRemover(["x"])])])
    spec = pipeline.to_spec()
    assert spec["stages"][0]["params"]["modifier_fn"] == [
        {"modifier": "NewlineNormalizer", "params": {}},
        {"modifier": "LineRemover", "params": {"patterns": ["x"]}},
    ]
    assert Pipeline.from_spec(spec).to_spec() == spec
    with pytest.raises(UnknownStageError, match=r"unknown modifier 'Nope'"):
        Modify({"modifier": "Nope", "params": {}})

"""ScoreFilter, Score and Filter run through a Pipeline: what is kept, in which order, the
score columns, the drop records, errors, and the spec form."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from gristmill import DocumentBatch, Pipeline
from gristmill.errors import StageError, TaskInputError, UnknownStageError
from gristmill.stages import register_stage, registered_stage_names
from gristmill.stages.text.filters import (
    BulletsFilter,
    DocumentFilter,
    Filter,
    NumbersFilter,
    PornographicUrlsFilter,
    RepeatingTopNGramsFilter,
    Score,
    ScoreFilter,
    UrlsFilter,
    WordCountFilter,
    kernels,
)
from gristmill.tasks import drop_count, iter_drops

# word counts:        1      3            2         5              2
TEXTS = ["one", "one two three", "four five", "a b c d e", "six seven"]
IDS = ["d0", "d1", "d2", "d3", "d4"]
WC_PARAMS = {"min_words": 2, "max_words": 4, "lang": "en"}


def _table(**extra: list[Any]) -> pa.Table:
    return pa.table({"id": IDS, "text": TEXTS, **extra})


def _run(stages: list[Any], table: pa.Table, task_id: str = "batch") -> DocumentBatch:
    outputs = Pipeline("p", stages).run(initial_tasks=[DocumentBatch(task_id=task_id, data=table)])
    assert len(outputs) == 1
    out = outputs[0]
    assert isinstance(out, DocumentBatch)
    return out


def _drops(task: DocumentBatch) -> list[dict[str, Any]]:
    return list(iter_drops(task._metadata.get("drops", [])))


def _ids(task: DocumentBatch) -> list[str]:
    return task.to_pyarrow().column("id").to_pylist()


# ---- ScoreFilter ----------------------------------------------------------------------------


def test_score_filter_keeps_exactly_the_accepted_documents_in_order() -> None:
    out = _run([ScoreFilter(WordCountFilter(min_words=2, max_words=4))], _table())
    assert _ids(out) == ["d1", "d2", "d4"]
    assert out.to_pyarrow().column("text").to_pylist() == [
        "one two three",
        "four five",
        "six seven",
    ]
    assert out.to_pyarrow().column_names == ["id", "text"]


def test_score_filter_with_invert_keeps_exactly_the_rejected_documents() -> None:
    out = _run([ScoreFilter(WordCountFilter(min_words=2, max_words=4), invert=True)], _table())
    assert _ids(out) == ["d0", "d3"]
    assert [(d["id"], d["score"]) for d in _drops(out)] == [("d1", 3), ("d2", 2), ("d4", 2)]


def test_score_field_adds_the_scores_of_the_kept_rows() -> None:
    stage = ScoreFilter(WordCountFilter(min_words=2, max_words=4), score_field="wc")
    table = _run([stage], _table()).to_pyarrow()
    assert table.column_names == ["id", "text", "wc"]
    assert table.column("wc").to_pylist() == [3, 2, 2]
    floats = _run(
        [ScoreFilter(NumbersFilter(), score_field="digits")], pa.table({"text": ["a1", "ab"]})
    )
    assert floats.to_pyarrow().column("digits").to_pylist() == [
        0.0
    ]  # "a1" (1/2) dropped, "ab" (0/2) kept


def test_score_filter_takes_the_filter_name() -> None:
    assert ScoreFilter(WordCountFilter()).name == "word_count"
    assert ScoreFilter(RepeatingTopNGramsFilter(n=3)).name == "repeating_top_3grams"
    assert ScoreFilter(PornographicUrlsFilter()).name == "PornographicUrlsFilter"


def test_each_dropped_document_is_recorded_with_id_stage_score_and_threshold() -> None:
    out = _run([ScoreFilter(WordCountFilter(min_words=2, max_words=4))], _table())
    drops = _drops(out)
    assert [(d["id"], d["stage"], d["score"], d["threshold"]) for d in drops] == [
        ("d0", "word_count", 1, WC_PARAMS),
        ("d3", "word_count", 5, WC_PARAMS),
    ]
    assert all(type(d["score"]) is int for d in drops)  # plain Python values, JSON-ready
    assert all("word_count" in d["reason"] for d in drops)
    assert out.num_items + drop_count(out) == len(TEXTS)


def test_without_an_id_column_a_drop_is_identified_by_task_id_and_row() -> None:
    table = pa.table({"text": TEXTS})
    out = _run([ScoreFilter(WordCountFilter(min_words=2, max_words=4))], table, task_id="b7")
    assert [d["id"] for d in _drops(out)] == ["b7#0", "b7#3"]
    assert out.num_items == 3


def test_ids_that_are_not_strings_are_recorded_as_strings() -> None:
    table = pa.table({"id": [10, 11, 12, 13, 14], "text": TEXTS})
    out = _run([ScoreFilter(WordCountFilter(min_words=2, max_words=4))], table)
    assert [d["id"] for d in _drops(out)] == ["10", "13"]


def test_an_all_rejected_batch_comes_out_empty_with_its_drop_records() -> None:
    out = _run([ScoreFilter(WordCountFilter(min_words=10))], _table())
    assert out.num_items == 0
    assert out.to_pyarrow().column_names == ["id", "text"]
    assert [d["id"] for d in _drops(out)] == IDS
    assert [d["score"] for d in _drops(out)] == [1, 3, 2, 5, 2]


def test_consecutive_filters_account_for_every_document() -> None:
    stages = [
        ScoreFilter(WordCountFilter(min_words=2, max_words=4)),
        ScoreFilter(NumbersFilter(max_number_to_text_ratio=0.0)),
    ]
    table = pa.table({"id": IDS, "text": ["one", "a b 1", "c d", "e f g h i", "j 22"]})
    out = _run(stages, table)
    assert _ids(out) == ["d2"]
    drops = _drops(out)
    assert [(d["id"], d["stage"]) for d in drops] == [
        ("d0", "word_count"),
        ("d3", "word_count"),
        ("d1", "numbers_ratio"),
        ("d4", "numbers_ratio"),
    ]
    assert [d["score"] for d in drops[2:]] == [1 / 5, 2 / 4]
    assert out.num_items + drop_count(out) == 5


def test_another_text_field_is_scored_when_named() -> None:
    table = pa.table({"id": IDS, "body": TEXTS})
    out = _run([ScoreFilter(WordCountFilter(min_words=2, max_words=4), text_field="body")], table)
    assert _ids(out) == ["d1", "d2", "d4"]


def test_a_batch_without_the_text_column_is_refused_naming_stage_and_column() -> None:
    table = pa.table({"id": ["x"], "body": ["words here"]})
    with pytest.raises(TaskInputError) as caught:
        _run([ScoreFilter(WordCountFilter(min_words=1))], table, task_id="t1")
    assert "stage 'word_count'" in str(caught.value)
    assert "column 'text'" in str(caught.value)


NULL_CASES = [
    ("kernels_on", WordCountFilter(min_words=1)),
    ("kernels_on", NumbersFilter()),
    ("kernels_on", RepeatingTopNGramsFilter()),
    ("kernels_on", UrlsFilter()),
    ("kernels_on", BulletsFilter()),
    ("kernels_off", WordCountFilter(min_words=1)),
    ("kernels_off", NumbersFilter()),
    ("kernels_off", RepeatingTopNGramsFilter()),
    ("kernels_off", UrlsFilter()),
]


@pytest.mark.parametrize(("path", "f"), NULL_CASES, ids=[f"{p}-{f.name}" for p, f in NULL_CASES])
def test_a_null_text_is_an_error_not_a_score(
    path: str, f: DocumentFilter, monkeypatch: pytest.MonkeyPatch
) -> None:
    if path == "kernels_off":
        monkeypatch.setattr(kernels, "available", lambda: False)
    table = pa.table({"id": ["a", "b"], "text": pa.array(["fine text 1", None], pa.string())})
    with pytest.raises(StageError, match=f"stage '{f.name}'"):
        _run([ScoreFilter(f)], table)


# ---- spec form ------------------------------------------------------------------------------


def test_a_filter_given_as_spec_data_works_like_the_object() -> None:
    stage = ScoreFilter({"filter": "WordCountFilter", "params": {"min_words": 2, "max_words": 4}})
    assert isinstance(stage.filter_obj, WordCountFilter)
    assert stage.filter_obj.get_params() == WC_PARAMS
    assert stage.name == "word_count"
    assert _ids(_run([stage], _table())) == ["d1", "d2", "d4"]


def test_an_unknown_filter_name_is_refused() -> None:
    with pytest.raises(UnknownStageError, match="unknown filter 'NoSuchFilter'") as caught:
        ScoreFilter({"filter": "NoSuchFilter", "params": {}})
    assert "WordCountFilter" in str(caught.value)


def test_private_base_classes_are_not_offered_as_filters() -> None:
    with pytest.raises(UnknownStageError) as caught:
        ScoreFilter({"filter": "NoSuchFilter", "params": {}})
    assert "_CharRatio" not in str(caught.value)
    with pytest.raises(UnknownStageError):
        ScoreFilter({"filter": "_CharRatio", "params": {}})


def test_a_score_filter_pipeline_round_trips_through_its_spec() -> None:
    if "ScoreFilter" not in registered_stage_names():
        register_stage(ScoreFilter)
    pipeline = Pipeline(
        "p",
        [
            ScoreFilter(WordCountFilter(min_words=2, max_words=4), score_field="wc"),
            ScoreFilter(NumbersFilter(max_number_to_text_ratio=0.0), invert=True),
        ],
    )
    spec = pipeline.to_spec()
    assert spec["stages"][0] == {
        "stage": "ScoreFilter",
        "params": {
            "filter_obj": {"filter": "WordCountFilter", "params": WC_PARAMS},
            "score_field": "wc",
        },
    }
    assert spec["stages"][1]["params"]["invert"] is True
    table = pa.table({"id": IDS, "text": ["one", "a b 1", "c d", "e f g h i", "j 22"]})
    rebuilt = Pipeline.from_spec(spec)
    assert rebuilt.to_spec() == spec
    [original] = pipeline.run(initial_tasks=[DocumentBatch(task_id="t", data=table)])
    [again] = rebuilt.run(initial_tasks=[DocumentBatch(task_id="t", data=table)])
    assert again.to_pyarrow().equals(original.to_pyarrow())
    assert again.to_pyarrow().to_pylist() == [
        {"id": "d1", "text": "a b 1", "wc": 3},
        {"id": "d4", "text": "j 22", "wc": 2},
    ]
    assert _drops(again) == _drops(original)


# ---- Score ----------------------------------------------------------------------------------


def test_score_adds_a_filters_scores_and_removes_nothing() -> None:
    stage = Score(WordCountFilter(), score_field="wc")
    assert stage.name == "word_count"
    out = _run([stage], _table())
    assert out.to_pyarrow().column_names == ["id", "text", "wc"]
    assert out.to_pyarrow().column("wc").to_pylist() == [1, 3, 2, 5, 2]
    assert _ids(out) == IDS
    assert _drops(out) == []


def test_score_adds_a_functions_values_and_removes_nothing() -> None:
    def vowel_count(text: str) -> int:
        return sum(text.count(v) for v in "aeiou")

    stage = Score(vowel_count, score_field="vowels")
    assert stage.name == "vowel_count"
    out = _run([stage], _table())
    # one: o e | one two three: o e, o, e e | four five: o u, i e | a b c d e: a e | six seven: i, e e
    assert out.to_pyarrow().column("vowels").to_pylist() == [2, 5, 4, 2, 3]
    assert Score(len, score_field="n").name == "len"
    assert _run([Score(len, score_field="n")], _table()).to_pyarrow().column("n").to_pylist() == [
        3,
        13,
        9,
        9,
        9,
    ]


# ---- Filter ---------------------------------------------------------------------------------


def test_filter_keeps_by_a_score_column_with_a_filters_keep_rule() -> None:
    stage = Filter(WordCountFilter(min_words=2, max_words=4), filter_field="wc")
    assert stage.name == "word_count"
    out = _run([Score(WordCountFilter(), "wc"), stage], _table())
    assert _ids(out) == ["d1", "d2", "d4"]
    assert [(d["id"], d["score"]) for d in _drops(out)] == [("d0", 1), ("d3", 5)]
    inverted = Filter(WordCountFilter(min_words=2, max_words=4), filter_field="wc", invert=True)
    assert _ids(_run([Score(WordCountFilter(), "wc"), inverted], _table())) == ["d0", "d3"]


def test_filter_keeps_by_a_score_column_with_a_function() -> None:
    table = _table(wc=[1, 3, 2, 5, 2])
    out = _run([Filter(lambda v: v >= 3, filter_field="wc")], table)
    assert _ids(out) == ["d1", "d3"]
    assert [d["id"] for d in _drops(out)] == ["d0", "d2", "d4"]
    assert out.num_items + drop_count(out) == 5
    inverted = _run([Filter(lambda v: v >= 3, filter_field="wc", invert=True)], table)
    assert _ids(inverted) == ["d0", "d2", "d4"]
    assert Filter(lambda v: True, filter_field="wc").name == "<lambda>"

"""The text stages together: the quality preset, reruns, specs and `gristmill why`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gristmill import Pipeline
from gristmill.cli import main
from gristmill.stages.text.filters import NonAlphaNumericFilter, ScoreFilter, WordCountFilter
from gristmill.stages.text.io import AddId, JsonlReader, JsonlWriter, ParquetWriter
from gristmill.stages.text.presets import quality_filter_objects, quality_filters

GOOD = (
    "The river runs past the old mill and the village, and the water turns the wheel that grinds "
    "the grain. Farmers bring their harvest to the mill in the autumn, and the miller keeps a "
    "share of the flour. In winter the river freezes and the wheel stands still until spring. "
    "Children watch the ice from the bridge, and the miller mends his tools by the fire."
)
DOCS = [
    GOOD,  # kept by every filter
    "Too short to keep.",  # WordCountFilter: 4 words
    GOOD + " " + "buy now " * 80 + ".",  # RepeatingTopNGramsFilter(n=2): "buy now" is most of it
    "<div>" * 40 + GOOD,  # NonAlphaNumericFilter
    GOOD.replace("the", "THE"),  # kept
]


def _corpus(tmp_path: Path) -> str:
    source = tmp_path / "in"
    source.mkdir()
    (source / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    return str(source)


def _pipeline(source: str, out: Path) -> Pipeline:
    return Pipeline(
        "quality",
        [
            JsonlReader(source),
            AddId(),
            *quality_filters(),
            JsonlWriter(str(out / "data"), drops_path=str(out / "drops")),
        ],
    )


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_preset_is_nemo_curators_english_list_in_order() -> None:
    names = [f.name for f in quality_filter_objects()]
    assert len(names) == 28
    assert names[:3] == ["alpha_numeric", "symbol_to_word", "numbers_ratio"]
    assert names[18:22] == ["repeating_top_2grams", "repeating_top_3grams", "repeating_top_4grams", "repeating_dup_5gram"]  # fmt: skip
    assert names[-1] == "bullet_ratio"
    others = [f.name for f in quality_filter_objects(lang="de")]
    assert len(others) == 25
    assert not {"alpha_numeric", "words_without_alphabets", "common_english_words"} & set(others)


def test_quality_pipeline_keeps_good_documents_and_explains_every_drop(tmp_path: Path) -> None:
    _pipeline(_corpus(tmp_path), tmp_path / "out").run()
    kept = [json.loads(line) for p in (tmp_path / "out" / "data").iterdir() for line in p.read_text().splitlines()]  # fmt: skip
    assert [d["text"] for d in kept] == [DOCS[0], DOCS[4]]
    drops = [json.loads(line) for p in (tmp_path / "out" / "drops").iterdir() for line in p.read_text().splitlines()]  # fmt: skip
    ids = [d["id"] for d in kept]
    assert sorted([d["id"].rsplit("_", 1)[1] for d in drops] + [i.rsplit("_", 1)[1] for i in ids]) == ["0", "1", "2", "3", "4"]  # fmt: skip
    by_row = {d["id"].rsplit("_", 1)[1]: d["stage"] for d in drops}
    assert by_row == {"1": "word_count", "2": "repeating_top_2grams", "3": "alpha_numeric"}


def test_rerun_into_the_same_directory_is_byte_identical(tmp_path: Path) -> None:
    source = _corpus(tmp_path)
    _pipeline(source, tmp_path / "out").run()
    first = _files(tmp_path / "out" / "data"), _files(tmp_path / "out" / "drops")
    _pipeline(source, tmp_path / "out").run()
    assert (_files(tmp_path / "out" / "data"), _files(tmp_path / "out" / "drops")) == first
    assert len(first[0]) == 1


def test_text_pipeline_spec_round_trips_through_yaml(tmp_path: Path) -> None:
    source = _corpus(tmp_path)
    pipeline = Pipeline(
        "q",
        [
            JsonlReader(source),
            ScoreFilter(WordCountFilter(min_words=10), score_field="words"),
            ScoreFilter(NonAlphaNumericFilter(), invert=True),
            ParquetWriter(str(tmp_path / "out")),
        ],
    )
    spec = pipeline.to_spec()
    assert spec["stages"][1] == {
        "stage": "ScoreFilter",
        "params": {
            "filter_obj": {
                "filter": "WordCountFilter",
                "params": {"min_words": 10, "max_words": 100000, "lang": "en"},
            },
            "score_field": "words",
        },
    }
    path = tmp_path / "q.yaml"
    path.write_text(pipeline.to_yaml())
    assert Pipeline.from_spec(path).to_spec() == spec


def test_why_names_the_stage_score_and_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _pipeline(_corpus(tmp_path), tmp_path / "out").run()
    drops = [json.loads(line) for p in (tmp_path / "out" / "drops").iterdir() for line in p.read_text().splitlines()]  # fmt: skip
    short = next(d for d in drops if d["stage"] == "word_count")
    assert main(["why", short["id"], "--drops", str(tmp_path / "out" / "drops")]) == 0
    assert capsys.readouterr().out == (
        f"{short['id']}: dropped by stage 'word_count': word_count rejected it "
        f'(score 4, threshold {{"min_words": 50, "max_words": 100000, "lang": "en"}})\n'
    )
    assert main(["why", "nobody", "--drops", str(tmp_path / "out" / "drops")]) == 1
    assert capsys.readouterr().out == f"nobody: no drop record under {tmp_path / 'out' / 'drops'}\n"

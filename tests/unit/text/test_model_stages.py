"""The model stages on LocalExecutor with small models built here (random weights, no
download): predictions against a direct onnxruntime run, in the input's row order, with and
without length sorting; the NeMo classifiers' columns and thresholds; embeddings; model files
from a remote store; and bad models, inputs and parameters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest

from gristmill import DocumentBatch, Pipeline, Resources
from gristmill.errors import GristmillError, ModelError, PipelineBuildError
from gristmill.stages.text.classifiers import (
    DOMAIN_LABELS,
    DistributedDataClassifier,
    DomainClassifier,
    FineWebEduClassifier,
    QualityClassifier,
)
from gristmill.stages.text.embedding import EmbeddingStage
from gristmill.stages.text.models import INPUT_IDS, SEQ_ORDER, TokenizerStage, pad_batch
from gristmill.stages.text.models.synthetic import build_text_model
from gristmill.tasks import iter_drops

SAMPLE = Path(__file__).parents[3] / "examples" / "data"


def _corpus() -> list[dict[str, str]]:
    return [json.loads(line) for p in sorted(SAMPLE.glob("*.jsonl")) for line in p.read_text().splitlines()]  # fmt: skip


CORPUS = _corpus()
WORDS = sorted({w.lower() for doc in CORPUS for w in doc["text"].split()})[:2000]
TEXTS = [doc["text"] for doc in CORPUS]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "quality": build_text_model(
            root / "quality",
            WORDS,
            labels=["High", "Medium", "Low"],
            layers=2,
            calibration_texts=TEXTS,
        ),
        "domain": build_text_model(
            root / "domain", WORDS, labels=DOMAIN_LABELS, seed=1, calibration_texts=TEXTS
        ),
        "edu": build_text_model(
            root / "edu", WORDS, kind="regressor", seed=2, calibration_texts=TEXTS
        ),
        "embed": build_text_model(root / "embed", WORDS, kind="embedding", hidden=24, seed=3),
    }


def _direct(
    model: Path, texts: list[str], max_chars: int | None, max_seq_length: int
) -> np.ndarray:
    """The model run by hand: each text alone, unpadded, straight through onnxruntime."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    tokenizer.enable_truncation(max_seq_length)
    session = ort.InferenceSession(str(model / "model.onnx"), providers=["CPUExecutionProvider"])
    rows = []
    for text in texts:
        ids = np.array([tokenizer.encode(text[:max_chars] if max_chars else text).ids], np.int64)
        rows.append(
            session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0]
        )
    return np.stack(rows)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _run(stages: list[Any], table: pa.Table) -> pa.Table:
    outputs = Pipeline("models", stages).run(initial_tasks=[DocumentBatch(task_id="b", data=table)])
    assert len(outputs) == 1
    return outputs[0].to_pyarrow()


def _docs(n: int = 120) -> pa.Table:
    return pa.table({"id": [d["id"] for d in CORPUS[:n]], "text": [d["text"] for d in CORPUS[:n]]})


# ---- classifiers against a direct run ---------------------------------------------------------


@pytest.mark.parametrize("sort_by_length", [True, False])
def test_a_classifier_predicts_what_the_model_does_run_by_hand_in_the_input_order(
    models: dict[str, Path], sort_by_length: bool
) -> None:
    docs = _docs()
    stage = QualityClassifier(
        str(models["quality"]),
        prob_column="quality_prob",
        max_chars=400,
        sort_by_length=sort_by_length,
        model_inference_batch_size=7,  # many inference batches, each padded its own way
    )
    out = _run([stage], docs)
    expected = _softmax(_direct(models["quality"], docs["text"].to_pylist(), 400, 1024))
    assert out.column_names == ["id", "text", "quality_pred", "quality_prob"]
    assert out["id"].to_pylist() == docs["id"].to_pylist()
    assert out["quality_pred"].to_pylist() == [
        ["High", "Medium", "Low"][i] for i in expected.argmax(1)
    ]
    assert out.schema.field("quality_prob").type == pa.list_(pa.float32())
    np.testing.assert_allclose(np.array(out["quality_prob"].to_pylist()), expected, atol=1e-5)
    assert len(set(out["quality_pred"].to_pylist())) == 3  # the test model does tell them apart


def test_the_tokenizer_sorts_by_length_and_the_model_stage_restores_the_order(
    models: dict[str, Path],
) -> None:
    docs = _docs(40)
    tokenized = _run([TokenizerStage(str(models["quality"]), max_seq_length=64)], docs)
    lengths = [len(ids) for ids in tokenized[INPUT_IDS].to_pylist()]
    assert lengths == sorted(lengths)
    assert lengths[0] < lengths[-1] == 64
    order = tokenized[SEQ_ORDER].to_pylist()
    assert sorted(order) == list(range(40))
    assert tokenized["id"].to_pylist() == [docs["id"][i].as_py() for i in order]
    unsorted = _run([TokenizerStage(str(models["quality"]), sort_by_length=False)], docs)
    assert unsorted.column_names == ["id", "text", INPUT_IDS]
    assert unsorted["id"].to_pylist() == docs["id"].to_pylist()


def test_padding_fills_each_batch_only_to_its_longest_sequence() -> None:
    ids, mask = pad_batch([np.array([5, 6, 7]), np.array([8])], pad_id=0, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_batch([np.array([5, 6, 7]), np.array([8])], pad_id=9, side="left")
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype == mask.dtype == np.int64


def test_filter_by_keeps_the_labels_asked_for_and_records_every_other_document(
    models: dict[str, Path],
) -> None:
    docs = _docs()
    outputs = Pipeline(
        "keep", [QualityClassifier(str(models["quality"]), filter_by=["High", "Medium"])]
    ).run(initial_tasks=[DocumentBatch(task_id="b", data=docs)])
    out = outputs[0]
    kept = out.to_pyarrow()
    drops = list(iter_drops(out._metadata["drops"]))
    labels = _softmax(_direct(models["quality"], docs["text"].to_pylist(), 6000, 1024)).argmax(1)
    assert set(kept["quality_pred"].to_pylist()) == {"High", "Medium"}
    assert kept["id"].to_pylist() == [
        i for i, k in zip(docs["id"].to_pylist(), labels, strict=True) if k != 2
    ]
    assert sorted(d["id"] for d in drops) == sorted(
        i for i, k in zip(docs["id"].to_pylist(), labels, strict=True) if k == 2
    )
    assert kept.num_rows + len(drops) == docs.num_rows
    assert {(d["stage"], d["score"]) for d in drops} == {("QualityClassifier_filter", "Low")}
    assert drops[0]["reason"] == "QualityClassifier_filter on 'quality_pred' rejected it"


def test_labels_come_from_the_models_config_when_not_given(models: dict[str, Path]) -> None:
    docs = _docs(30)
    out = _run([DistributedDataClassifier(str(models["quality"]), pred_column="label")], docs)
    assert set(out["label"].to_pylist()) <= {"High", "Medium", "Low"}
    renamed = _run(
        [DistributedDataClassifier(str(models["quality"]), labels=["x", "y", "z"])], docs
    )
    mapping = dict(zip(["High", "Medium", "Low"], ["x", "y", "z"], strict=True))
    assert renamed["preds"].to_pylist() == [mapping[x] for x in out["label"].to_pylist()]


def test_the_domain_classifier_gives_one_of_nemos_26_domains(models: dict[str, Path]) -> None:
    docs = _docs(60)
    out = _run([DomainClassifier(str(models["domain"]), prob_column="domain_prob")], docs)
    expected = _softmax(_direct(models["domain"], docs["text"].to_pylist(), 2000, 512))
    assert len(DOMAIN_LABELS) == 26
    assert out["domain_pred"].to_pylist() == [DOMAIN_LABELS[i] for i in expected.argmax(1)]
    np.testing.assert_allclose(np.array(out["domain_prob"].to_pylist()), expected, atol=1e-5)


def test_fineweb_edu_scores_clip_round_and_label_at_two_and_a_half(models: dict[str, Path]) -> None:
    docs = _docs()
    out = _run([FineWebEduClassifier(str(models["edu"]))], docs)
    raw = _direct(models["edu"], docs["text"].to_pylist(), None, 512)[:, 0]
    assert out.column_names == [
        "id",
        "text",
        "fineweb-edu-score-label",
        "fineweb-edu-score-float",
        "fineweb-edu-score-int",
    ]
    floats = np.array(out["fineweb-edu-score-float"].to_pylist())
    np.testing.assert_allclose(floats, np.clip(raw, 0, 5), atol=1e-5)
    assert (
        out["fineweb-edu-score-int"].to_pylist() == np.rint(np.clip(raw, 0, 5)).astype(int).tolist()
    )
    assert out["fineweb-edu-score-label"].to_pylist() == [
        "high_quality" if r >= 2.5 else "low_quality" for r in raw
    ]
    assert {"high_quality", "low_quality"} == set(out["fineweb-edu-score-label"].to_pylist())
    high = _run([FineWebEduClassifier(str(models["edu"]), filter_by=["high_quality"])], docs)
    assert high["id"].to_pylist() == [
        i for i, r in zip(docs["id"].to_pylist(), raw, strict=True) if r >= 2.5
    ]


# ---- embeddings ---------------------------------------------------------------------------------


def test_embeddings_are_the_mean_of_the_real_tokens_states_at_unit_length(
    models: dict[str, Path],
) -> None:
    docs = _docs(50)
    out = _run([EmbeddingStage(str(models["embed"]), model_inference_batch_size=8)], docs)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(models["embed"] / "tokenizer.json"))
    tokenizer.enable_truncation(512)
    session = ort.InferenceSession(str(models["embed"] / "model.onnx"))
    expected = []
    for text in docs["text"].to_pylist():
        ids = np.array([tokenizer.encode(text).ids], np.int64)
        mean = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][
            0
        ].mean(0)
        expected.append(mean / np.linalg.norm(mean))
    assert out.schema.field("embeddings").type == pa.list_(pa.float32())
    got = np.array(out["embeddings"].to_pylist())
    assert got.shape == (50, 24)
    np.testing.assert_allclose(got, np.stack(expected), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    raw = _run([EmbeddingStage(str(models["embed"]), normalize=False, embedding_field="e")], docs)
    assert not np.allclose(np.linalg.norm(np.array(raw["e"].to_pylist()), axis=1), 1.0)


def test_last_token_pooling_takes_each_documents_own_last_token(models: dict[str, Path]) -> None:
    docs = pa.table({"text": ["alpha beta gamma delta", "alpha"]})
    last = _run(
        [
            EmbeddingStage(
                str(models["embed"]),
                embedding_pooling="last_token",
                normalize=False,
                sort_by_length=False,
            )
        ],
        docs,
    )
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(models["embed"] / "tokenizer.json"))
    session = ort.InferenceSession(str(models["embed"] / "model.onnx"))
    for row, text in enumerate(docs["text"].to_pylist()):
        ids = np.array([tokenizer.encode(text).ids], np.int64)
        states = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0]
        np.testing.assert_allclose(last["embeddings"][row].as_py(), states[-1], atol=1e-5)


# ---- the stage contract -------------------------------------------------------------------------


def test_a_classifier_is_a_tokenizer_step_then_a_model_step(models: dict[str, Path]) -> None:
    stage = QualityClassifier(str(models["quality"]), filter_by=["High"])
    names = [s.name for s in stage.decompose()]
    assert names == [
        "QualityClassifier_tokenizer",
        "QualityClassifier_model",
        "QualityClassifier_filter",
    ]
    assert [s.resources for s in stage.decompose()[:2]] == [
        Resources(cpus=1.0),
        Resources(cpus=1.0),
    ]
    shared = QualityClassifier(str(models["quality"]), gpus=0.25).decompose()
    assert shared[0].resources == Resources(cpus=1.0)  # tokenizing stays on CPU
    assert shared[1].resources == Resources(cpus=1.0, gpus=0.25)
    assert shared[1].with_(gpus=0.5).resources == Resources(cpus=1.0, gpus=0.5)


def test_a_classifier_round_trips_through_a_pipeline_spec(models: dict[str, Path]) -> None:
    pipeline = Pipeline(
        "spec", [QualityClassifier(str(models["quality"]), prob_column="p", max_chars=100)]
    )
    spec = pipeline.to_spec()
    assert spec["stages"][0]["stage"] == "QualityClassifier"
    assert spec["stages"][0]["params"]["model_path"] == str(models["quality"])
    again = Pipeline.from_spec(json.loads(json.dumps(spec)))
    assert again.to_spec() == spec
    docs = _docs(20)
    assert _run(again.stages, docs).equals(_run(pipeline.stages, docs))


def _through(stage: Any, table: pa.Table) -> pa.Table:
    """`table` through a composite's stages called directly (executors drop empty tasks)."""
    task = DocumentBatch(task_id="b", data=table)
    for part in stage.decompose():
        part.setup()
        task = part.process(task)
    return task.to_pyarrow()


def test_an_empty_batch_gets_the_output_columns_empty(models: dict[str, Path]) -> None:
    # Filters may leave a batch with no rows that still travels on with its drop records.
    empty = pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())})
    out = _through(QualityClassifier(str(models["quality"]), prob_column="p"), empty)
    assert out.schema == pa.schema(
        [
            ("id", pa.string()),
            ("text", pa.string()),
            ("quality_pred", pa.string()),
            ("p", pa.list_(pa.float32())),
        ]
    )
    edu = _through(FineWebEduClassifier(str(models["edu"])), empty)
    assert edu.schema.field("fineweb-edu-score-int").type == pa.int64()
    embedded = _through(EmbeddingStage(str(models["embed"])), empty)
    assert embedded.schema.field("embeddings").type == pa.list_(pa.float32())
    assert embedded.num_rows == 0


def test_a_model_at_a_url_is_copied_to_the_machine_once(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRISTMILL_MODEL_CACHE", str(tmp_path / "cache"))
    memory = fsspec.filesystem("memory")
    for path in models["quality"].iterdir():
        memory.pipe(f"/models/quality/{path.name}", path.read_bytes())
    docs = _docs(30)
    remote = _run([QualityClassifier("memory://models/quality")], docs)
    assert remote.equals(_run([QualityClassifier(str(models["quality"]))], docs))
    copies = list((tmp_path / "cache").iterdir())
    assert len(copies) == 1
    assert not copies[0].name.startswith(".")
    assert sorted(p.name for p in copies[0].iterdir()) == [
        ".source",
        "config.json",
        "model.onnx",
        "tokenizer.json",
    ]
    memory.rm("/models/quality", recursive=True)  # gone from the store: the copy serves
    assert _run([QualityClassifier("memory://models/quality")], docs).equals(remote)


# ---- bad models, inputs and parameters ------------------------------------------------------------


def _error(stages: list[Any], table: pa.Table) -> str:
    with pytest.raises(GristmillError) as caught:
        _run(stages, table)
    return str(caught.value)


def test_a_missing_model_path_is_named(tmp_path: Path) -> None:
    message = _error([QualityClassifier(str(tmp_path / "nowhere"))], _docs(3))
    assert message == f"model_path '{tmp_path / 'nowhere'}' does not exist"


def test_a_model_directory_without_a_tokenizer_or_a_model_says_what_is_missing(
    models: dict[str, Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(models["quality"], broken)
    (broken / "tokenizer.json").unlink()
    assert _error([QualityClassifier(str(broken))], _docs(3)) == (
        f"model_path '{broken}' has no tokenizer.json; save the model's tokenizer there (tokenizer.save('tokenizer.json') or AutoTokenizer.save_pretrained)"
    )
    shutil.copy(models["quality"] / "tokenizer.json", broken)
    (broken / "model.onnx").write_bytes(b"not a model")
    assert _error([QualityClassifier(str(broken))], _docs(3)).startswith(
        f"{broken / 'model.onnx'}: ONNX Runtime cannot load it: [ONNXRuntimeError] : 7 : INVALID_PROTOBUF"
    )


def test_a_model_with_other_outputs_than_labels_is_refused(models: dict[str, Path]) -> None:
    message = _error(
        [DistributedDataClassifier(str(models["quality"]), labels=["a", "b"])], _docs(3)
    )
    assert message == (
        "stage 'DistributedDataClassifier_model': the model gives outputs of shape [3] per row, but there are 2 labels (a, b)"
    )
    no_labels = models["quality"].parent / "nolabels"
    shutil.copytree(models["quality"], no_labels, dirs_exist_ok=True)
    (no_labels / "config.json").write_text("{}")
    assert _error([DistributedDataClassifier(str(no_labels))], _docs(3)) == (
        f"model_path '{no_labels}': no labels given and its config.json has no id2label"
    )


def test_sequences_longer_than_the_model_takes_are_refused(
    models: dict[str, Path], tmp_path: Path
) -> None:
    short = build_text_model(tmp_path / "short", WORDS, max_positions=16)
    message = _error([DistributedDataClassifier(str(short), max_seq_length=64)], _docs(5))
    assert message == (
        f"stage 'DistributedDataClassifier_model': a sequence of 64 tokens is longer than the "
        f"model takes (16, max_position_embeddings in {short}/config.json); lower the "
        f"tokenizer's max_seq_length"
    )


def test_a_missing_or_null_text_is_named(models: dict[str, Path]) -> None:
    stage = QualityClassifier(str(models["quality"]))
    assert _error([stage], pa.table({"id": ["a"], "body": ["x"]})) == (
        "stage 'QualityClassifier_tokenizer' needs column 'text', which task 'b' lacks (it has: 'id', 'body')"
    )
    assert _error([stage], pa.table({"id": ["a", "b"], "text": ["x", None]})).endswith(
        "ValueError: column 'text' is null in row 1"
    )


def test_a_gpu_share_without_a_cuda_provider_is_refused_with_what_to_install(
    models: dict[str, Path],
) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: tests/integration cover the GPU path")
    message = _error([QualityClassifier(str(models["quality"]), gpus=0.25)], _docs(3))
    assert message.startswith(
        f"{models['quality'] / 'model.onnx'}: the stage asks for a GPU but this onnxruntime has no CUDA provider (available: "
    )
    assert message.endswith("); install onnxruntime-gpu in place of onnxruntime")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: QualityClassifier(p, max_chars=0),
            "stage 'QualityClassifier': max_chars must be a number of characters >= 1 or None, got 0",
        ),
        (
            lambda p: QualityClassifier(p, model_inference_batch_size=0),
            "stage 'QualityClassifier': model_inference_batch_size must be an int >= 1, got 0",
        ),
        (
            lambda p: QualityClassifier(p, gpus=-1),
            "stage 'QualityClassifier': gpus must be a number >= 0 (0: run on CPU), got -1",
        ),
        (
            lambda p: QualityClassifier(p, filter_by=["Great"]),
            "stage 'QualityClassifier': filter_by has label(s) 'Great' the model does not give (its labels: High, Medium, Low)",
        ),
        (
            lambda p: QualityClassifier(p, filter_by=[]),
            "stage 'QualityClassifier': filter_by must be a non-empty list of labels or None, got []",
        ),
        (
            lambda p: DistributedDataClassifier(""),
            "stage 'DistributedDataClassifier': model_path must name the model's directory or file, got ''",
        ),
        (
            lambda p: DistributedDataClassifier(p, backend="tensorrt"),
            "stage 'DistributedDataClassifier': backend must be 'auto', 'onnx' or 'torch', got 'tensorrt'",
        ),
        (
            lambda p: EmbeddingStage(p, embedding_pooling="max"),
            "stage 'EmbeddingStage': embedding_pooling must be 'mean_pooling' or 'last_token', got 'max'",
        ),
    ],
)
def test_unusable_parameters_are_refused_when_the_stage_is_made(
    models: dict[str, Path], make: Any, message: str
) -> None:
    with pytest.raises(PipelineBuildError) as caught:
        make(str(models["quality"]))
    assert str(caught.value) == message


def test_a_torch_checkpoint_without_torch_says_which_extra_to_install(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    try:
        import torch  # noqa: F401

        pytest.skip("torch is installed here: the message is for machines without it")
    except ImportError:
        pass
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"id2label": {"0": "a"}}))
    shutil.copy(Path(build_text_model(tmp_path / "m", WORDS)) / "tokenizer.json", checkpoint)
    message = _error([DistributedDataClassifier(str(checkpoint))], _docs(2))
    assert message == (
        f"model_path '{checkpoint}' (a PyTorch checkpoint) needs the 'torch' package: pip install 'gristmill[torch]'"
    )
    (checkpoint / "config.json").unlink()
    with pytest.raises(ModelError) as caught:
        DistributedDataClassifier(str(checkpoint), labels=["a"]).decompose()[1].setup()
    assert str(caught.value) == (
        f"model_path '{checkpoint}' holds neither a model.onnx nor a transformers checkpoint (config.json and weights)"
    )

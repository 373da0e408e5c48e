"""Small text models with random weights, built locally: for tests, benches and trying the model
stages on a machine with no model at hand (nothing is downloaded).

`build_text_model` writes a model directory as the model stages read it: `model.onnx` (a
BERT-shaped encoder: token and position embeddings, `layers` self-attention blocks, then a
classification head, a one-score regression head, or the hidden states), `tokenizer.json` (a
word-level tokenizer over `words`, with [CLS] ... [SEP]) and `config.json` (`id2label`,
`pad_token_id`). Shapes follow the arguments, so a DeBERTa-v3-base-sized or a MiniLM-L6-sized
model is one call. With `calibration_texts`, the head sees its features standardised over those
texts, so that predictions spread over every label. Needs the `onnx` package (the `dev` extra).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["SPECIAL_TOKENS", "build_text_model", "build_tokenizer"]

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
Kind = Literal["classifier", "regressor", "embedding"]


def build_tokenizer(words: Sequence[str], vocab_size: int | None = None) -> Any:
    """A lower-casing, whitespace-splitting word-level tokenizer over `words` (padded with
    made-up words up to `vocab_size`)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault(word.lower(), len(vocab))
    while vocab_size is not None and len(vocab) < vocab_size:
        vocab[f"tok{len(vocab)}"] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tokenizer


def build_text_model(
    directory: str | Path,
    words: Sequence[str],
    kind: Kind = "classifier",
    labels: Sequence[str] = ("a", "b", "c"),
    hidden: int = 32,
    layers: int = 1,
    heads: int = 2,
    intermediate: int | None = None,
    vocab_size: int | None = None,
    max_positions: int = 1024,
    seed: int = 0,
    calibration_texts: Sequence[str] = (),
) -> Path:
    """Write a random-weight model directory (see the module's docstring); returns it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(words, vocab_size)
    tokenizer.save(str(out / "tokenizer.json"))
    vocab = tokenizer.get_vocab_size()
    rng = np.random.default_rng(seed)
    inits: list[Any] = []
    nodes: list[Any] = []
    count = [0]

    def weight(shape: tuple[int, ...], scale: float | None = None) -> str:
        count[0] += 1
        name = f"w{count[0]}"
        std = scale if scale is not None else 1.0 / math.sqrt(shape[0])
        inits.append(numpy_helper.from_array(rng.normal(0, std, shape).astype(np.float32), name))
        return name

    def const(value: Any, dtype: Any = np.float32) -> str:
        count[0] += 1
        name = f"c{count[0]}"
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(kind_: str, inputs: list[str], **attrs: Any) -> str:
        count[0] += 1
        name = f"t{count[0]}"
        nodes.append(helper.make_node(kind_, inputs, [name], **attrs))
        return name

    def dense(x: str, n_in: int, n_out: int, scale: float | None = None) -> str:
        return op("Add", [op("MatMul", [x, weight((n_in, n_out), scale)]), weight((n_out,), 0.02)])

    def layer_norm(x: str) -> str:
        return op(
            "LayerNormalization", [x, const(np.ones(hidden)), const(np.zeros(hidden))], axis=-1
        )

    def gelu(x: str) -> str:
        erf = op("Erf", [op("Mul", [x, const(1 / math.sqrt(2))])])
        return op("Mul", [op("Mul", [x, const(0.5)]), op("Add", [erf, const(1.0)])])

    head_dim = hidden // heads
    tokens = op("Gather", [weight((vocab, hidden), 1.0), "input_ids"])
    length = op("Gather", [op("Shape", ["input_ids"]), const(1, np.int64)])
    positions = op("Range", [const(0, np.int64), length, const(1, np.int64)])
    x = layer_norm(
        op("Add", [tokens, op("Gather", [weight((max_positions, hidden), 0.5), positions])])
    )
    mask = op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    bias = op("Mul", [op("Sub", [const(1.0), mask]), const(-1e4)])
    bias = op("Unsqueeze", [bias, const([1, 2], np.int64)])  # [batch, 1, 1, tokens]
    split = const([0, 0, heads, head_dim], np.int64)
    for _ in range(layers):
        q = op("Transpose", [op("Reshape", [dense(x, hidden, hidden), split])], perm=[0, 2, 1, 3])
        k = op("Transpose", [op("Reshape", [dense(x, hidden, hidden), split])], perm=[0, 2, 3, 1])
        v = op("Transpose", [op("Reshape", [dense(x, hidden, hidden), split])], perm=[0, 2, 1, 3])
        scores = op(
            "Add", [op("Mul", [op("MatMul", [q, k]), const(1 / math.sqrt(head_dim))]), bias]
        )
        context = op("MatMul", [op("Softmax", [scores], axis=-1), v])
        context = op("Transpose", [context], perm=[0, 2, 1, 3])
        context = op("Reshape", [context, const([0, 0, hidden], np.int64)])
        x = layer_norm(op("Add", [x, dense(context, hidden, hidden)]))
        width = intermediate or 4 * hidden
        x = layer_norm(op("Add", [x, dense(gelu(dense(x, hidden, width)), width, hidden)]))
    config: dict[str, Any] = {
        "pad_token_id": 0,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "max_position_embeddings": max_positions,
    }
    if kind == "embedding":
        output, shape = x, ["batch", "tokens", hidden]
    else:
        # Mean of the real tokens' states (padding never changes a prediction).
        mask3 = op("Unsqueeze", [mask, const([2], np.int64)])
        axis = const([1], np.int64)
        summed = op("ReduceSum", [op("Mul", [x, mask3]), axis], keepdims=0)
        pooled = op("Div", [summed, op("ReduceSum", [mask3, axis], keepdims=0)])
        if calibration_texts:
            # Means of long texts are much alike; standardise them over sample texts so that
            # the head's random weights spread the predictions over every label.
            features = _session(_model(nodes, inits, pooled, ["batch", hidden]))
            encoded = [tokenizer.encode(t).ids[:max_positions] for t in calibration_texts]
            seen = np.stack([_pooled(features, ids) for ids in encoded])
            centre, spread = seen.mean(0), seen.std(0) + 1e-6
            pooled = op("Div", [op("Sub", [pooled, const(centre)]), const(spread)])
        if kind == "regressor":  # scores spread over FineWeb-Edu's 0..5
            output = op("Add", [dense(pooled, hidden, 1, 1.5 / math.sqrt(hidden)), const(2.5)])
            shape = ["batch", 1]
        else:
            output, shape = dense(pooled, hidden, len(labels)), ["batch", len(labels)]
            config["id2label"] = {str(i): label for i, label in enumerate(labels)}
    model = _model(nodes, inits, output, shape)
    onnx.checker.check_model(model)
    onnx.save(model, str(out / "model.onnx"))
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out


def _model(nodes: list[Any], inits: list[Any], output: str, shape: list[Any]) -> Any:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [*nodes, helper.make_node("Identity", [output], ["output"])],
        "gristmill-synthetic",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _session(model: Any) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _pooled(session: Any, ids: list[int]) -> np.ndarray:
    batch = np.array([ids], np.int64)
    return np.asarray(
        session.run(None, {"input_ids": batch, "attention_mask": np.ones_like(batch)})[0][0]
    )

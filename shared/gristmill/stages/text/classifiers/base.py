"""`DistributedDataClassifier`: a text classifier as a tokenizer stage and a model stage.

The tokenizer runs on CPU; the model on CPU or, with `gpus`, on a share of a GPU. Each row gets
its predicted label in `pred_column` and, with `prob_column`, the probabilities of every label
(in the model's label order); `filter_by` then keeps only rows with one of those labels,
recording the others as dropped. Labels come from `labels`, else from the model's
`config.json` (`id2label`, as transformers writes it).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from gristmill.errors import ModelError, PipelineBuildError
from gristmill.stages.base import CompositeStage, ProcessingStage
from gristmill.stages.text.filters.models import LabelFilter
from gristmill.stages.text.filters.stages import Filter
from gristmill.stages.text.models.backends import Backend
from gristmill.stages.text.models.model import ModelStage, check_inference_params
from gristmill.stages.text.models.tokenizer import (
    PaddingSide,
    TokenizerStage,
    check_model_params,
)
from gristmill.tasks import DocumentBatch

__all__ = ["ClassifierModelStage", "DistributedDataClassifier", "labels_of", "softmax"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float32)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True), np.float32)


def labels_of(config: dict[str, Any], model_path: str) -> list[str]:
    """The labels in `config.json`'s `id2label`, by id."""
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        raise ModelError(
            f"model_path {model_path!r}: no labels given and its config.json has no id2label"
        )
    try:
        by_id = {int(k): str(v) for k, v in id2label.items()}
    except ValueError as exc:
        raise ModelError(f"model_path {model_path!r}: id2label keys must be ids: {exc}") from exc
    if sorted(by_id) != list(range(len(by_id))):
        raise ModelError(f"model_path {model_path!r}: id2label ids are not 0..{len(by_id) - 1}")
    return [by_id[i] for i in range(len(by_id))]


class ClassifierModelStage(ModelStage):
    """The model stage of a classifier: logits (or, without `apply_softmax`, probabilities)
    per label in, `pred_column` (and `prob_column`, list<float32>) out."""

    def __init__(
        self,
        model_path: str,
        labels: list[str] | None = None,
        pred_column: str = "preds",
        prob_column: str | None = None,
        apply_softmax: bool = True,
        model_inference_batch_size: int = 256,
        has_seq_order: bool = True,
        padding_side: PaddingSide = "right",
        backend: Backend = "auto",
        gpus: float = 0.0,
        autocast: bool = True,
    ):
        self.labels = labels
        self.pred_column = pred_column
        self.prob_column = prob_column
        self.apply_softmax = apply_softmax
        self._labels: list[str] = list(labels or [])
        super().__init__(
            model_path,
            model_inference_batch_size,
            has_seq_order,
            padding_side,
            backend,
            gpus,
            autocast,
        )

    def outputs(self) -> tuple[list[str], list[str]]:
        """The label column (and the probabilities, when asked)."""
        return [], [self.pred_column, *([self.prob_column] if self.prob_column else [])]

    def configure(self, config: dict[str, Any]) -> None:
        """The labels, given or from the model's config."""
        self._labels = list(self.labels) if self.labels else labels_of(config, self.model_path)

    def column_types(self) -> dict[str, pa.DataType]:
        """The label (and probabilities) columns' types."""
        types = {self.pred_column: pa.string()}
        if self.prob_column:
            types[self.prob_column] = pa.list_(pa.float32())
        return types

    def output_columns(self, outputs: np.ndarray, lengths: np.ndarray) -> dict[str, pa.Array]:
        """The predicted label and the label probabilities of each row."""
        if outputs.ndim != 2 or outputs.shape[1] != len(self._labels):
            raise ModelError(
                f"stage '{self.name}': the model gives outputs of shape "
                f"{list(outputs.shape)[1:]} per row, but there are {len(self._labels)} labels "
                f"({', '.join(self._labels)})"
            )
        probs = softmax(outputs) if self.apply_softmax else outputs.astype(np.float32)
        preds = np.asarray(self._labels, dtype=object)[probs.argmax(axis=1)]
        columns = {self.pred_column: pa.array(preds.tolist(), pa.string())}
        if self.prob_column:
            columns[self.prob_column] = float_lists(probs)
        return columns


def float_lists(rows: np.ndarray) -> pa.Array:
    """A [rows, width] float array as a list<float32> column."""
    width = rows.shape[1] if rows.ndim == 2 else 0
    offsets = np.arange(len(rows) + 1, dtype=np.int32) * width
    values = pa.array(np.ascontiguousarray(rows, np.float32).reshape(-1), pa.float32())
    return pa.ListArray.from_arrays(pa.array(offsets), values)


class DistributedDataClassifier(CompositeStage[DocumentBatch, DocumentBatch]):
    """A classifier over `text_field`: `TokenizerStage`, a classifier `ModelStage`, and (with
    `filter_by`) a `Filter` keeping rows labelled one of those.

    `max_chars` cuts texts before tokenizing; `max_seq_length` cuts token sequences;
    `sort_by_length` batches similar lengths together (the output keeps the input's order);
    `model_inference_batch_size` rows go through the model at once. `gpus` > 0 runs the model
    on that share of a GPU; `autocast` (PyTorch on a GPU) computes in bf16.
    """

    default_labels: ClassVar[list[str] | None] = None  # a model family's labels, when fixed

    def __init__(
        self,
        model_path: str,
        labels: list[str] | None = None,
        pred_column: str = "preds",
        prob_column: str | None = None,
        text_field: str = "text",
        filter_by: list[str] | None = None,
        max_chars: int | None = None,
        max_seq_length: int = 512,
        padding_side: PaddingSide = "right",
        sort_by_length: bool = True,
        model_inference_batch_size: int = 256,
        autocast: bool = True,
        apply_softmax: bool = True,
        backend: Backend = "auto",
        gpus: float = 0.0,
        id_field: str = "id",
    ):
        self.model_path = model_path
        self.labels = labels
        self.pred_column = pred_column
        self.prob_column = prob_column
        self.text_field = text_field
        self.filter_by = filter_by
        self.max_chars = max_chars
        self.max_seq_length = max_seq_length
        self.padding_side = padding_side
        self.sort_by_length = sort_by_length
        self.model_inference_batch_size = model_inference_batch_size
        self.autocast = autocast
        self.apply_softmax = apply_softmax
        self.backend = backend
        self.gpus = gpus
        self.id_field = id_field
        self._check_filter_by()
        check_model_params(self.name, model_path, max_chars, max_seq_length)
        check_inference_params(
            self.name, model_path, model_inference_batch_size, padding_side, backend, gpus
        )

    def _check_filter_by(self) -> None:
        if self.filter_by is None:
            return
        if not isinstance(self.filter_by, list) or not self.filter_by:
            raise PipelineBuildError(
                f"stage '{self.name}': filter_by must be a non-empty list of labels or None, "
                f"got {self.filter_by!r}"
            )
        known = self.labels or self.default_labels
        unknown = [x for x in self.filter_by if known is not None and x not in known]
        if unknown:
            raise PipelineBuildError(
                f"stage '{self.name}': filter_by has label(s) {', '.join(map(repr, unknown))} "
                f"the model does not give (its labels: {', '.join(known or [])})"
            )

    def model_stage(self) -> ModelStage:
        """The model half (subclasses with other outputs override this)."""
        return ClassifierModelStage(
            self.model_path,
            labels=self.labels or self.default_labels,
            pred_column=self.pred_column,
            prob_column=self.prob_column,
            apply_softmax=self.apply_softmax,
            model_inference_batch_size=self.model_inference_batch_size,
            has_seq_order=self.sort_by_length,
            padding_side=self.padding_side,
            backend=self.backend,
            gpus=self.gpus,
            autocast=self.autocast,
        )

    def decompose(self) -> list[ProcessingStage[Any, Any]]:
        """Tokenize, run the model, then filter by label if asked."""
        tokenizer = TokenizerStage(
            self.model_path,
            text_field=self.text_field,
            max_chars=self.max_chars,
            max_seq_length=self.max_seq_length,
            sort_by_length=self.sort_by_length,
        ).with_(name=f"{self.name}_tokenizer")
        model = self.model_stage().with_(name=f"{self.name}_model")
        stages: list[ProcessingStage[Any, Any]] = [tokenizer, model]
        if self.filter_by:
            label = self.pred_column
            stages.append(
                Filter(LabelFilter(self.filter_by), label, id_field=self.id_field).with_(
                    name=f"{self.name}_filter"
                )
            )
        return stages

    def inputs(self) -> tuple[list[str], list[str]]:
        """The text column."""
        return [], [self.text_field]

    def outputs(self) -> tuple[list[str], list[str]]:
        """What the model stage writes."""
        return self.model_stage().outputs()

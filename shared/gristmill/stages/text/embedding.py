"""`EmbeddingStage`: a sentence embedding per document, as a list<float32> column.

A tokenizer stage and a model stage, like the classifiers; the model gives hidden states
([batch, tokens, width], e.g. a MiniLM or any transformers encoder's `last_hidden_state`),
pooled over each document's real tokens (`mean_pooling`, as sentence-transformers does, or
`last_token`) and, with `normalize`, scaled to unit length for cosine similarity.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa

from gristmill.errors import ModelError, PipelineBuildError
from gristmill.stages.base import CompositeStage, ProcessingStage
from gristmill.stages.text.classifiers.base import float_lists
from gristmill.stages.text.models.backends import Backend
from gristmill.stages.text.models.model import ModelStage, check_inference_params
from gristmill.stages.text.models.tokenizer import (
    PaddingSide,
    TokenizerStage,
    check_model_params,
)
from gristmill.tasks import DocumentBatch

__all__ = ["EmbeddingModelStage", "EmbeddingStage", "pool"]

Pooling = Literal["mean_pooling", "last_token"]


def pool(hidden: np.ndarray, attention_mask: np.ndarray, pooling: Pooling) -> np.ndarray:
    """[batch, width] embeddings from [batch, tokens, width] hidden states."""
    if pooling == "mean_pooling":
        mask = attention_mask[:, :, None].astype(np.float32)
        summed = (hidden * mask).sum(axis=1)
        return np.asarray(summed / np.maximum(mask.sum(axis=1), 1e-9), np.float32)
    last = attention_mask.shape[1] - 1 - np.argmax(attention_mask[:, ::-1], axis=1)
    return np.asarray(hidden[np.arange(len(hidden)), last], np.float32)


def check_pooling(stage: str, pooling: Any) -> None:
    """Refuse an unknown pooling."""
    if pooling not in ("mean_pooling", "last_token"):
        raise PipelineBuildError(
            f"stage '{stage}': embedding_pooling must be 'mean_pooling' or 'last_token', "
            f"got {pooling!r}"
        )


class EmbeddingModelStage(ModelStage):
    """The model half of `EmbeddingStage`."""

    head = "base"

    def __init__(
        self,
        model_path: str,
        embedding_field: str = "embeddings",
        embedding_pooling: Pooling = "mean_pooling",
        normalize: bool = True,
        model_inference_batch_size: int = 256,
        has_seq_order: bool = True,
        padding_side: PaddingSide = "right",
        backend: Backend = "auto",
        gpus: float = 0.0,
        autocast: bool = True,
    ):
        self.embedding_field = embedding_field
        self.embedding_pooling = embedding_pooling
        self.normalize = normalize
        check_pooling(self.name, embedding_pooling)
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
        """The embedding column."""
        return [], [self.embedding_field]

    def reduce_batch(self, outputs: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Pool the batch's hidden states over its real tokens."""
        if outputs.ndim != 3:
            raise ModelError(
                f"stage '{self.name}': an embedding model's first output must be hidden states "
                f"[batch, tokens, width]; this one has shape {list(outputs.shape)}"
            )
        embeddings = pool(outputs, attention_mask, self.embedding_pooling)
        if self.normalize:
            norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
            embeddings = embeddings / np.maximum(norms, 1e-12)
        return np.asarray(embeddings, np.float32)

    def column_types(self) -> dict[str, pa.DataType]:
        """A list<float32> per row."""
        return {self.embedding_field: pa.list_(pa.float32())}

    def output_columns(self, outputs: np.ndarray, lengths: np.ndarray) -> dict[str, pa.Array]:
        """Each row's embedding."""
        return {self.embedding_field: float_lists(outputs)}


class EmbeddingStage(CompositeStage[DocumentBatch, DocumentBatch]):
    """Embeds `text_field` into `embedding_field` (see the module's docstring)."""

    def __init__(
        self,
        model_path: str,
        embedding_field: str = "embeddings",
        text_field: str = "text",
        embedding_pooling: Pooling = "mean_pooling",
        normalize: bool = True,
        max_chars: int | None = None,
        max_seq_length: int = 512,
        padding_side: PaddingSide = "right",
        sort_by_length: bool = True,
        model_inference_batch_size: int = 256,
        autocast: bool = True,
        backend: Backend = "auto",
        gpus: float = 0.0,
    ):
        self.model_path = model_path
        self.embedding_field = embedding_field
        self.text_field = text_field
        self.embedding_pooling = embedding_pooling
        self.normalize = normalize
        self.max_chars = max_chars
        self.max_seq_length = max_seq_length
        self.padding_side = padding_side
        self.sort_by_length = sort_by_length
        self.model_inference_batch_size = model_inference_batch_size
        self.autocast = autocast
        self.backend = backend
        self.gpus = gpus
        check_pooling(self.name, embedding_pooling)
        check_model_params(self.name, model_path, max_chars, max_seq_length)
        check_inference_params(
            self.name, model_path, model_inference_batch_size, padding_side, backend, gpus
        )

    def decompose(self) -> list[ProcessingStage[Any, Any]]:
        """Tokenize, then embed."""
        return [
            TokenizerStage(
                self.model_path,
                text_field=self.text_field,
                max_chars=self.max_chars,
                max_seq_length=self.max_seq_length,
                sort_by_length=self.sort_by_length,
            ).with_(name=f"{self.name}_tokenizer"),
            EmbeddingModelStage(
                self.model_path,
                embedding_field=self.embedding_field,
                embedding_pooling=self.embedding_pooling,
                normalize=self.normalize,
                model_inference_batch_size=self.model_inference_batch_size,
                has_seq_order=self.sort_by_length,
                padding_side=self.padding_side,
                backend=self.backend,
                gpus=self.gpus,
                autocast=self.autocast,
            ).with_(name=f"{self.name}_model"),
        ]

    def inputs(self) -> tuple[list[str], list[str]]:
        """The text column."""
        return [], [self.text_field]

    def outputs(self) -> tuple[list[str], list[str]]:
        """The embedding column."""
        return [], [self.embedding_field]

"""`ModelStage`: runs a model over the token ids a `TokenizerStage` made.

Each task's rows go through the model `model_inference_batch_size` at a time, every inference
batch padded only to its own longest sequence. The subclass turns the model's outputs into
columns (`output_columns`); the token columns go, and rows sorted by the tokenizer go back to
their original order, so a model stage's output lines up with its tokenizer's input row by row.

The model is loaded once per worker (`setup`); a remote model is copied to the machine once
(`setup_on_node`). `gpus` > 0 runs it on a GPU and asks for that share of one: 0.25 lets four
workers share a card.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from typing import Any

import numpy as np
import pyarrow as pa

from gristmill.errors import ModelError, PipelineBuildError
from gristmill.stages.base import ProcessingStage
from gristmill.stages.resources import NodeInfo, Resources, WorkerMetadata
from gristmill.stages.text.models.backends import Backend, Device, ForwardPass, open_model
from gristmill.stages.text.models.files import model_config, model_dir
from gristmill.stages.text.models.tokenizer import (
    INPUT_IDS,
    SEQ_ORDER,
    PaddingSide,
    check_model_params,
)
from gristmill.tasks import DocumentBatch

__all__ = ["ModelStage", "check_inference_params", "model_resources", "pad_batch"]


def model_resources(stage: str, gpus: Any) -> Resources:
    """One CPU, and `gpus` of a GPU when it is above 0."""
    if isinstance(gpus, bool) or not isinstance(gpus, int | float) or gpus < 0:
        raise PipelineBuildError(
            f"stage '{stage}': gpus must be a number >= 0 (0: run on CPU), got {gpus!r}"
        )
    return Resources(cpus=1.0, gpus=float(gpus)) if gpus else Resources(cpus=1.0)


def pad_batch(
    sequences: list[np.ndarray], pad_id: int, side: PaddingSide
) -> tuple[np.ndarray, np.ndarray]:
    """`input_ids` and `attention_mask` (int64) for sequences padded to the longest of them."""
    width = max(1, max((len(s) for s in sequences), default=1))
    ids = np.full((len(sequences), width), pad_id, np.int64)
    mask = np.zeros((len(sequences), width), np.int64)
    for row, seq in enumerate(sequences):
        if side == "right":
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        else:
            ids[row, width - len(seq) :] = seq
            mask[row, width - len(seq) :] = 1
    return ids, mask


def check_inference_params(
    stage: str,
    model_path: Any,
    model_inference_batch_size: Any,
    padding_side: Any,
    backend: Any,
    gpus: Any,
) -> Resources:
    """Refuse unusable model-stage parameters; the resources the stage asks for."""
    check_model_params(stage, model_path)
    size = model_inference_batch_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise PipelineBuildError(
            f"stage '{stage}': model_inference_batch_size must be an int >= 1, got {size!r}"
        )
    if padding_side not in ("left", "right"):
        raise PipelineBuildError(
            f"stage '{stage}': padding_side must be 'left' or 'right', got {padding_side!r}"
        )
    if backend not in ("auto", "onnx", "torch"):
        raise PipelineBuildError(
            f"stage '{stage}': backend must be 'auto', 'onnx' or 'torch', got {backend!r}"
        )
    return model_resources(stage, gpus)


class ModelStage(ProcessingStage[DocumentBatch, DocumentBatch]):
    """The model half of a tokenizer + model pair (see the module's docstring).

    `backend` is "onnx", "torch" or "auto" (ONNX when the model directory has a `.onnx` file);
    `autocast` runs a PyTorch model in bf16 on a GPU. `has_seq_order` says whether the
    tokenizer sorted the rows (it must match the tokenizer's `sort_by_length`).
    """

    head = "sequence_classification"  # which transformers class loads a PyTorch checkpoint

    def __init__(
        self,
        model_path: str,
        model_inference_batch_size: int = 256,
        has_seq_order: bool = True,
        padding_side: PaddingSide = "right",
        backend: Backend = "auto",
        gpus: float = 0.0,
        autocast: bool = True,
    ):
        self.model_path = model_path
        self.model_inference_batch_size = model_inference_batch_size
        self.has_seq_order = has_seq_order
        self.padding_side = padding_side
        self.backend = backend
        self.gpus = gpus
        self.autocast = autocast
        self._model: ForwardPass | None = None
        self._pad_id = 0
        self._max_tokens: int | None = None
        self.check_model_settings()

    def check_model_settings(self) -> None:
        """Refuse unusable parameters now (called by the constructor)."""
        self.resources = check_inference_params(
            self.name,
            self.model_path,
            self.model_inference_batch_size,
            self.padding_side,
            self.backend,
            self.gpus,
        )

    def check_settings(self) -> None:
        """As every stage's, and `with_(gpus=...)` changes the GPU share asked for."""
        super().check_settings()
        gpus = self.gpus
        if gpus and self.resources.gpus != gpus and not self.resources.gpu_memory_gb:
            self.resources = model_resources(self.name, gpus)

    def inputs(self) -> tuple[list[str], list[str]]:
        """The token ids (and the original row order, when the tokenizer sorted)."""
        return [], [INPUT_IDS, *([SEQ_ORDER] if self.has_seq_order else [])]

    def setup_on_node(
        self, node_info: NodeInfo | None = None, worker_metadata: WorkerMetadata | None = None
    ) -> None:
        """Copy a remote model's files to this machine once."""
        model_dir(self.model_path)

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        """Load the model onto this worker's device."""
        directory = model_dir(self.model_path)
        config = model_config(directory)
        self._pad_id = int(config.get("pad_token_id") or 0)
        self._max_tokens = int(config.get("max_position_embeddings") or 0) or None
        self.configure(config)
        device: Device = "cuda" if self.resources.requires_gpu else "cpu"
        threads = int(os.environ.get("GRISTMILL_MODEL_THREADS", "0")) or int(self.resources.cpus)
        self._model = open_model(
            directory, self.model_path, self.backend, device, self.autocast, threads, self.head
        )

    def configure(self, config: dict[str, Any]) -> None:
        """Read what the subclass needs from the model's `config.json` (default: nothing)."""

    @abstractmethod
    def column_types(self) -> dict[str, pa.DataType]:
        """The columns the stage adds and their types (an empty batch gets them empty)."""

    @abstractmethod
    def output_columns(self, outputs: np.ndarray, lengths: np.ndarray) -> dict[str, pa.Array]:
        """The columns to add, from the model's outputs for every row (in the rows' order)
        and each row's token count."""

    def process(self, task: DocumentBatch) -> DocumentBatch:
        """The batch with the model's columns, in the tokenizer's input order."""
        if self._model is None:
            self.setup()
        assert self._model is not None
        table = task.to_pyarrow()
        for column in self.inputs()[1]:
            if column not in table.column_names:
                raise KeyError(
                    f"no column '{column}': put a TokenizerStage (with sort_by_length="
                    f"{self.has_seq_order}) before '{self.name}'"
                )
        ids = table.column(INPUT_IDS).combine_chunks()
        offsets = ids.offsets.to_numpy()
        flat = ids.values.to_numpy()
        sequences = [flat[offsets[i] : offsets[i + 1]] for i in range(len(ids))]
        lengths = np.diff(offsets)
        if len(sequences):
            columns = self.output_columns(self._run(sequences), lengths)
        else:
            columns = {name: pa.array([], kind) for name, kind in self.column_types().items()}
        table = table.drop_columns([INPUT_IDS])
        for name, column in columns.items():
            if name in table.column_names:
                table = table.drop_columns([name])
            table = table.append_column(name, column)
        if self.has_seq_order:
            order = table.column(SEQ_ORDER).to_numpy()
            table = table.drop_columns([SEQ_ORDER]).take(pa.array(np.argsort(order)))
        return DocumentBatch(data=table)

    def _run(self, sequences: list[np.ndarray]) -> np.ndarray:
        """The model's outputs for all rows, batch by batch; a [rows, ...] array."""
        assert self._model is not None
        size = self.model_inference_batch_size
        pieces = []
        for start in range(0, len(sequences), size):
            ids, mask = pad_batch(sequences[start : start + size], self._pad_id, self.padding_side)
            if self._max_tokens is not None and ids.shape[1] > self._max_tokens:
                raise ModelError(
                    f"stage '{self.name}': a sequence of {ids.shape[1]} tokens is longer than "
                    f"the model takes ({self._max_tokens}, max_position_embeddings in "
                    f"{self.model_path}/config.json); lower the tokenizer's max_seq_length"
                )
            out = self._model(ids, mask)
            if out.shape[0] != len(ids):
                raise ModelError(
                    f"stage '{self.name}': the model gave {out.shape[0]} outputs for a batch "
                    f"of {len(ids)}"
                )
            pieces.append(self.reduce_batch(out, mask))
        return np.concatenate(pieces)

    def reduce_batch(self, outputs: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """One inference batch's outputs made independent of its padding (default: as they
        are; an embedding stage pools hidden states here, while the mask is at hand)."""
        return outputs

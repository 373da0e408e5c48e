"""`TokenizerStage`: turns a batch's texts into token ids for a model stage, on CPU.

The ids are kept unpadded (`list<int32>`); the model stage pads each inference batch only to
its own longest sequence. With `sort_by_length` the rows are sorted by token count, so that
each inference batch holds sequences of similar length and little padding, and a column
remembers every row's place: the model stage puts the rows back in their original order.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gristmill.errors import ModelError, PipelineBuildError
from gristmill.stages.base import ProcessingStage
from gristmill.stages.resources import NodeInfo, WorkerMetadata
from gristmill.stages.text.models.files import model_dir, tokenizer_file
from gristmill.tasks import DocumentBatch

__all__ = ["INPUT_IDS", "SEQ_ORDER", "TokenizerStage"]

# The columns a tokenizer stage adds and its model stage removes.
INPUT_IDS = "_gm_input_ids"
SEQ_ORDER = "_gm_seq_order"

PaddingSide = Literal["left", "right"]


class TokenizerStage(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Tokenizes `text_field` with the `tokenizer.json` of `model_path`.

    Texts are cut to `max_chars` characters first (None: whole), token sequences to
    `max_seq_length` tokens (special tokens included). With `sort_by_length`, rows leave
    sorted by token count, shortest first, with their original positions in a column.
    """

    def __init__(
        self,
        model_path: str,
        text_field: str = "text",
        max_chars: int | None = None,
        max_seq_length: int = 512,
        sort_by_length: bool = True,
    ):
        self.model_path = model_path
        self.text_field = text_field
        self.max_chars = max_chars
        self.max_seq_length = max_seq_length
        self.sort_by_length = sort_by_length
        self.name = "TokenizerStage"
        self._tokenizer: Any = None
        check_model_params(self.name, model_path, max_chars, max_seq_length)

    def inputs(self) -> tuple[list[str], list[str]]:
        """The text column."""
        return [], [self.text_field]

    def outputs(self) -> tuple[list[str], list[str]]:
        """The token ids (and the original row order, when sorting)."""
        return [], [INPUT_IDS, *([SEQ_ORDER] if self.sort_by_length else [])]

    def setup_on_node(
        self, node_info: NodeInfo | None = None, worker_metadata: WorkerMetadata | None = None
    ) -> None:
        """Copy a remote model's files to this machine once."""
        model_dir(self.model_path)

    def setup(self, worker_metadata: WorkerMetadata | None = None) -> None:
        """Load the tokenizer."""
        tokenizers = _tokenizers()
        path = tokenizer_file(model_dir(self.model_path), self.model_path)
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception on a bad file
            raise ModelError(f"{path}: the tokenizers library cannot read it: {exc}") from exc
        tokenizer.no_padding()
        tokenizer.enable_truncation(self.max_seq_length)
        self._tokenizer = tokenizer

    def process(self, task: DocumentBatch) -> DocumentBatch:
        """The batch with its token ids, sorted by length if asked."""
        if self._tokenizer is None:
            self.setup()
        table = task.to_pyarrow()
        texts = text_column(table, self.text_field)
        if self.max_chars is not None:
            texts = pc.utf8_slice_codeunits(texts, 0, self.max_chars)
        encodings = self._tokenizer.encode_batch(texts.to_pylist())
        ids = [e.ids for e in encodings]
        lengths = np.fromiter((len(i) for i in ids), np.int64, len(ids))
        offsets = np.zeros(len(ids) + 1, np.int32)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter((t for i in ids for t in i), np.int32, int(offsets[-1]))
        column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
        table = table.append_column(INPUT_IDS, column)
        if self.sort_by_length:
            order = np.argsort(lengths, kind="stable")
            table = table.take(pa.array(order)).append_column(SEQ_ORDER, pa.array(order))
        return DocumentBatch(data=table)


def text_column(table: pa.Table, field: str) -> pa.ChunkedArray:
    """The text column, refusing a missing column or a null text with the row it is in."""
    if field not in table.column_names:
        raise KeyError(f"no column '{field}' (columns: {', '.join(table.column_names)})")
    column = table.column(field)
    if column.null_count:
        row = pc.index(pc.is_null(column), True).as_py()
        raise ValueError(f"column '{field}' is null in row {row}")
    return column


def check_model_params(
    stage: str, model_path: Any, max_chars: Any = None, max_seq_length: Any = 1
) -> None:
    """Refuse unusable model parameters when the pipeline is built, not on the first task."""
    if not isinstance(model_path, str) or not model_path:
        raise PipelineBuildError(
            f"stage '{stage}': model_path must name the model's directory or file, "
            f"got {model_path!r}"
        )
    if max_chars is not None and (not isinstance(max_chars, int) or max_chars < 1):
        raise PipelineBuildError(
            f"stage '{stage}': max_chars must be a number of characters >= 1 or None, "
            f"got {max_chars!r}"
        )
    if not isinstance(max_seq_length, int) or max_seq_length < 1:
        raise PipelineBuildError(
            f"stage '{stage}': max_seq_length must be a number of tokens >= 1, "
            f"got {max_seq_length!r}"
        )


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as exc:
        raise ModelError(
            "model stages need the 'tokenizers' package: pip install 'gristmill[models]'"
        ) from exc
    return tokenizers

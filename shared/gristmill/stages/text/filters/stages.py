"""The stages that apply filters and scores to a `DocumentBatch`: `ScoreFilter`, `Score`, `Filter`.

Every document a stage removes is recorded (`gristmill.tasks.record_drops`) with its id, the
stage, its score and the filter's parameters, so a writer with `drops_path=` persists why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gristmill.stages.base import ProcessingStage
from gristmill.stages.text.filters.base import FILTERS, DocumentFilter
from gristmill.tasks import DocumentBatch, record_drops

__all__ = ["Filter", "Score", "ScoreFilter"]


def _name_of(fn: object, default: str) -> str:
    if isinstance(fn, DocumentFilter):
        return fn.name
    return str(getattr(fn, "__name__", default))


def _texts(table: pa.Table, field: str) -> pa.ChunkedArray:
    """The text column, refusing nulls: a missing text is bad input, not a low score."""
    column = table.column(field)
    if column.null_count:
        row = pc.index(pc.is_null(column), True).as_py()
        raise ValueError(f"column '{field}' is null in row {row}")
    return column


def _json_value(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _doc_ids(task: DocumentBatch, table: pa.Table, id_field: str, rows: np.ndarray) -> list[str]:
    """Ids of the documents at `rows`: the id column, or `<task_id>#<row>` without one."""
    if id_field in table.column_names:
        return [str(v) for v in table.column(id_field).take(pa.array(rows)).to_pylist()]
    return [f"{task.task_id}#{row}" for row in rows.tolist()]


def _filtered(
    stage: ProcessingStage[Any, Any],
    task: DocumentBatch,
    table: pa.Table,
    keep: np.ndarray,
    scores: np.ndarray | None,
    reason: str,
    threshold: Any,
    id_field: str,
) -> DocumentBatch:
    """The batch without the rejected rows, with a drop record for each of them."""
    out = DocumentBatch(data=table.filter(pa.array(keep, pa.bool_())) if not keep.all() else table)
    rejected = np.flatnonzero(~keep)
    if len(rejected):
        record_drops(
            out,
            stage.name,
            _doc_ids(task, table, id_field, rejected),
            reason,
            [_json_value(s) for s in scores[rejected]] if scores is not None else None,
            threshold,
        )
    return out


class ScoreFilter(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Scores each document's `text_field` with `filter_obj` and keeps those it accepts
    (those it rejects, with `invert`). With `score_field`, the scores are kept as a column.

    Dropped documents are recorded with the id in `id_field` (or `<task_id>#<row>` when the
    batch has no such column: add `AddId` early for ids that survive every stage). The stage
    takes the filter's name. `filter_obj` may also be given as spec data,
    `{"filter": "WordCountFilter", "params": {"min_words": 50}}`.
    """

    def __init__(
        self,
        filter_obj: DocumentFilter | dict[str, Any],
        text_field: str = "text",
        score_field: str | None = None,
        invert: bool = False,
        id_field: str = "id",
    ):
        self.filter_obj = FILTERS.from_spec(filter_obj)
        self.text_field = text_field
        self.score_field = score_field
        self.invert = invert
        self.id_field = id_field
        self.name = self.filter_obj.name

    def inputs(self) -> tuple[list[str], list[str]]:
        """The text column."""
        return [], [self.text_field]

    def outputs(self) -> tuple[list[str], list[str]]:
        """The score column, if kept."""
        return [], [self.score_field] if self.score_field else []

    def get_params(self) -> dict[str, Any]:
        """As the constructor's, with the filter as spec data."""
        params = super().get_params()
        params["filter_obj"] = FILTERS.to_spec(self.filter_obj)
        return params

    def process(self, task: DocumentBatch) -> DocumentBatch:
        """Score, add the score column if asked, filter, record the drops."""
        table = task.to_pyarrow()
        if table.num_rows == 0:
            return task
        scores = np.asarray(self.filter_obj.score_column(_texts(table, self.text_field)))
        keep = np.asarray(self.filter_obj.keep_column(scores), bool)
        if self.invert:
            keep = ~keep
        if self.score_field:
            table = table.append_column(self.score_field, pa.array(scores))
        rule = f"{self.filter_obj.name} {'accepted' if self.invert else 'rejected'} it"
        params = self.filter_obj.get_params()
        return _filtered(self, task, table, keep, scores, rule, params, self.id_field)


class Score(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Adds `score_field`: `score_fn` (a `DocumentFilter`'s score, or a function of the text)
    of each document's `text_field`. Removes nothing."""

    def __init__(
        self,
        score_fn: DocumentFilter | Callable[[str], Any] | dict[str, Any],
        score_field: str,
        text_field: str = "text",
    ):
        self.score_fn = FILTERS.from_spec(score_fn) if isinstance(score_fn, dict) else score_fn
        self.score_field = score_field
        self.text_field = text_field
        fn = self.score_fn
        self.name = (
            fn.name if isinstance(fn, DocumentFilter) else getattr(fn, "__name__", "score_fn")
        )

    def inputs(self) -> tuple[list[str], list[str]]:
        """The text column."""
        return [], [self.text_field]

    def outputs(self) -> tuple[list[str], list[str]]:
        """The score column."""
        return [], [self.score_field]

    def get_params(self) -> dict[str, Any]:
        """As the constructor's, with a filter as spec data (functions cannot be in specs)."""
        params = super().get_params()
        if isinstance(self.score_fn, DocumentFilter):
            params["score_fn"] = FILTERS.to_spec(self.score_fn)
        return params

    def process(self, task: DocumentBatch) -> DocumentBatch:
        """The batch with its score column."""
        table = task.to_pyarrow()
        texts = _texts(table, self.text_field)
        if isinstance(self.score_fn, DocumentFilter):
            scores = np.asarray(self.score_fn.score_column(texts))
        else:
            scores = np.array([self.score_fn(t) for t in texts.to_pylist()])
        return DocumentBatch(data=table.append_column(self.score_field, pa.array(scores)))


class Filter(ProcessingStage[DocumentBatch, DocumentBatch]):
    """Keeps documents whose `filter_field` passes `filter_fn` (a `DocumentFilter`'s
    `keep_document`, or a function of the value); the others, with `invert`."""

    def __init__(
        self,
        filter_fn: DocumentFilter | Callable[[Any], bool] | dict[str, Any],
        filter_field: str,
        invert: bool = False,
        id_field: str = "id",
    ):
        self.filter_fn = FILTERS.from_spec(filter_fn) if isinstance(filter_fn, dict) else filter_fn
        self.filter_field = filter_field
        self.invert = invert
        self.id_field = id_field
        fn = self.filter_fn
        self.name = (
            fn.name if isinstance(fn, DocumentFilter) else getattr(fn, "__name__", "filter_fn")
        )

    def inputs(self) -> tuple[list[str], list[str]]:
        """The column the filter reads."""
        return [], [self.filter_field]

    def get_params(self) -> dict[str, Any]:
        """As the constructor's, with a filter as spec data (functions cannot be in specs)."""
        params = super().get_params()
        if isinstance(self.filter_fn, DocumentFilter):
            params["filter_fn"] = FILTERS.to_spec(self.filter_fn)
        return params

    def process(self, task: DocumentBatch) -> DocumentBatch:
        """The batch without the rejected rows."""
        table = task.to_pyarrow()
        if table.num_rows == 0:
            return task
        values = table.column(self.filter_field).to_numpy(zero_copy_only=False)
        if isinstance(self.filter_fn, DocumentFilter):
            keep = np.asarray(self.filter_fn.keep_column(values), bool)
        else:
            keep = np.fromiter((bool(self.filter_fn(v)) for v in values), bool, len(values))
        if self.invert:
            keep = ~keep
        rule = (
            f"{self.name} on '{self.filter_field}' {'accepted' if self.invert else 'rejected'} it"
        )
        return _filtered(self, task, table, keep, values, rule, None, self.id_field)

"""Checks the filter test files share: a filter's column path (C kernels, or the Python
fallback) must give exactly its document path's scores and decisions, for every column shape."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pytest

from gristmill.stages.text.filters import DocumentFilter, kernels

# Column shapes the executors hand a filter; the documents must number at least 21.
SHAPES: dict[str, Callable[[pa.Array], pa.Array | pa.ChunkedArray]] = {
    "chunked": lambda a: pa.chunked_array(
        [a.slice(0, 7), a.slice(7, 0), a.slice(7, 13), a.slice(20)]
    ),
    "sliced": lambda a: a.slice(3, 10),
    "large_string": lambda a: a.cast(pa.large_string()),
    "chunked_large_string": lambda a: pa.chunked_array([a.slice(0, 11), a.slice(11)]).cast(
        pa.large_string()
    ),
}


def keeps(f: DocumentFilter, texts: list[str]) -> list[bool]:
    """The filter's decisions on `texts`, document by document."""
    return [f.keep_document(f.score_document(t)) for t in texts]


def check_column_matches_documents(
    f: DocumentFilter, docs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """score_column/keep_column equal score_document/keep_document, with and without C."""
    scores = [f.score_document(d) for d in docs]
    decisions = [f.keep_document(s) for s in scores]
    fast = f.score_column(pa.array(docs))
    assert fast.tolist() == scores
    assert f.keep_column(fast).tolist() == decisions
    monkeypatch.setattr(kernels, "available", lambda: False)
    slow = f.score_column(pa.array(docs))
    assert slow.tolist() == scores
    assert f.keep_column(slow).tolist() == decisions


def check_shape_scores_alike(
    f: DocumentFilter,
    docs: list[str],
    shape: str,
    kernels_on: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A column of `shape` scores as its documents do."""
    scores = [f.score_document(d) for d in docs]
    if shape == "sliced":
        scores = scores[3:13]
    if not kernels_on:
        monkeypatch.setattr(kernels, "available", lambda: False)
    assert f.score_column(SHAPES[shape](pa.array(docs))).tolist() == scores

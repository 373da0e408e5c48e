"""Column-wide text statistics for the filters' vectorised paths.

The work is done by the C extension `gristmill._textscan` (one pass per document, the GIL
released), split across threads for large columns so a batch uses every core. Where the
extension was not built (no C compiler at install time), `available()` is False and filters
score document by document with their Python definitions instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

try:
    from gristmill import _textscan  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - exercised only where the extension could not be built
    _textscan = None

__all__ = ["available", "char_counts", "ngram_scores", "word_stats"]

# Below this many bytes of text a second thread costs more than it saves.
_PARALLEL_BYTES = 1 << 22
_THREADS = max(1, min(4, os.cpu_count() or 1))
_pool: ThreadPoolExecutor | None = None


def available() -> bool:
    """Whether the C kernels are installed."""
    return _textscan is not None


def _pieces(texts: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    chunks = texts.chunks if isinstance(texts, pa.ChunkedArray) else [texts]
    pieces: list[pa.Array] = []
    for chunk in chunks:
        if chunk.null_count:
            raise ValueError("text column holds nulls")
        size = chunk.nbytes
        parts = min(_THREADS, max(1, size // _PARALLEL_BYTES))
        step = -(-len(chunk) // parts) if len(chunk) else 0
        pieces.extend(chunk.slice(i, step) for i in range(0, len(chunk), step or 1))
    return [p for p in pieces if len(p)]


def _map(call: Callable[[tuple[Any, ...]], Any], texts: pa.Array | pa.ChunkedArray) -> list[Any]:
    global _pool
    pieces = _pieces(texts)
    args = [
        (p.buffers()[1], p.buffers()[2] or b"", pa.types.is_large_string(p.type), p.offset, len(p))
        for p in pieces
    ]
    if len(args) <= 1:
        return [call(a) for a in args]
    if _pool is None:
        _pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="gristmill-textscan")
    return list(_pool.map(call, args))


def _ints(parts: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(parts), np.int64) if parts else np.zeros(0, np.int64)


def word_stats(texts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per document: number of words, their total length, the longest word's length."""
    results = _map(lambda a: _textscan.word_stats(*a), texts)
    return (
        _ints([r[0] for r in results]),
        _ints([r[1] for r in results]),
        _ints([r[2] for r in results]),
    )


def char_counts(
    texts: pa.Array | pa.ChunkedArray, chars: frozenset[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Per document: its length in code points, and how many of them are in `chars`."""
    table = bytes(1 if chr(i) in chars else 0 for i in range(128))
    extra = np.array(sorted(ord(c) for c in chars if ord(c) >= 128), np.uint32).tobytes()
    results = _map(lambda a: _textscan.char_counts(*a, table, extra), texts)
    return _ints([r[0] for r in results]), _ints([r[1] for r in results])


def ngram_scores(texts: pa.Array | pa.ChunkedArray, n: int, duplicate: bool) -> np.ndarray:
    """Per document: the top n-gram score, or with `duplicate` the duplicate n-gram score."""
    parts = _map(lambda a: _textscan.ngram_scores(*a, n, 1 if duplicate else 0), texts)
    return np.frombuffer(b"".join(parts), np.float64) if parts else np.zeros(0, np.float64)

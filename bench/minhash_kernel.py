"""Benchmark: the MinHash signature kernel (gristmill.stages.deduplication.minhash).

    .venv/bin/python bench/minhash_kernel.py [--docs 20000] [--fallback-docs 2000] [--repeat 3]

Generates a seeded corpus of web-like documents (300-800 words each, drawn with Zipf-like
frequencies from a fixed vocabulary of a few thousand made-up words, with capitals and
punctuation; about 2-5 KB a document) and times `signatures()` for

  word 5-grams x 112 hashes  (14 bands x 8 rows)
  char 24-grams x 260 hashes

with the C kernel on 1 thread and on the default thread count (each kernel level the CPU
runs, 1 thread), and the numpy fallback on the first --fallback-docs documents. Prints docs/s
and MB/s (of UTF-8 text) as a table, then the same figures as one JSON line.
Budget (fuzzy dedup): 4,000 docs/s on 2 cores for the whole workflow at word 5-grams x 112.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from gristmill.stages.deduplication import minhash

_SYLLABLES = (  # noqa: SIM905 (a word list reads better as one string)
    "ka lo mi ne tu ra se vo pi da an el or is um en ti ba co fe gu ho ja le mo nu pa qui "
    "re so ta ve wi xe yo za ch th st pr gr bl tr"
).split()
_PUNCTUATION = [".", ",", "!", "?", ";", ":", " -", ""]


def vocabulary(rng: np.random.Generator, size: int) -> list[str]:
    """`size` distinct made-up words of 1-4 syllables."""
    words: dict[str, None] = {}
    while len(words) < size:
        parts = rng.choice(len(_SYLLABLES), size=int(rng.integers(1, 5)))
        words["".join(_SYLLABLES[p] for p in parts)] = None
    return list(words)


def corpus(docs: int, seed: int = 20260101, vocab_size: int = 4000) -> list[str]:
    """`docs` documents of 300-800 words with Zipf-like word frequencies."""
    rng = np.random.default_rng(seed)
    vocab = np.array(vocabulary(rng, vocab_size), dtype=object)
    weights = 1.0 / np.arange(1, vocab_size + 1) ** 1.05
    weights /= weights.sum()
    texts: list[str] = []
    for _ in range(docs):
        count = int(rng.integers(300, 801))
        words = vocab[rng.choice(vocab_size, size=count, p=weights)].tolist()
        ends = np.flatnonzero(rng.random(count) < 0.08)
        for i in ends:
            words[i] += _PUNCTUATION[int(rng.integers(len(_PUNCTUATION)))]
            if i + 1 < count:
                words[i + 1] = words[i + 1].capitalize()
        texts.append(" ".join(words))
    return texts


def timed(call: Callable[[], object], repeat: int) -> float:
    """The best wall time of `repeat` calls, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def with_threads(threads: int, call: Callable[[], object]) -> Callable[[], object]:
    """`call` with the kernel's thread pool sized to `threads`."""

    def run() -> object:
        saved, saved_pool = minhash._THREADS, minhash._pool
        minhash._THREADS, minhash._pool = threads, None
        try:
            return call()
        finally:
            if minhash._pool is not None:
                minhash._pool.shutdown()
            minhash._THREADS, minhash._pool = saved, saved_pool

    return run


def at_level(column: pa.Array, mode: int, n: int, a: np.ndarray, b: np.ndarray, level: int):  # type: ignore[no-untyped-def]
    """One call of the C kernel at one level, on one thread."""
    from gristmill import _minhash  # type: ignore[attr-defined]

    sigs = np.empty((len(column), len(a)), np.uint32)
    has = np.empty(len(column), np.uint8)
    buffers = column.buffers()

    def run() -> object:
        _minhash.signatures(
            buffers[1],
            buffers[2],
            False,
            column.offset,
            len(column),
            mode,
            n,
            a,
            b,
            sigs,
            has,
            level,
        )
        return sigs

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--fallback-docs", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    texts = corpus(args.docs)
    column = pa.array(texts, pa.string())
    small = column.slice(0, args.fallback_docs)
    mb = column.nbytes / 1e6
    mb_small = small.nbytes / 1e6
    print(
        f"{len(texts)} documents, {mb:.1f} MB, {mb / len(texts) * 1e3:.2f} KB a document; "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}); "
        f"default threads {minhash._THREADS}; C kernel {'built' if minhash.native() else 'MISSING'}"
    )

    configs = [
        ("word5x112", minhash.Shingling(word_ngrams=5), 112),
        ("char24x260", minhash.Shingling(char_ngrams=24), 260),
    ]
    rows: list[dict[str, object]] = []

    def record(config: str, variant: str, docs: int, size: float, seconds: float) -> None:
        rows.append(
            {
                "config": config,
                "variant": variant,
                "docs": docs,
                "docs_per_s": round(docs / seconds),
                "mb_per_s": round(size / seconds, 1),
            }
        )

    for name, shingling, hashes in configs:
        a, b = minhash.permutations(hashes, seed=42)
        mode, n = minhash._mode(shingling)
        if minhash.native():
            from gristmill import _minhash  # type: ignore[attr-defined]

            for level in _minhash.levels():
                seconds = timed(at_level(column, mode, n, a, b, level), args.repeat)
                label = ["baseline", "avx2", "avx512"][level]
                record(name, f"C {label}, 1 thread", len(column), mb, seconds)
            one = with_threads(1, lambda s=shingling, a=a, b=b: minhash.signatures(column, s, a, b))
            record(name, "C best, 1 thread", len(column), mb, timed(one, args.repeat))
            call = lambda s=shingling, a=a, b=b: minhash.signatures(column, s, a, b)  # noqa: E731
            seconds = timed(call, args.repeat)
            record(name, f"C best, {minhash._THREADS} threads", len(column), mb, seconds)
        fallback = lambda m=mode, n=n, a=a, b=b: minhash._fallback_signatures(  # noqa: E731
            small.to_pylist(), m, n, a, b
        )
        record(name, "numpy fallback", len(small), mb_small, timed(fallback, 1))

    print(f"\n| {'config':<11} | {'variant':<22} | {'docs':>6} | {'docs/s':>8} | {'MB/s':>7} |")
    print(f"|{'-' * 13}|{'-' * 24}|{'-' * 8}|{'-' * 10}|{'-' * 9}|")
    for row in rows:
        print(
            f"| {row['config']:<11} | {row['variant']:<22} | {row['docs']:>6} "
            f"| {row['docs_per_s']:>8} | {row['mb_per_s']:>7} |"
        )
    print(
        json.dumps(
            {"bench": "minhash_kernel", "docs": len(texts), "mb": round(mb, 1), "rows": rows}
        )
    )


if __name__ == "__main__":
    main()

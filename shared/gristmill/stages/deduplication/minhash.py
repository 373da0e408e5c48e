"""MinHash signatures and LSH band keys, for fuzzy deduplication.

A document becomes a set of shingles (`Shingling`: runs of n words or of n characters), each
hashed to 64 bits. For each of k random permutations h -> a*h + b (mod 2**64, `permutations`)
a signature keeps the smallest top-32-bit value over the document's shingles; two documents
agree on one value with probability close to the Jaccard similarity of their shingle sets.
Locality-sensitive hashing cuts the signature into b bands of r values (`band_keys`):
documents sharing a band key are candidate duplicates, which happens with probability
1 - (1 - s**r)**b at similarity s (`collision_probability`), a step near `lsh_threshold`.

The definitions, bit for bit (all arithmetic mod 2**64; mix is the splitmix64 finaliser):

- words: maximal runs of ASCII letters and digits and non-ASCII code points, lowercased in
  ASCII only; a word's hash is mix(FNV-1a 64 of its UTF-8 bytes); characters: code points of
  the raw text, each taken as code point + 1;
- shingle i of n units u: h = mix(u[i]), then h = mix(h * P + u[i + k]) for k = 1..n-1, with
  P the FNV prime; a document of 1..n-1 units has one shingle over all of them;
- signature value j: min over shingles h of (a[j] * h + b[j]) >> 32; with no shingle, 2**32-1;
- band key j: h = mix(j + 1), then h = mix(h * P + v) for each value v of band j.

The signatures are computed by the C extension `gristmill._minhash` (GIL released, large
columns split across threads); where it was not built, by numpy, to the same values.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

try:
    from gristmill import _minhash  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - exercised only where the extension could not be built
    _minhash = None

__all__ = [
    "Shingling",
    "band_keys",
    "collision_probability",
    "exact_jaccard",
    "lsh_threshold",
    "native",
    "permutations",
    "shingle_hashes",
    "signatures",
]

_MASK = (1 << 64) - 1
_PRIME = 0x100000001B3
_OFFSET = 0xCBF29CE484222325
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_U_PRIME, _U_MIX1, _U_MIX2 = np.uint64(_PRIME), np.uint64(_MIX1), np.uint64(_MIX2)
_U_30, _U_27, _U_31, _U_32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)
_EMPTY = np.uint32(0xFFFFFFFF)

# Over the UTF-8 bytes: every byte of a non-ASCII code point is >= 0x80, so this is "ASCII
# letters and digits and non-ASCII code points", exactly as the C kernel reads it.
_WORD = re.compile(rb"[A-Za-z0-9\x80-\xff]+")
# Shingles per step of the numpy signature: bounds its (shingles x hashes) temporary.
_FALLBACK_CHUNK = 4096
# Below this many bytes of text a second thread costs more than it saves.
_PARALLEL_BYTES = 1 << 18
_THREADS = max(1, min(4, os.cpu_count() or 1))
_pool: ThreadPoolExecutor | None = None


@dataclass(frozen=True)
class Shingling:
    """How a document becomes a set of shingles: `word_ngrams` consecutive words, or
    `char_ngrams` consecutive characters (exactly one of the two is set)."""

    word_ngrams: int | None = None
    char_ngrams: int | None = None

    def __post_init__(self) -> None:
        if (self.word_ngrams is None) == (self.char_ngrams is None):
            raise ValueError(
                "Shingling needs exactly one of word_ngrams and char_ngrams, got "
                f"word_ngrams={self.word_ngrams!r}, char_ngrams={self.char_ngrams!r}"
            )
        name, n = _spec(self)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"Shingling {name} must be an integer >= 1, got {n!r}")


def _spec(shingling: Shingling) -> tuple[str, int]:
    if shingling.word_ngrams is not None:
        return "word_ngrams", shingling.word_ngrams
    assert shingling.char_ngrams is not None
    return "char_ngrams", shingling.char_ngrams


def _mode(shingling: Shingling) -> tuple[int, int]:
    """(0 for words or 1 for characters, n), as the C kernel takes them."""
    name, n = _spec(shingling)
    return (0 if name == "word_ngrams" else 1), n


def native() -> bool:
    """Whether the C kernel is installed (otherwise numpy computes the same values)."""
    return _minhash is not None


def permutations(num_hashes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The `num_hashes` permutations h -> a*h + b (mod 2**64) for `seed`, as uint64 arrays
    (a, b): drawn from numpy's PCG64(seed), all of a first, then b; every a is odd."""
    if isinstance(num_hashes, bool) or not isinstance(num_hashes, int) or num_hashes < 1:
        raise ValueError(f"num_hashes must be an integer >= 1, got {num_hashes!r}")
    rng = np.random.Generator(np.random.PCG64(seed))
    a = rng.integers(0, 2**64, size=num_hashes, dtype=np.uint64, endpoint=False)
    b = rng.integers(0, 2**64, size=num_hashes, dtype=np.uint64, endpoint=False)
    a |= np.uint64(1)
    return a, b


# ---- the numpy definitions (the fallback, and the reference the C kernel is tested against) ----


def _mix_int(x: int) -> int:
    x ^= x >> 30
    x = (x * _MIX1) & _MASK
    x ^= x >> 27
    x = (x * _MIX2) & _MASK
    return x ^ (x >> 31)


def _mix(x: np.ndarray) -> np.ndarray:
    # numpy wraps uint64 array arithmetic silently (only scalar arithmetic warns).
    x = x ^ (x >> _U_30)
    x = x * _U_MIX1
    x = x ^ (x >> _U_27)
    x = x * _U_MIX2
    mixed: np.ndarray = x ^ (x >> _U_31)
    return mixed


def _word_hash(word: bytes) -> int:
    h = _OFFSET
    for byte in word:
        h = ((h ^ byte) * _PRIME) & _MASK
    return _mix_int(h)


def _units(text: str, mode: int, cache: dict[bytes, int]) -> np.ndarray:
    """The document as the values its shingles fold: word hashes, or code points + 1."""
    if mode == 1:
        return np.frombuffer(text.encode("utf-32-le"), np.uint32).astype(np.uint64) + np.uint64(1)
    words = _WORD.findall(text.encode("utf-8").lower())  # bytes.lower() is ASCII-only
    hashes = np.empty(len(words), np.uint64)
    for i, word in enumerate(words):
        h = cache.get(word)
        if h is None:
            h = cache[word] = _word_hash(word)
        hashes[i] = h
    return hashes


def _fold(units: np.ndarray, n: int) -> np.ndarray:
    """Shingle hashes, in order: the fold over every run of n units (one run if fewer)."""
    if len(units) == 0:
        return np.zeros(0, np.uint64)
    n = min(n, len(units))
    count = len(units) - n + 1
    h = _mix(units[:count])
    for k in range(1, n):
        h = _mix(h * _U_PRIME + units[k : k + count])
    return h


def _fallback_shingles(text: str, mode: int, n: int, cache: dict[bytes, int]) -> np.ndarray:
    return _fold(_units(text, mode, cache), n)


def _fallback_signature(hashes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sig = np.full(len(a), _EMPTY, np.uint32)
    for at in range(0, len(hashes), _FALLBACK_CHUNK):
        chunk = hashes[at : at + _FALLBACK_CHUNK, None]
        values = ((chunk * a + b) >> _U_32).min(axis=0).astype(np.uint32)
        np.minimum(sig, values, out=sig)
    return sig


def _fallback_signatures(
    texts: list[str], mode: int, n: int, a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    sigs = np.empty((len(texts), len(a)), np.uint32)
    has = np.empty(len(texts), np.bool_)
    cache: dict[bytes, int] = {}
    for row, text in enumerate(texts):
        hashes = _fallback_shingles(text, mode, n, cache)
        sigs[row] = _fallback_signature(hashes, a, b)
        has[row] = len(hashes) > 0
    return sigs, has


# ---- the public functions ----


def shingle_hashes(text: str, shingling: Shingling) -> np.ndarray:
    """The document's distinct shingle hashes, sorted, as uint64 (for exact Jaccard, tests)."""
    if not isinstance(text, str):
        raise TypeError(f"shingle_hashes needs a str, got {type(text).__name__}")
    mode, n = _mode(shingling)
    if _minhash is not None:
        hashes = np.frombuffer(_minhash.shingles(text.encode("utf-8"), mode, n, -1), np.uint64)
    else:
        hashes = _fallback_shingles(text, mode, n, {})
    return np.unique(hashes)


def _column(texts: pa.Array | pa.ChunkedArray | list[str]) -> pa.ChunkedArray:
    if isinstance(texts, list):
        texts = pa.array(texts, pa.large_string())
    if isinstance(texts, pa.Array):
        texts = pa.chunked_array([texts], texts.type)
    if not isinstance(texts, pa.ChunkedArray):
        raise TypeError(f"signatures needs a string column, got {type(texts).__name__}")
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        raise TypeError(f"signatures needs a string column, got {texts.type}")
    if texts.null_count:
        raise ValueError("text column holds nulls")
    return texts


def _permutation_arrays(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != np.uint64 or b.dtype != np.uint64 or a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            "a and b must be 1-d uint64 arrays of one length (see permutations()), got "
            f"{a.dtype}{list(a.shape)} and {b.dtype}{list(b.shape)}"
        )
    if len(a) == 0:
        raise ValueError("a and b must hold at least one permutation")
    return np.ascontiguousarray(a), np.ascontiguousarray(b)


def _pieces(column: pa.ChunkedArray) -> list[tuple[pa.Array, int]]:
    """The column in slices for the threads, each with the row it starts at."""
    pieces: list[tuple[pa.Array, int]] = []
    row = 0
    for chunk in column.chunks:
        parts = min(_THREADS, max(1, chunk.nbytes // _PARALLEL_BYTES))
        step = -(-len(chunk) // parts) if len(chunk) else 0
        pieces.extend((chunk.slice(i, step), row + i) for i in range(0, len(chunk), step or 1))
        row += len(chunk)
    return [(p, r) for p, r in pieces if len(p)]


def _native_signatures(
    column: pa.ChunkedArray, mode: int, n: int, a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    global _pool
    sigs = np.empty((len(column), len(a)), np.uint32)
    has = np.empty(len(column), np.bool_)
    flags = has.view(np.uint8)

    def run(piece: tuple[pa.Array, int]) -> None:
        array, row = piece
        buffers = array.buffers()
        end = row + len(array)
        _minhash.signatures(
            buffers[1],
            buffers[2] or b"",
            pa.types.is_large_string(array.type),
            array.offset,
            len(array),
            mode,
            n,
            a,
            b,
            sigs[row:end],
            flags[row:end],
            -1,
        )

    pieces = _pieces(column)
    if len(pieces) <= 1:
        for piece in pieces:
            run(piece)
    else:
        if _pool is None:
            _pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="gristmill-minhash")
        list(_pool.map(run, pieces))
    return sigs, has


def signatures(
    texts: pa.Array | pa.ChunkedArray | list[str],
    shingling: Shingling,
    a: np.ndarray,
    b: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures of a string column under the permutations (a, b).

    Returns (sigs, has_shingles): sigs uint32 of shape (len(texts), len(a)), has_shingles
    bool of len(texts). A document with no shingle (no word, or empty) has has_shingles
    False and a signature of all 0xFFFFFFFF. Nulls raise ValueError.
    """
    mode, n = _mode(shingling)
    a, b = _permutation_arrays(a, b)
    column = _column(texts)
    if _minhash is None:
        return _fallback_signatures(column.to_pylist(), mode, n, a, b)
    return _native_signatures(column, mode, n, a, b)


def band_keys(sigs: np.ndarray, num_bands: int, rows_per_band: int) -> np.ndarray:
    """LSH band keys: uint64 of shape (docs, num_bands); key j folds the signature values
    sigs[:, j*rows_per_band:(j+1)*rows_per_band], starting from mix(j + 1)."""
    sigs = np.asarray(sigs)
    if sigs.ndim != 2 or sigs.dtype != np.uint32:
        raise ValueError(
            f"band_keys needs a 2-d uint32 signature array, got {sigs.dtype}{list(sigs.shape)}"
        )
    _check_bands(num_bands, rows_per_band)
    needed = num_bands * rows_per_band
    if needed > sigs.shape[1]:
        raise ValueError(
            f"{num_bands} bands of {rows_per_band} rows need {needed} signature values, "
            f"the signatures have {sigs.shape[1]}"
        )
    bands = sigs[:, :needed].reshape(len(sigs), num_bands, rows_per_band).astype(np.uint64)
    seeds = _mix(np.arange(1, num_bands + 1, dtype=np.uint64))
    keys = np.broadcast_to(seeds, (len(sigs), num_bands))
    for t in range(rows_per_band):
        keys = _mix(keys * _U_PRIME + bands[:, :, t])
    return np.ascontiguousarray(keys, np.uint64)


def _check_bands(num_bands: int, rows_per_band: int) -> None:
    if num_bands < 1 or rows_per_band < 1:
        raise ValueError(
            f"num_bands and rows_per_band must be >= 1, got {num_bands} and {rows_per_band}"
        )


def lsh_threshold(num_bands: int, rows_per_band: int) -> float:
    """The similarity near which LSH with these bands switches from miss to hit: (1/b)**(1/r)."""
    _check_bands(num_bands, rows_per_band)
    return float((1.0 / num_bands) ** (1.0 / rows_per_band))


def collision_probability(similarity: float, num_bands: int, rows_per_band: int) -> float:
    """The probability that two documents of Jaccard `similarity` share a band key:
    1 - (1 - s**r)**b."""
    _check_bands(num_bands, rows_per_band)
    if not 0.0 <= similarity <= 1.0:
        raise ValueError(f"similarity must be in [0, 1], got {similarity!r}")
    return float(1.0 - (1.0 - similarity**rows_per_band) ** num_bands)


def exact_jaccard(x: np.ndarray, y: np.ndarray) -> float:
    """|x & y| / |x | y| of two sorted, distinct uint64 arrays (`shingle_hashes`); 0.0 when
    both are empty."""
    common = int(np.intersect1d(x, y, assume_unique=True).size)
    union = len(x) + len(y) - common
    return common / union if union else 0.0

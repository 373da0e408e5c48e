"""MinHash signatures and LSH band keys (gristmill.stages.deduplication.minhash).

The C kernel (`gristmill._minhash`, every level this CPU runs) must equal the numpy fallback
bit for bit over awkward inputs (empty, short, punctuation-only, non-ASCII, block-crossing,
sliced, chunked, thread-split columns); the documented definitions are checked against hashes
computed here by hand with plain Python ints; and the helpers (permutations, Shingling,
band_keys, the LSH formulas, exact_jaccard) are pinned with their exact error messages.
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import pyarrow as pa
import pytest

from gristmill import _minhash
from gristmill.stages.deduplication import minhash
from gristmill.stages.deduplication.minhash import Shingling

LEVELS = _minhash.levels()
MASK = (1 << 64) - 1
P = 0x100000001B3
FNV_OFFSET = 0xCBF29CE484222325
EMPTY = 0xFFFFFFFF
BLOCK = 1024  # the kernel's block of shingles (minhash.c)

# (mode, n) as the kernel takes them: word 5-grams, char 24-grams, and n=1 of each.
SHINGLINGS = {
    "word5": Shingling(word_ngrams=5),
    "char24": Shingling(char_ngrams=24),
    "word1": Shingling(word_ngrams=1),
    "char1": Shingling(char_ngrams=1),
}


# ---- hand definitions (plain Python ints, independent of the module) ----


def _splitmix(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def _fnv1a(data: bytes) -> int:
    h = FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * P) & MASK
    return h


def _fold(units: list[int]) -> int:
    h = _splitmix(units[0])
    for u in units[1:]:
        h = _splitmix((h * P + u) & MASK)
    return h


def _word_unit(word: str) -> int:
    return _splitmix(_fnv1a(word.encode("utf-8")))


def _hand_signature(hashes: list[int], a: np.ndarray, b: np.ndarray) -> list[int]:
    return [
        min((((int(aj) * h + int(bj)) & MASK) >> 32 for h in hashes), default=EMPTY)
        for aj, bj in zip(a, b, strict=True)
    ]


# ---- corpora ----


def _words(rng: np.random.Generator, count: int, vocab: list[str]) -> list[str]:
    return [vocab[i] for i in rng.integers(0, len(vocab), size=count)]


_VOCAB = [
    "the", "Quick", "BROWN", "fox", "jumps", "over", "lazy", "dog", "café", "Été", "naïve",
    "日本語", "テキスト", "😀", "🎉x", "𝔘𝔫𝔦", "straße", "ǅungla", "x1", "42", "Ωmega", "zürich",
]  # fmt: skip


def _doc(seed: int, count: int, joiner: str = " ") -> str:
    rng = np.random.default_rng(seed)
    return joiner.join(_words(rng, count, _VOCAB))


def _chars(seed: int, count: int) -> str:
    """`count` code points, mixing ASCII, 2-, 3- and 4-byte UTF-8."""
    rng = np.random.default_rng(seed)
    alphabet = "abcXYZ 09.,!é ñÉ日本語😀🎉𝔘\t\n"
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=count))


def _corpus() -> list[str]:
    texts = [
        "",
        "short doc",  # fewer units than n: one shingle
        "... !!! ,,, --- ??? ___ ~~~",  # punctuation only: no words
        " \t\r\n ",  # whitespace only
        "a",
        "Café naïve façade résumé 日本語のテキスト 😀🎉 emoji 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 done 👍🏽 ok",
        "ABC Def GHI jkl MNO pqr STU vwx",
        "abc def ghi jkl mno pqr stu vwx",
        "ÉTÉ Été été ÉtÉ",
        "abc123 456def 7-8-9 x_y a\x00b tail",
        "   leading and trailing whitespace\n\ttabs\r\n",
        "😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀",
    ]
    # around the block boundary for any n: BLOCK + n - 2 .. BLOCK + n, two blocks, and more
    for i, count in enumerate([1023, 1024, 1025, 1027, 1028, 1029, 1047, 1048, 2052, 2071, 3000]):
        texts.append(_doc(100 + i, count))
        texts.append(_chars(200 + i, count))
    return texts


CORPUS = _corpus()


# ---- calling the kernel and the fallback ----


def _perms(k: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    return minhash.permutations(k, seed)


def _edge_perms() -> tuple[np.ndarray, np.ndarray]:
    """Permutations at the carries' edges (the AVX2 kernel builds a*h + b from 32-bit halves)."""
    a = [1, MASK, 0xFFFFFFFF, 1 << 32, (1 << 32) + 1, 1 << 63, (1 << 63) + 1, 0, 2, 3]
    b = [0, MASK, MASK, 0xFFFFFFFF, 1 << 32, 1 << 63, 0, MASK, 0x80000000, 12345]
    ra, rb = _perms(7, seed=99)
    return (
        np.concatenate([np.array(a, np.uint64), ra]),
        np.concatenate([np.array(b, np.uint64), rb]),
    )


def _kernel(
    array: pa.Array, mode: int, n: int, a: np.ndarray, b: np.ndarray, level: int
) -> tuple[np.ndarray, np.ndarray]:
    """`_minhash.signatures` on one Arrow string array at one kernel level (one call)."""
    sigs = np.full((len(array), len(a)), 0x5A5A5A5A, np.uint32)
    has = np.full(len(array), 7, np.uint8)
    buffers = array.buffers()
    _minhash.signatures(
        buffers[1],
        buffers[2] or b"",
        pa.types.is_large_string(array.type),
        array.offset,
        len(array),
        mode,
        n,
        np.ascontiguousarray(a),
        np.ascontiguousarray(b),
        sigs,
        has,
        level,
    )
    assert set(np.unique(has).tolist()) <= {0, 1}
    return sigs, has.astype(np.bool_)


def _mode(shingling: Shingling) -> tuple[int, int]:
    if shingling.word_ngrams is not None:
        return 0, shingling.word_ngrams
    assert shingling.char_ngrams is not None
    return 1, shingling.char_ngrams


@functools.cache
def _reference(name: str, perms: str) -> tuple[np.ndarray, np.ndarray]:
    """The numpy fallback over CORPUS (computed once per shingling and permutation set)."""
    mode, n = _mode(SHINGLINGS[name])
    a, b = _edge_perms() if perms == "edge" else _perms(37)
    return minhash._fallback_signatures(CORPUS, mode, n, a, b)


def _assert_same(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> None:
    sigs, has = got
    want_sigs, want_has = want
    assert sigs.dtype == np.uint32
    assert has.dtype == np.bool_
    assert sigs.shape == want_sigs.shape
    np.testing.assert_array_equal(has, want_has)
    bad = np.flatnonzero((sigs != want_sigs).any(axis=1))
    assert bad.size == 0, f"rows differing from the fallback: {bad.tolist()}"


# ---- 1. the C kernel equals the numpy fallback ----


def test_corpus_covers_what_it_claims() -> None:
    mode, n = _mode(SHINGLINGS["word5"])
    counts = [len(minhash._fallback_shingles(t, mode, n, {})) for t in CORPUS]
    assert counts[0] == 0
    assert counts[1] == 1  # two words, one 5-gram over both
    assert counts[2] == 0
    assert counts[3] == 0
    assert max(counts) > 2 * BLOCK
    assert any(ord(c) > 0xFFFF for c in CORPUS[5])  # 4-byte UTF-8


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", list(SHINGLINGS))
@pytest.mark.parametrize("arrow_type", [pa.string(), pa.large_string()], ids=str)
@pytest.mark.parametrize("perms", ["random", "edge"])
def test_kernel_equals_fallback(level: int, name: str, arrow_type: pa.DataType, perms: str) -> None:
    mode, n = _mode(SHINGLINGS[name])
    a, b = _edge_perms() if perms == "edge" else _perms(37)
    got = _kernel(pa.array(CORPUS, arrow_type), mode, n, a, b, level)
    _assert_same(got, _reference(name, perms))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("k", [1, 15, 16, 17, 112])
def test_kernel_equals_fallback_for_any_number_of_hashes(level: int, k: int) -> None:
    a, b = _perms(k, seed=k)
    texts = [*CORPUS[:12], CORPUS[-2]]
    for mode, n in [(0, 5), (1, 24)]:
        want = minhash._fallback_signatures(texts, mode, n, a, b)
        _assert_same(_kernel(pa.array(texts), mode, n, a, b, level), want)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("arrow_type", [pa.string(), pa.large_string()], ids=str)
def test_kernel_reads_a_sliced_array(level: int, arrow_type: pa.DataType) -> None:
    a, b = _perms(37)
    full = pa.array(CORPUS, arrow_type)
    sliced = full.slice(5, 14)
    assert sliced.offset == 5
    for name in ("word5", "char24"):
        mode, n = _mode(SHINGLINGS[name])
        want_sigs, want_has = _reference(name, "random")
        _assert_same(_kernel(sliced, mode, n, a, b, level), (want_sigs[5:19], want_has[5:19]))


def test_empty_and_wordless_documents_have_no_shingles() -> None:
    a, b = _perms(37)
    texts = ["", "... !!! ,,, --- ???", " \t\n", "word"]
    for level in LEVELS:
        sigs, has = _kernel(pa.array(texts), 0, 5, a, b, level)
        assert has.tolist() == [False, False, False, True]
        assert (sigs[:3] == EMPTY).all()
        assert (sigs[3] != EMPTY).any()
        sigs, has = _kernel(pa.array(texts), 1, 24, a, b, level)
        assert has.tolist() == [False, True, True, True]  # characters: only "" has none
        assert (sigs[0] == EMPTY).all()
    sigs, has = minhash.signatures(texts, SHINGLINGS["word5"], a, b)
    assert has.tolist() == [False, False, False, True]
    assert (sigs[:3] == EMPTY).all()


def test_case_folds_ascii_only_in_word_mode() -> None:
    a, b = _perms(64)
    texts = ["ABC Def GHI", "abc def ghi", "É", "é", "ÉTÉ", "ÉtÉ", "été"]
    words, _ = minhash.signatures(texts, Shingling(word_ngrams=2), a, b)
    chars, _ = minhash.signatures(texts, Shingling(char_ngrams=2), a, b)
    assert (words[0] == words[1]).all()
    assert not (words[2] == words[3]).all()
    assert (words[4] == words[5]).all()  # only the ASCII "T" is lowered
    assert not (words[5] == words[6]).all()
    assert not (chars[0] == chars[1]).all()  # characters are the raw text
    assert not (chars[4] == chars[5]).all()


@pytest.mark.parametrize("name", list(SHINGLINGS))
def test_public_signatures_equal_fallback_over_arrow_inputs(name: str) -> None:
    shingling = SHINGLINGS[name]
    a, b = _perms(37)
    want = _reference(name, "random")
    want_sigs, want_has = want
    _assert_same(minhash.signatures(CORPUS, shingling, a, b), want)
    _assert_same(minhash.signatures(pa.array(CORPUS, pa.string()), shingling, a, b), want)
    _assert_same(minhash.signatures(pa.array(CORPUS, pa.large_string()), shingling, a, b), want)
    sliced = pa.array(CORPUS, pa.large_string()).slice(3, 20)
    _assert_same(minhash.signatures(sliced, shingling, a, b), (want_sigs[3:23], want_has[3:23]))
    chunked = pa.chunked_array(
        [
            pa.array(CORPUS[:4]),
            pa.array([], pa.string()),
            pa.array(CORPUS[4:13]).slice(2),  # a chunk with a nonzero offset
            pa.array(CORPUS[13:]),
        ]
    )
    rows = list(range(4)) + list(range(6, len(CORPUS)))
    _assert_same(minhash.signatures(chunked, shingling, a, b), (want_sigs[rows], want_has[rows]))


def _big_column() -> list[str]:
    texts = [_doc(1000 + i, 150 + (i % 40)) for i in range(900)]
    texts[7] = ""
    texts[300] = "!!! ???"
    texts[850] = "one two"
    return texts


@pytest.mark.parametrize("name", ["word5", "char24"])
def test_thread_split_column_equals_fallback(name: str) -> None:
    shingling = SHINGLINGS[name]
    mode, n = _mode(shingling)
    a, b = _perms(32)
    texts = _big_column()
    head, tail = pa.array(texts[:820]), pa.array(texts[820:], pa.string())
    column = pa.chunked_array([head, tail])
    assert head.nbytes > 2 * minhash._PARALLEL_BYTES
    if minhash._THREADS > 1:
        assert len(minhash._pieces(column)) > 2  # the big chunk really is split
    want = minhash._fallback_signatures(texts, mode, n, a, b)
    _assert_same(minhash.signatures(column, shingling, a, b), want)
    _assert_same(minhash.signatures(texts, shingling, a, b), want)
    for level in LEVELS:
        _assert_same(_kernel(pa.array(texts, pa.large_string()), mode, n, a, b, level), want)


def test_public_signatures_of_no_rows_and_of_blank_rows() -> None:
    a, b = _perms(5)
    sigs, has = minhash.signatures([], SHINGLINGS["word5"], a, b)
    assert sigs.shape == (0, 5)
    assert sigs.dtype == np.uint32
    assert has.shape == (0,)
    assert has.dtype == np.bool_
    sigs, has = minhash.signatures(pa.array(["", ""]), SHINGLINGS["char24"], a, b)
    assert not has.any()
    assert (sigs == EMPTY).all()


# ---- 2. shingle hashes ----


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", list(SHINGLINGS))
def test_kernel_shingles_equal_fallback_in_order(level: int, name: str) -> None:
    mode, n = _mode(SHINGLINGS[name])
    for text in CORPUS:
        got = np.frombuffer(_minhash.shingles(text.encode("utf-8"), mode, n, level), np.uint64)
        want = minhash._fallback_shingles(text, mode, n, {})
        np.testing.assert_array_equal(got, want, err_msg=repr(text[:40]))


@pytest.mark.parametrize("name", list(SHINGLINGS))
def test_shingle_hashes_are_sorted_unique(name: str) -> None:
    shingling = SHINGLINGS[name]
    mode, n = _mode(shingling)
    for text in [*CORPUS[:12], CORPUS[-1], "la la la la la la la la la la la la", "x" * 60]:
        got = minhash.shingle_hashes(text, shingling)
        assert got.dtype == np.uint64
        np.testing.assert_array_equal(got, np.unique(minhash._fallback_shingles(text, mode, n, {})))
        assert all(x < y for x, y in zip(got.tolist(), got.tolist()[1:], strict=False))
    assert minhash.shingle_hashes("la la la la la la la la", Shingling(word_ngrams=2)).size == 1


def test_shingle_hashes_needs_a_str() -> None:
    with pytest.raises(TypeError, match=r"^shingle_hashes needs a str, got bytes$"):
        minhash.shingle_hashes(b"abc", SHINGLINGS["word5"])  # type: ignore[arg-type]


# ---- 3. the definitions, by hand ----


def test_hand_helpers_match_published_vectors() -> None:
    assert _fnv1a(b"") == FNV_OFFSET
    assert _fnv1a(b"a") == 0xAF63DC4C8601EC8C  # FNV-1a 64 test vector
    assert _fnv1a(b"foobar") == 0x85944171F73967E8
    assert _splitmix(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF  # splitmix64(seed 0), 1st


def _hashes(text: str, shingling: Shingling) -> list[int]:
    return [int(h) for h in minhash.shingle_hashes(text, shingling)]


def test_word_shingle_hashes_by_hand() -> None:
    a, b, c = (_word_unit(w) for w in "abc")
    want = sorted({_fold([a, b]), _fold([b, c])})
    assert _hashes("a b c", Shingling(word_ngrams=2)) == want
    assert _hashes("A, b;\tC!", Shingling(word_ngrams=2)) == want  # separators, ASCII case
    assert _hashes("a b c", Shingling(word_ngrams=1)) == sorted(
        {_splitmix(a), _splitmix(b), _splitmix(c)}
    )
    # fewer words than n: one shingle over all of them
    assert _hashes("Hello wörld", Shingling(word_ngrams=5)) == [
        _fold([_word_unit("hello"), _word_unit("wörld")])
    ]
    assert _hashes("Été", Shingling(word_ngrams=1)) == [_splitmix(_word_unit("Été"))]
    assert _hashes("Été", Shingling(word_ngrams=1)) != _hashes("été", Shingling(word_ngrams=1))
    assert _hashes("x_y", Shingling(word_ngrams=1)) == sorted(
        {_splitmix(_word_unit("x")), _splitmix(_word_unit("y"))}
    )


def test_char_shingle_hashes_by_hand() -> None:
    assert _hashes("ab", Shingling(char_ngrams=2)) == [_fold([ord("a") + 1, ord("b") + 1])]
    assert _hashes("Ab", Shingling(char_ngrams=2)) == [_fold([ord("A") + 1, ord("b") + 1])]
    assert _hashes("é😀", Shingling(char_ngrams=1)) == sorted(
        {_splitmix(0xE9 + 1), _splitmix(0x1F600 + 1)}
    )
    assert _hashes("abc", Shingling(char_ngrams=2)) == sorted({_fold([98, 99]), _fold([99, 100])})
    assert _hashes("日本", Shingling(char_ngrams=24)) == [_fold([0x65E5 + 1, 0x672C + 1])]
    assert _hashes("", Shingling(char_ngrams=2)) == []


def test_signature_values_by_hand() -> None:
    a, b = _perms(6, seed=3)
    text = "the quick brown fox jumps"
    hashes = _hashes(text, Shingling(word_ngrams=2))
    assert len(hashes) == 4
    want = _hand_signature(hashes, a, b)
    sigs, has = minhash.signatures([text, ""], Shingling(word_ngrams=2), a, b)
    assert sigs[0].tolist() == want
    assert sigs[1].tolist() == [EMPTY] * 6
    assert has.tolist() == [True, False]
    ea, eb = _edge_perms()
    want = _hand_signature(hashes, ea, eb)
    for level in LEVELS:
        got, _ = _kernel(pa.array([text]), 0, 2, ea, eb, level)
        assert got[0].tolist() == want


# ---- 4. permutations ----


def test_permutations_are_seeded_odd_uint64() -> None:
    a, b = minhash.permutations(112, 42)
    assert a.dtype == np.uint64
    assert b.dtype == np.uint64
    assert a.shape == (112,)
    assert b.shape == (112,)
    assert (a & np.uint64(1) == 1).all()
    a2, b2 = minhash.permutations(112, 42)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)
    a3, b3 = minhash.permutations(112, 43)
    assert not (a == a3).any()
    assert not (b == b3).any()
    assert len(set(a.tolist())) == 112
    assert len(set(b.tolist())) == 112
    # as documented: PCG64(seed), all of a first (then made odd), then b
    rng = np.random.Generator(np.random.PCG64(42))
    raw_a = rng.integers(0, 2**64, size=112, dtype=np.uint64)
    np.testing.assert_array_equal(a, raw_a | np.uint64(1))
    np.testing.assert_array_equal(b, rng.integers(0, 2**64, size=112, dtype=np.uint64))


@pytest.mark.parametrize("bad", [0, -3, True, False, "3", 2.0, None])
def test_permutations_reject_bad_counts(bad: object) -> None:
    message = f"num_hashes must be an integer >= 1, got {bad!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        minhash.permutations(bad, 1)  # type: ignore[arg-type]


# ---- 5. Shingling ----


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {},
            "Shingling needs exactly one of word_ngrams and char_ngrams, got word_ngrams=None, char_ngrams=None",
        ),
        (
            {"word_ngrams": 5, "char_ngrams": 24},
            "Shingling needs exactly one of word_ngrams and char_ngrams, got word_ngrams=5, char_ngrams=24",
        ),
        ({"word_ngrams": 0}, "Shingling word_ngrams must be an integer >= 1, got 0"),
        ({"word_ngrams": True}, "Shingling word_ngrams must be an integer >= 1, got True"),
        ({"word_ngrams": -1}, "Shingling word_ngrams must be an integer >= 1, got -1"),
        ({"word_ngrams": 2.0}, "Shingling word_ngrams must be an integer >= 1, got 2.0"),
        ({"char_ngrams": 0}, "Shingling char_ngrams must be an integer >= 1, got 0"),
        ({"char_ngrams": False}, "Shingling char_ngrams must be an integer >= 1, got False"),
        ({"char_ngrams": "24"}, "Shingling char_ngrams must be an integer >= 1, got '24'"),
    ],
)
def test_shingling_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Shingling(**kwargs)  # type: ignore[arg-type]


def test_shingling_accepts_one_positive_int() -> None:
    assert Shingling(word_ngrams=1).word_ngrams == 1
    assert Shingling(char_ngrams=24).char_ngrams == 24
    assert Shingling(char_ngrams=3).word_ngrams is None


# ---- 6. band keys ----


def _random_sigs(docs: int, k: int, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**32, size=(docs, k), dtype=np.uint32)


def test_band_keys_shape_and_equality() -> None:
    sigs = _random_sigs(6, 32)
    sigs[3] = sigs[1]
    keys = minhash.band_keys(sigs, 4, 8)
    assert keys.shape == (6, 4)
    assert keys.dtype == np.uint64
    assert keys.flags.c_contiguous
    np.testing.assert_array_equal(keys[3], keys[1])
    assert not (keys[0] == keys[2]).any()
    np.testing.assert_array_equal(minhash.band_keys(sigs.copy(), 4, 8), keys)


def test_band_keys_by_hand() -> None:
    sigs = _random_sigs(2, 12)
    keys = minhash.band_keys(sigs, 3, 4)
    for row in range(2):
        for j in range(3):
            h = _splitmix(j + 1)
            for v in sigs[row, j * 4 : (j + 1) * 4].tolist():
                h = _splitmix((h * P + v) & MASK)
            assert int(keys[row, j]) == h


@pytest.mark.parametrize("position", [0, 7, 8, 13, 31])
def test_band_keys_change_only_the_changed_band(position: int) -> None:
    sigs = _random_sigs(3, 32)
    before = minhash.band_keys(sigs, 4, 8)
    changed = sigs.copy()
    changed[1, position] ^= np.uint32(1)
    after = minhash.band_keys(changed, 4, 8)
    band = position // 8
    np.testing.assert_array_equal(after[[0, 2]], before[[0, 2]])
    for j in range(4):
        assert (after[1, j] == before[1, j]) == (j != band)


def test_band_keys_are_seeded_by_band() -> None:
    sigs = np.tile(_random_sigs(2, 8), (1, 5))  # every band holds the same 8 values
    keys = minhash.band_keys(sigs, 5, 8)
    for row in keys:
        assert len(set(row.tolist())) == 5


def test_band_keys_ignore_values_past_the_bands() -> None:
    sigs = _random_sigs(2, 20)
    keys = minhash.band_keys(sigs, 2, 8)
    changed = sigs.copy()
    changed[:, 16:] += np.uint32(1)
    np.testing.assert_array_equal(minhash.band_keys(changed, 2, 8), keys)


def test_band_keys_errors() -> None:
    sigs = _random_sigs(5, 32)
    message = "5 bands of 8 rows need 40 signature values, the signatures have 32"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        minhash.band_keys(sigs, 5, 8)
    message = "band_keys needs a 2-d uint32 signature array, got int64[5, 32]"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        minhash.band_keys(sigs.astype(np.int64), 4, 8)
    message = "band_keys needs a 2-d uint32 signature array, got uint64[5, 32]"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        minhash.band_keys(sigs.astype(np.uint64), 4, 8)
    message = "band_keys needs a 2-d uint32 signature array, got uint32[32]"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        minhash.band_keys(sigs[0], 4, 8)
    message = "num_bands and rows_per_band must be >= 1, got 0 and 8"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        minhash.band_keys(sigs, 0, 8)


# ---- 7. the LSH formulas ----


def test_lsh_threshold() -> None:
    assert round(minhash.lsh_threshold(20, 13), 4) == 0.7942
    assert round(minhash.lsh_threshold(14, 8), 4) == 0.7190
    assert minhash.lsh_threshold(20, 13) == pytest.approx((1 / 20) ** (1 / 13), rel=1e-15)
    assert minhash.lsh_threshold(1, 5) == 1.0
    with pytest.raises(
        ValueError, match=r"^num_bands and rows_per_band must be >= 1, got 3 and 0$"
    ):
        minhash.lsh_threshold(3, 0)


@pytest.mark.parametrize(("bands", "rows"), [(20, 13), (14, 8)])
def test_collision_probability(bands: int, rows: int) -> None:
    assert minhash.collision_probability(0.0, bands, rows) == 0.0
    assert minhash.collision_probability(1.0, bands, rows) == 1.0
    threshold = minhash.lsh_threshold(bands, rows)
    at = minhash.collision_probability(threshold, bands, rows)
    # s**r == 1/b at the threshold, so the probability is 1 - (1 - 1/b)**b
    assert at == pytest.approx(1 - (1 - 1 / bands) ** bands, rel=1e-12)
    assert 0.3 < at < 0.7
    assert minhash.collision_probability(0.5, bands, rows) == pytest.approx(
        1 - (1 - 0.5**rows) ** bands, rel=1e-12
    )
    curve = [minhash.collision_probability(s / 20, bands, rows) for s in range(21)]
    assert curve == sorted(curve)


def test_collision_probability_exact_values() -> None:
    assert minhash.collision_probability(minhash.lsh_threshold(20, 13), 20, 13) == pytest.approx(
        1 - 0.95**20, rel=1e-12
    )
    assert round(1 - 0.95**20, 6) == 0.641514


@pytest.mark.parametrize("bad", [-0.01, 1.01, math.nan, math.inf])
def test_collision_probability_rejects_bad_similarity(bad: float) -> None:
    message = f"similarity must be in [0, 1], got {bad!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        minhash.collision_probability(bad, 20, 13)


def test_exact_jaccard() -> None:
    x = np.array([1, 2, 3, 4], np.uint64)
    y = np.array([3, 4, 5], np.uint64)
    assert minhash.exact_jaccard(x, y) == pytest.approx(2 / 5)
    assert minhash.exact_jaccard(x, x) == 1.0
    empty = np.zeros(0, np.uint64)
    assert minhash.exact_jaccard(empty, empty) == 0.0
    assert minhash.exact_jaccard(x, empty) == 0.0


# ---- 8. the estimate tracks the Jaccard similarity ----


def _pair(shared: int, distinct: int, seed: int) -> tuple[str, str]:
    """Two documents sharing `shared` words, each with `distinct` words of its own."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))

    def words(count: int) -> list[str]:
        return ["".join(rng.choice(letters, size=7)) for _ in range(count)]

    common = words(shared)
    return " ".join(common + words(distinct)), " ".join(words(distinct) + common)


@pytest.mark.parametrize(("target", "distinct"), [(0.9, 50), (0.6, 300), (0.3, 1050)])
def test_signature_agreement_tracks_jaccard(target: float, distinct: int) -> None:
    shingling = SHINGLINGS["word5"]
    a, b = minhash.permutations(256, 20260101)
    for seed in range(3):
        x, y = _pair(904, distinct, seed)
        exact = minhash.exact_jaccard(
            minhash.shingle_hashes(x, shingling), minhash.shingle_hashes(y, shingling)
        )
        assert abs(exact - target) < 0.02
        sigs, has = minhash.signatures([x, y], shingling, a, b)
        assert has.all()
        estimate = float((sigs[0] == sigs[1]).mean())
        assert abs(estimate - exact) < 0.08, (seed, exact, estimate)


def test_identical_and_disjoint_documents() -> None:
    a, b = minhash.permutations(256, 1)
    x, y = _pair(0, 400, 9)
    sigs, _ = minhash.signatures([x, x, y], SHINGLINGS["word5"], a, b)
    assert (sigs[0] == sigs[1]).all()
    assert (sigs[0] == sigs[2]).mean() < 0.02


# ---- 9. errors ----


@pytest.mark.parametrize(
    "texts",
    [
        ["a", None],
        pa.array(["a", None, "b"], pa.string()),
        pa.array([None], pa.large_string()),
        pa.chunked_array([pa.array(["a"]), pa.array([None, "b"], pa.string())]),
    ],
    ids=["list", "string", "large_string", "chunked"],
)
def test_nulls_raise(texts: object) -> None:
    a, b = _perms(4)
    with pytest.raises(ValueError, match=r"^text column holds nulls$"):
        minhash.signatures(texts, SHINGLINGS["word5"], a, b)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (pa.array([1, 2]), "signatures needs a string column, got int64"),
        (pa.array([b"a"], pa.binary()), "signatures needs a string column, got binary"),
        (pa.chunked_array([pa.array([1.5])]), "signatures needs a string column, got double"),
        (np.array(["a", "b"]), "signatures needs a string column, got ndarray"),
        (("a", "b"), "signatures needs a string column, got tuple"),
        ("a b c", "signatures needs a string column, got str"),
    ],
    ids=["int64", "binary", "chunked-double", "ndarray", "tuple", "str"],
)
def test_non_string_columns_raise(texts: object, message: str) -> None:
    a, b = _perms(4)
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        minhash.signatures(texts, SHINGLINGS["word5"], a, b)  # type: ignore[arg-type]


_PERM_MESSAGE = "a and b must be 1-d uint64 arrays of one length (see permutations()), got "


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        (np.ones(4, np.int64), np.ones(4, np.uint64), _PERM_MESSAGE + "int64[4] and uint64[4]"),
        (np.ones(4, np.uint64), np.ones(4, np.uint32), _PERM_MESSAGE + "uint64[4] and uint32[4]"),
        (np.ones(4, np.uint64), np.ones(3, np.uint64), _PERM_MESSAGE + "uint64[4] and uint64[3]"),
        (
            np.ones((2, 2), np.uint64),
            np.ones((2, 2), np.uint64),
            _PERM_MESSAGE + "uint64[2, 2] and uint64[2, 2]",
        ),
        ([1, 3], [0, 0], _PERM_MESSAGE + "int64[2] and int64[2]"),
        (
            np.ones(0, np.uint64),
            np.ones(0, np.uint64),
            "a and b must hold at least one permutation",
        ),
    ],
    ids=["a-int64", "b-uint32", "lengths", "2-d", "lists", "empty"],
)
def test_bad_permutations_raise(a: object, b: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        minhash.signatures(["a b"], SHINGLINGS["word5"], a, b)  # type: ignore[arg-type]


def test_non_contiguous_permutations_are_accepted() -> None:
    a, b = _perms(20)
    want, _ = minhash.signatures(CORPUS[:8], SHINGLINGS["word5"], a[::2].copy(), b[::2].copy())
    got, _ = minhash.signatures(CORPUS[:8], SHINGLINGS["word5"], a[::2], b[::2])
    np.testing.assert_array_equal(got, want)


def test_kernel_argument_checks() -> None:
    array = pa.array(["a b c"])
    a, b = _perms(4)
    best = LEVELS[-1]
    with pytest.raises(
        ValueError, match=f"^kernel level {best + 1} is not supported here \\(best is {best}\\)$"
    ):
        _kernel(array, 0, 5, a, b, best + 1)
    with pytest.raises(ValueError, match=r"^mode must be 0 \(words\) or 1 \(characters\)$"):
        _kernel(array, 2, 5, a, b, -1)
    with pytest.raises(ValueError, match=r"^n must be >= 1$"):
        _kernel(array, 0, 0, a, b, -1)
    with pytest.raises(
        ValueError, match=r"^a and b must be uint64 buffers of the same length >= 1$"
    ):
        _kernel(array, 0, 5, a, b[:3], -1)
    with pytest.raises(ValueError, match=r"^n must be >= 1$"):
        _minhash.shingles(b"a b", 0, 0, -1)
    with pytest.raises(ValueError, match=f"^kernel level {best + 1} is not supported"):
        _minhash.shingles(b"a b", 0, 2, best + 1)
    buffers = array.buffers()
    sigs, has = np.empty((1, 4), np.uint32), np.empty(1, np.uint8)
    with pytest.raises(ValueError, match=r"^offsets buffer too short for the requested slice$"):
        _minhash.signatures(buffers[1], buffers[2], False, 0, 2, 0, 5, a, b, sigs, has, -1)
    short = np.empty((1, 2), np.uint32)
    with pytest.raises(ValueError, match=r"^output buffers too short$"):
        _minhash.signatures(buffers[1], buffers[2], False, 0, 1, 0, 5, a, b, short, has, -1)

/* gristmill._minhash: MinHash signatures of Arrow string arrays, for fuzzy deduplication.
 *
 * The definitions (word and character shingles, their 64-bit hashes, the permutations
 * h -> a*h + b mod 2^64 and the signature value min(top 32 bits)) are those of the numpy
 * fallback in gristmill.stages.deduplication.minhash; tests check both agree bit for bit.
 *
 * A document is read in blocks: up to BLOCK shingles are hashed (the fold over n units runs
 * as n vectorisable passes over the block) and folded into the running minima before the
 * next block, so memory stays small whatever the document's length. The minima loop keeps a
 * block of permutations in vector registers and streams the shingles past them. The hot
 * functions are compiled three times (baseline, AVX2, AVX-512) and picked at run time; all
 * three compute the same integers. Inputs are valid UTF-8 (Arrow guarantees it; a truncated
 * sequence is read byte by byte rather than past the end). The GIL is released while scanning.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MH_X86 1
#include <immintrin.h>
#define MH_AVX2 __attribute__((target("avx2")))
#define MH_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl")))
#else
#define MH_X86 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define MH_INLINE static inline __attribute__((always_inline))
#else
#define MH_INLINE static inline
#endif

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL
#define BLOCK 1024   /* shingles hashed, then folded into the minima, at a time */
#define PERM_PAD 16  /* permutations are padded to a multiple of this (the widest kernel block) */

enum { LEVEL_BASE = 0, LEVEL_AVX2 = 1, LEVEL_AVX512 = 2 };
static int best_level = LEVEL_BASE;

MH_INLINE uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* ---- units: a document as a sequence of 64-bit values (word hashes, or code points + 1) ---- */

/* Word bytes, lowercased (ASCII A-Z -> a-z); 0 for a separator. Every byte of a non-ASCII
 * code point is >= 0x80, so a word is a maximal run of non-zero entries, no decoding needed. */
static uint8_t WORD_BYTE[256];

static void init_word_bytes(void) {
    for (int c = 0; c < 256; c++) {
        uint8_t v = 0;
        if (c >= 0x80 || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z')) v = (uint8_t)c;
        else if (c >= 'A' && c <= 'Z') v = (uint8_t)(c + ('a' - 'A'));
        WORD_BYTE[c] = v;
    }
}

/* Append the hashes of the next words of data[*pos:end) to u, at most `room`; advance *pos. */
static Py_ssize_t next_words(const uint8_t *data, int64_t *pos, int64_t end, uint64_t *u, Py_ssize_t room) {
    Py_ssize_t got = 0;
    int64_t i = *pos;
    while (got < room) {
        while (i < end && !WORD_BYTE[data[i]]) i++;
        if (i >= end) break;
        uint64_t h = FNV_OFFSET;
        uint8_t c;
        while (i < end && (c = WORD_BYTE[data[i]]) != 0) {
            h = (h ^ c) * FNV_PRIME;
            i++;
        }
        u[got++] = mix64(h);
    }
    *pos = i;
    return got;
}

/* Append (code point + 1) of the next characters of data[*pos:end) to u, at most `room`. */
static Py_ssize_t next_chars(const uint8_t *data, int64_t *pos, int64_t end, uint64_t *u, Py_ssize_t room) {
    Py_ssize_t got = 0;
    int64_t i = *pos;
    while (got < room && i < end) {
        uint8_t b = data[i];
        if (b < 0x80) {
            u[got++] = (uint64_t)b + 1;
            i++;
            continue;
        }
        int len = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1;
        uint32_t cp = b;
        if (len > end - i) len = 1;
        if (len == 2) cp = ((uint32_t)(b & 0x1F) << 6) | (data[i + 1] & 0x3F);
        else if (len == 3)
            cp = ((uint32_t)(b & 0x0F) << 12) | ((uint32_t)(data[i + 1] & 0x3F) << 6) | (data[i + 2] & 0x3F);
        else if (len == 4)
            cp = ((uint32_t)(b & 0x07) << 18) | ((uint32_t)(data[i + 1] & 0x3F) << 12) |
                 ((uint32_t)(data[i + 2] & 0x3F) << 6) | (data[i + 3] & 0x3F);
        u[got++] = (uint64_t)cp + 1;
        i += len;
    }
    *pos = i;
    return got;
}

/* ---- the fold: h[i] = mix(u[i]), then n-1 times h[i] = mix(h[i] * P + u[i + k]) ---- */

MH_INLINE void fold_body(uint64_t *restrict h, const uint64_t *restrict u, Py_ssize_t count, int n) {
    for (Py_ssize_t i = 0; i < count; i++) h[i] = mix64(u[i]);
    for (int k = 1; k < n; k++) {
        const uint64_t *restrict v = u + k;
        for (Py_ssize_t i = 0; i < count; i++) h[i] = mix64(h[i] * FNV_PRIME + v[i]);
    }
}

static void fold_base(uint64_t *h, const uint64_t *u, Py_ssize_t count, int n) { fold_body(h, u, count, n); }

/* ---- the minima: mins[j] holds, in its top 32 bits, min over shingles of (a[j]*h + b[j]) >> 32 ---- */

typedef struct {
    uint64_t *a, *a_hi, *b; /* padded to `padded` entries; a_hi = a >> 32 */
    Py_ssize_t k, padded;
} Perms;

static void minima_base(const uint64_t *h, Py_ssize_t count, const Perms *p, uint64_t *mins) {
    for (Py_ssize_t j0 = 0; j0 < p->padded; j0 += 8) {
        uint64_t a[8], b[8];
        uint32_t m[8];
        for (int t = 0; t < 8; t++) {
            a[t] = p->a[j0 + t];
            b[t] = p->b[j0 + t];
            m[t] = (uint32_t)(mins[j0 + t] >> 32);
        }
        for (Py_ssize_t i = 0; i < count; i++) {
            uint64_t x = h[i];
            for (int t = 0; t < 8; t++) {
                uint32_t v = (uint32_t)((a[t] * x + b[t]) >> 32);
                m[t] = v < m[t] ? v : m[t];
            }
        }
        for (int t = 0; t < 8; t++) mins[j0 + t] = (uint64_t)m[t] << 32;
    }
}

#if MH_X86
/* a*x + b mod 2^64 from 32x32->64 products: lo(a)*lo(x) + b + ((lo(a)*hi(x) + hi(a)*lo(x)) << 32).
 * Only the top halves matter, and the unsigned 32-bit minimum keeps them right (the bottom
 * halves of the minima are junk, dropped at the end). */
#define AVX2_STEP(A, AH, B, M)                                                                 \
    do {                                                                                       \
        __m256i lo_ = _mm256_add_epi64(_mm256_mul_epu32(A, x), B);                             \
        __m256i mid_ = _mm256_add_epi64(_mm256_mul_epu32(A, xh), _mm256_mul_epu32(AH, x));     \
        M = _mm256_min_epu32(M, _mm256_add_epi64(lo_, _mm256_slli_epi64(mid_, 32)));           \
    } while (0)

MH_AVX2 static void minima_avx2(const uint64_t *h, Py_ssize_t count, const Perms *p, uint64_t *mins) {
    for (Py_ssize_t j0 = 0; j0 < p->padded; j0 += 16) {
        __m256i a0 = _mm256_loadu_si256((const __m256i *)(p->a + j0));
        __m256i a1 = _mm256_loadu_si256((const __m256i *)(p->a + j0 + 4));
        __m256i a2 = _mm256_loadu_si256((const __m256i *)(p->a + j0 + 8));
        __m256i a3 = _mm256_loadu_si256((const __m256i *)(p->a + j0 + 12));
        __m256i ah0 = _mm256_loadu_si256((const __m256i *)(p->a_hi + j0));
        __m256i ah1 = _mm256_loadu_si256((const __m256i *)(p->a_hi + j0 + 4));
        __m256i ah2 = _mm256_loadu_si256((const __m256i *)(p->a_hi + j0 + 8));
        __m256i ah3 = _mm256_loadu_si256((const __m256i *)(p->a_hi + j0 + 12));
        __m256i b0 = _mm256_loadu_si256((const __m256i *)(p->b + j0));
        __m256i b1 = _mm256_loadu_si256((const __m256i *)(p->b + j0 + 4));
        __m256i b2 = _mm256_loadu_si256((const __m256i *)(p->b + j0 + 8));
        __m256i b3 = _mm256_loadu_si256((const __m256i *)(p->b + j0 + 12));
        __m256i m0 = _mm256_loadu_si256((const __m256i *)(mins + j0));
        __m256i m1 = _mm256_loadu_si256((const __m256i *)(mins + j0 + 4));
        __m256i m2 = _mm256_loadu_si256((const __m256i *)(mins + j0 + 8));
        __m256i m3 = _mm256_loadu_si256((const __m256i *)(mins + j0 + 12));
        for (Py_ssize_t i = 0; i < count; i++) {
            __m256i x = _mm256_set1_epi64x((long long)h[i]);
            __m256i xh = _mm256_srli_epi64(x, 32);
            AVX2_STEP(a0, ah0, b0, m0);
            AVX2_STEP(a1, ah1, b1, m1);
            AVX2_STEP(a2, ah2, b2, m2);
            AVX2_STEP(a3, ah3, b3, m3);
        }
        _mm256_storeu_si256((__m256i *)(mins + j0), m0);
        _mm256_storeu_si256((__m256i *)(mins + j0 + 4), m1);
        _mm256_storeu_si256((__m256i *)(mins + j0 + 8), m2);
        _mm256_storeu_si256((__m256i *)(mins + j0 + 12), m3);
    }
}

MH_AVX2 static void fold_avx2(uint64_t *h, const uint64_t *u, Py_ssize_t count, int n) { fold_body(h, u, count, n); }

/* AVX-512DQ multiplies 64-bit lanes directly. */
#define AVX512_STEP(A, B, M) M = _mm512_min_epu32(M, _mm512_add_epi64(_mm512_mullo_epi64(A, x), B))

MH_AVX512 static void minima_avx512(const uint64_t *h, Py_ssize_t count, const Perms *p, uint64_t *mins) {
    for (Py_ssize_t j0 = 0; j0 < p->padded; j0 += 16) {
        __m512i a0 = _mm512_loadu_si512((const void *)(p->a + j0));
        __m512i a1 = _mm512_loadu_si512((const void *)(p->a + j0 + 8));
        __m512i b0 = _mm512_loadu_si512((const void *)(p->b + j0));
        __m512i b1 = _mm512_loadu_si512((const void *)(p->b + j0 + 8));
        __m512i m0 = _mm512_loadu_si512((const void *)(mins + j0));
        __m512i m1 = _mm512_loadu_si512((const void *)(mins + j0 + 8));
        for (Py_ssize_t i = 0; i < count; i++) {
            __m512i x = _mm512_set1_epi64((long long)h[i]);
            AVX512_STEP(a0, b0, m0);
            AVX512_STEP(a1, b1, m1);
        }
        _mm512_storeu_si512((void *)(mins + j0), m0);
        _mm512_storeu_si512((void *)(mins + j0 + 8), m1);
    }
}

MH_AVX512 static void fold_avx512(uint64_t *h, const uint64_t *u, Py_ssize_t count, int n) { fold_body(h, u, count, n); }
#endif

typedef void (*FoldFn)(uint64_t *, const uint64_t *, Py_ssize_t, int);
typedef void (*MinimaFn)(const uint64_t *, Py_ssize_t, const Perms *, uint64_t *);

static void pick(int level, FoldFn *fold, MinimaFn *minima) {
    *fold = fold_base;
    *minima = minima_base;
#if MH_X86
    if (level == LEVEL_AVX2) { *fold = fold_avx2; *minima = minima_avx2; }
    if (level == LEVEL_AVX512) { *fold = fold_avx512; *minima = minima_avx512; }
#endif
}

static int parse_level(int level) {
    if (level < 0) return best_level;
    if (level > best_level) {
        PyErr_Format(PyExc_ValueError, "kernel level %d is not supported here (best is %d)", level, best_level);
        return -1;
    }
    return level;
}

/* ---- one document: its shingles, block by block ---- */

typedef struct {
    int mode, n;
    uint64_t *units; /* BLOCK + n - 1 */
    uint64_t *hashes; /* BLOCK */
    FoldFn fold;
} Shingler;

typedef void (*BlockFn)(void *state, const uint64_t *hashes, Py_ssize_t count);

/* Feed the shingle hashes of data[begin:end) to `emit` in order; return how many there were. */
static Py_ssize_t shingle(const Shingler *s, const uint8_t *data, int64_t begin, int64_t end, BlockFn emit, void *state) {
    Py_ssize_t filled = 0, total = 0, room = BLOCK + s->n - 1;
    int64_t pos = begin;
    for (;;) {
        filled += s->mode == 0 ? next_words(data, &pos, end, s->units + filled, room - filled)
                               : next_chars(data, &pos, end, s->units + filled, room - filled);
        if (filled >= s->n) {
            Py_ssize_t count = filled - s->n + 1;
            s->fold(s->hashes, s->units, count, s->n);
            emit(state, s->hashes, count);
            total += count;
            memmove(s->units, s->units + count, (size_t)(s->n - 1) * sizeof(uint64_t));
            filled = s->n - 1;
        }
        if (pos >= end) break;
    }
    if (total == 0 && filled > 0) { /* fewer units than n: one shingle over all of them */
        s->fold(s->hashes, s->units, 1, (int)filled);
        emit(state, s->hashes, 1);
        total = 1;
    }
    return total;
}

static int shingler_open(Shingler *s, int mode, int n, int level) {
    FoldFn fold;
    MinimaFn unused;
    pick(level, &fold, &unused);
    s->mode = mode;
    s->n = n;
    s->fold = fold;
    s->units = malloc(((size_t)BLOCK + (size_t)n) * sizeof(uint64_t));
    s->hashes = malloc((size_t)BLOCK * sizeof(uint64_t));
    if (!s->units || !s->hashes) {
        free(s->units);
        free(s->hashes);
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void shingler_close(Shingler *s) {
    free(s->units);
    free(s->hashes);
}

static int check_mode(int mode, int n) {
    if (mode != 0 && mode != 1) {
        PyErr_SetString(PyExc_ValueError, "mode must be 0 (words) or 1 (characters)");
        return -1;
    }
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "n must be >= 1");
        return -1;
    }
    return 0;
}

/* ---- exported functions ---- */

typedef struct { uint64_t *mins; const Perms *perms; MinimaFn minima; } SigState;

static void sig_block(void *state, const uint64_t *hashes, Py_ssize_t count) {
    SigState *st = state;
    st->minima(hashes, count, st->perms, st->mins);
}

/* signatures(offsets, data, large, array offset, length, mode, n, a, b, out, has, level)
 * a, b: uint64 buffers of k permutations; out: writable uint32[length * k]; has: writable
 * uint8[length] (1 where the document has a shingle); level -1 for the best kernel. */
static PyObject *signatures(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer off, data, a, b, out, has;
    int large, mode, n, level;
    Py_ssize_t start, length;
    if (!PyArg_ParseTuple(args, "y*y*pnniiy*y*w*w*i", &off, &data, &large, &start, &length, &mode, &n, &a, &b,
                          &out, &has, &level))
        return NULL;
    PyObject *result = NULL;
    Perms perms = {0};
    uint64_t *mins = NULL;
    Shingler sh = {0};
    int opened = 0;
    Py_ssize_t k = a.len / 8, width = large ? 8 : 4;
    if (check_mode(mode, n) < 0 || (level = parse_level(level)) < 0) goto done;
    if (a.len != b.len || a.len % 8 != 0 || k < 1) {
        PyErr_SetString(PyExc_ValueError, "a and b must be uint64 buffers of the same length >= 1");
        goto done;
    }
    if (start < 0 || length < 0 || (start + length + 1) * width > off.len) {
        PyErr_SetString(PyExc_ValueError, "offsets buffer too short for the requested slice");
        goto done;
    }
    if (out.len < length * k * 4 || has.len < length) {
        PyErr_SetString(PyExc_ValueError, "output buffers too short");
        goto done;
    }
    const int32_t *off32 = large ? NULL : (const int32_t *)off.buf;
    const int64_t *off64 = large ? (const int64_t *)off.buf : NULL;
    for (Py_ssize_t d = 0; d <= length; d++) {
        int64_t at = large ? off64[start + d] : off32[start + d];
        int64_t before = d == 0 ? 0 : (large ? off64[start + d - 1] : off32[start + d - 1]);
        if (at < before || at > data.len) {
            PyErr_SetString(PyExc_ValueError, "offsets out of order or past the data buffer");
            goto done;
        }
    }
    perms.k = k;
    perms.padded = (k + PERM_PAD - 1) / PERM_PAD * PERM_PAD;
    perms.a = malloc((size_t)perms.padded * sizeof(uint64_t));
    perms.a_hi = malloc((size_t)perms.padded * sizeof(uint64_t));
    perms.b = malloc((size_t)perms.padded * sizeof(uint64_t));
    mins = malloc((size_t)perms.padded * sizeof(uint64_t));
    if (!perms.a || !perms.a_hi || !perms.b || !mins) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(perms.a, a.buf, (size_t)k * 8);
    memcpy(perms.b, b.buf, (size_t)k * 8);
    for (Py_ssize_t j = k; j < perms.padded; j++) { perms.a[j] = 1; perms.b[j] = 0; }
    for (Py_ssize_t j = 0; j < perms.padded; j++) perms.a_hi[j] = perms.a[j] >> 32;
    if (shingler_open(&sh, mode, n, level) < 0) goto done;
    opened = 1;
    {
        FoldFn unused;
        SigState st = {mins, &perms, NULL};
        pick(level, &unused, &st.minima);
        const uint8_t *bytes = (const uint8_t *)data.buf;
        uint32_t *sig = (uint32_t *)out.buf;
        uint8_t *flags = (uint8_t *)has.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t d = 0; d < length; d++) {
            int64_t begin = large ? off64[start + d] : off32[start + d];
            int64_t end = large ? off64[start + d + 1] : off32[start + d + 1];
            for (Py_ssize_t j = 0; j < perms.padded; j++) mins[j] = UINT64_MAX;
            Py_ssize_t count = shingle(&sh, bytes, begin, end, sig_block, &st);
            uint32_t *row = sig + d * k;
            for (Py_ssize_t j = 0; j < k; j++) row[j] = (uint32_t)(mins[j] >> 32);
            flags[d] = count > 0;
        }
        Py_END_ALLOW_THREADS
    }
    result = Py_NewRef(Py_None);
done:
    if (opened) shingler_close(&sh);
    free(perms.a); free(perms.a_hi); free(perms.b); free(mins);
    PyBuffer_Release(&off); PyBuffer_Release(&data); PyBuffer_Release(&a); PyBuffer_Release(&b);
    PyBuffer_Release(&out); PyBuffer_Release(&has);
    return result;
}

typedef struct { uint64_t *items; Py_ssize_t size, capacity; int failed; } Collected;

static void collect_block(void *state, const uint64_t *hashes, Py_ssize_t count) {
    Collected *c = state;
    if (c->failed) return;
    if (c->size + count > c->capacity) {
        Py_ssize_t capacity = c->capacity ? c->capacity : BLOCK;
        while (capacity < c->size + count) capacity *= 2;
        uint64_t *grown = realloc(c->items, (size_t)capacity * sizeof(uint64_t));
        if (!grown) { c->failed = 1; return; }
        c->items = grown;
        c->capacity = capacity;
    }
    memcpy(c->items + c->size, hashes, (size_t)count * sizeof(uint64_t));
    c->size += count;
}

/* shingles(utf8 text, mode, n, level) -> bytes of the document's uint64 shingle hashes, in order */
static PyObject *shingles(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer text;
    int mode, n, level;
    if (!PyArg_ParseTuple(args, "y*iii", &text, &mode, &n, &level)) return NULL;
    PyObject *result = NULL;
    Shingler sh = {0};
    Collected c = {0};
    if (check_mode(mode, n) < 0 || (level = parse_level(level)) < 0 || shingler_open(&sh, mode, n, level) < 0) {
        PyBuffer_Release(&text);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    shingle(&sh, (const uint8_t *)text.buf, 0, text.len, collect_block, &c);
    Py_END_ALLOW_THREADS
    if (c.failed) PyErr_NoMemory();
    else result = PyBytes_FromStringAndSize((const char *)c.items, c.size * (Py_ssize_t)sizeof(uint64_t));
    free(c.items);
    shingler_close(&sh);
    PyBuffer_Release(&text);
    return result;
}

/* levels() -> the kernel levels this CPU runs: 0 baseline, 1 AVX2, 2 AVX-512 */
static PyObject *levels(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(args)) {
    PyObject *result = PyTuple_New(best_level + 1);
    if (!result) return NULL;
    for (int i = 0; i <= best_level; i++) PyTuple_SET_ITEM(result, i, PyLong_FromLong(i));
    return result;
}

static PyMethodDef methods[] = {
    {"signatures", signatures, METH_VARARGS, "MinHash signatures of an Arrow string array, written into out/has."},
    {"shingles", shingles, METH_VARARGS, "One UTF-8 document's shingle hashes, in order, as uint64 bytes."},
    {"levels", levels, METH_NOARGS, "The kernel levels this CPU runs: 0 baseline, 1 AVX2, 2 AVX-512."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_minhash", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__minhash(void) {
    init_word_bytes();
#if MH_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) best_level = LEVEL_AVX2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        best_level = LEVEL_AVX512;
#endif
    return PyModule_Create(&module);
}

/* gristmill._textscan: per-document text statistics over Arrow string arrays, in one pass.
 *
 * The Python reference for every number computed here is the `score_document` of the filter
 * that uses it (gristmill.stages.text.filters); tests check that both agree. Words are what
 * Python's str.split() returns (runs of non-whitespace, whitespace as str.isspace() defines it);
 * lengths are in code points, as Python's len(). Inputs are valid UTF-8 (Arrow guarantees it).
 * Every function releases the GIL while it scans, so two threads can share the work.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const uint8_t *data;
    const int32_t *off32;
    const int64_t *off64;
    Py_ssize_t start; /* the array's offset into its offsets buffer */
    Py_ssize_t length;
} Strings;

static inline int64_t str_begin(const Strings *s, Py_ssize_t i) {
    return s->off64 ? s->off64[s->start + i] : (int64_t)s->off32[s->start + i];
}
static inline int64_t str_end(const Strings *s, Py_ssize_t i) { return str_begin(s, i + 1); }

/* Decode one code point of valid UTF-8 at p; store its byte length in *len. */
static inline uint32_t decode(const uint8_t *p, int *len) {
    uint8_t b = p[0];
    if (b < 0x80) { *len = 1; return b; }
    if (b < 0xE0) { *len = 2; return ((uint32_t)(b & 0x1F) << 6) | (p[1] & 0x3F); }
    if (b < 0xF0) { *len = 3; return ((uint32_t)(b & 0x0F) << 12) | ((uint32_t)(p[1] & 0x3F) << 6) | (p[2] & 0x3F); }
    *len = 4;
    return ((uint32_t)(b & 0x07) << 18) | ((uint32_t)(p[1] & 0x3F) << 12) | ((uint32_t)(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}

/* Python's str.isspace() */
static const uint8_t ASCII_SPACE[128] = {
    [9] = 1, [10] = 1, [11] = 1, [12] = 1, [13] = 1, [28] = 1, [29] = 1, [30] = 1, [31] = 1, [32] = 1};

static inline int is_space(uint32_t c) {
    if (c < 0x80) return (c >= 9 && c <= 13) || (c >= 28 && c <= 32);
    return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

static inline int64_t count_chars(const uint8_t *p, int64_t nbytes) {
    int64_t chars = 0;
    for (int64_t i = 0; i < nbytes; i++) chars += (p[i] & 0xC0) != 0x80;
    return chars;
}

/* ---- argument parsing: (offsets buffer, data buffer, large offsets?, array offset, length) ---- */

typedef struct { Py_buffer offsets, data; } Views;

static int open_strings(PyObject *args, Strings *s, Views *v, const char *extra_fmt, void *a1, void *a2) {
    int large;
    char fmt[32];
    snprintf(fmt, sizeof fmt, "y*y*pnn%s", extra_fmt);
    memset(v, 0, sizeof *v);
    if (!PyArg_ParseTuple(args, fmt, &v->offsets, &v->data, &large, &s->start, &s->length, a1, a2))
        return -1;
    s->data = (const uint8_t *)v->data.buf;
    s->off32 = large ? NULL : (const int32_t *)v->offsets.buf;
    s->off64 = large ? (const int64_t *)v->offsets.buf : NULL;
    Py_ssize_t width = large ? 8 : 4;
    if (s->start < 0 || s->length < 0 || (s->start + s->length + 1) * width > v->offsets.len) {
        PyBuffer_Release(&v->offsets);
        PyBuffer_Release(&v->data);
        PyErr_SetString(PyExc_ValueError, "offsets buffer too short for the requested slice");
        return -1;
    }
    return 0;
}

static void close_strings(Views *v) {
    PyBuffer_Release(&v->offsets);
    PyBuffer_Release(&v->data);
}

/* ---- words: (start byte, end byte, length in code points, hash) of every word of a document ---- */

typedef struct { int64_t begin, end; int64_t chars; uint64_t hash; } Word;

typedef struct { Word *items; Py_ssize_t size, capacity; } Words;

static int words_push(Words *w, Word item) {
    if (w->size == w->capacity) {
        Py_ssize_t capacity = w->capacity ? w->capacity * 2 : 1024;
        Word *grown = realloc(w->items, (size_t)capacity * sizeof(Word));
        if (!grown) return -1;
        w->items = grown;
        w->capacity = capacity;
    }
    w->items[w->size++] = item;
    return 0;
}

/* Split data[begin:end) into words; with hashes when want_hash. Returns -1 when out of memory. */
static int split_words(const uint8_t *data, int64_t begin, int64_t end, Words *out, int want_hash) {
    out->size = 0;
    int64_t i = begin;
    while (i < end) {
        int len = 1;
        uint8_t b = data[i];
        if (b < 0x80 ? ASCII_SPACE[b] : is_space(decode(data + i, &len))) { i += len; continue; }
        Word word = {i, 0, 0, 1469598103934665603ULL};
        while (i < end) {
            b = data[i];
            if (b < 0x80) {
                if (ASCII_SPACE[b]) break;
                len = 1;
            } else if (is_space(decode(data + i, &len))) {
                break;
            }
            if (want_hash)
                for (int k = 0; k < len; k++) word.hash = (word.hash ^ data[i + k]) * 1099511628211ULL;
            word.chars++;
            i += len;
        }
        word.end = i;
        if (words_push(out, word) < 0) return -1;
    }
    return 0;
}

/* ---- n-gram table: open addressing keyed by the n-gram's words, exact (hashes only speed it up) ---- */

typedef struct { uint64_t hash; int64_t first; int64_t count; } Slot;

typedef struct { Slot *slots; Py_ssize_t capacity; } Table;

static inline uint64_t mix(uint64_t x) {
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27; x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t ngram_hash(const Words *w, Py_ssize_t at, int n) {
    uint64_t h = 0x9e3779b97f4a7c15ULL;
    for (int k = 0; k < n; k++) h = mix(h ^ w->items[at + k].hash) + (uint64_t)k;
    return h | 1; /* 0 marks an empty slot */
}

static int same_ngram(const uint8_t *data, const Words *w, Py_ssize_t a, Py_ssize_t b, int n) {
    for (int k = 0; k < n; k++) {
        const Word *x = &w->items[a + k], *y = &w->items[b + k];
        int64_t lx = x->end - x->begin;
        if (lx != y->end - y->begin || memcmp(data + x->begin, data + y->begin, (size_t)lx) != 0) return 0;
    }
    return 1;
}

static int table_reset(Table *t, Py_ssize_t entries) {
    Py_ssize_t capacity = 16;
    while (capacity < entries * 2) capacity *= 2;
    if (capacity > t->capacity) {
        Slot *grown = realloc(t->slots, (size_t)capacity * sizeof(Slot));
        if (!grown) return -1;
        t->slots = grown;
        t->capacity = capacity;
    }
    memset(t->slots, 0, (size_t)capacity * sizeof(Slot));
    return (int)0;
}

/* Count the n-gram starting at word `at`; return its slot. Table capacity is a power of two. */
static Slot *table_add(Table *t, Py_ssize_t used, const uint8_t *data, const Words *w, Py_ssize_t at, int n) {
    uint64_t h = ngram_hash(w, at, n);
    Py_ssize_t mask = used - 1;
    for (Py_ssize_t i = (Py_ssize_t)(h & (uint64_t)mask);; i = (i + 1) & mask) {
        Slot *slot = &t->slots[i];
        if (slot->hash == 0) {
            slot->hash = h; slot->first = at; slot->count = 1;
            return slot;
        }
        if (slot->hash == h && same_ngram(data, w, slot->first, at, n)) {
            slot->count++;
            return slot;
        }
    }
}

static Py_ssize_t table_size_for(Py_ssize_t entries) {
    Py_ssize_t capacity = 16;
    while (capacity < entries * 2) capacity *= 2;
    return capacity;
}

/* Non-overlapping occurrences of needle in hay, left to right (as str.replace/str.count). */
static int64_t count_occurrences(const uint8_t *hay, int64_t hay_len, const uint8_t *needle, int64_t len) {
    int64_t found = 0;
    const uint8_t *p = hay, *end = hay + hay_len;
    while (p + len <= end) {
        const uint8_t *hit = memmem(p, (size_t)(end - p), needle, (size_t)len);
        if (!hit) break;
        found++;
        p = hit + len;
    }
    return found;
}

/* ---- exported functions ---- */

/* word_stats(...) -> (words int64[], total word chars int64[], longest word int64[]) */
static PyObject *word_stats(PyObject *Py_UNUSED(self), PyObject *args) {
    Strings s; Views v;
    if (open_strings(args, &s, &v, "", NULL, NULL) < 0) return NULL;
    PyObject *counts = PyBytes_FromStringAndSize(NULL, s.length * 8);
    PyObject *sums = PyBytes_FromStringAndSize(NULL, s.length * 8);
    PyObject *longest = PyBytes_FromStringAndSize(NULL, s.length * 8);
    if (!counts || !sums || !longest) goto fail;
    int64_t *c = (int64_t *)PyBytes_AS_STRING(counts), *m = (int64_t *)PyBytes_AS_STRING(sums);
    int64_t *l = (int64_t *)PyBytes_AS_STRING(longest);
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t d = 0; d < s.length; d++) {
        int64_t i = str_begin(&s, d), end = str_end(&s, d), words = 0, chars = 0, most = 0, run = 0;
        int in_word = 0;
        while (i < end) {
            int len = 1;
            uint8_t b = s.data[i];
            if (b < 0x80 ? ASCII_SPACE[b] : is_space(decode(s.data + i, &len))) {
                if (in_word) { chars += run; if (run > most) most = run; }
                in_word = 0; run = 0;
            } else {
                if (!in_word) words++;
                in_word = 1; run++;
            }
            i += len;
        }
        if (in_word) { chars += run; if (run > most) most = run; }
        c[d] = words; m[d] = chars; l[d] = most;
    }
    Py_END_ALLOW_THREADS
    close_strings(&v);
    return Py_BuildValue("(NNN)", counts, sums, longest);
fail:
    Py_XDECREF(counts); Py_XDECREF(sums); Py_XDECREF(longest);
    close_strings(&v);
    return NULL;
}

/* char_counts(..., ascii_table: bytes[128], extra: bytes of sorted uint32 code points)
 *   -> (code points int64[], matching code points int64[]) */
static PyObject *char_counts(PyObject *Py_UNUSED(self), PyObject *args) {
    Strings s; Views v; Py_buffer table, extra;
    if (open_strings(args, &s, &v, "y*y*", &table, &extra) < 0) return NULL;
    PyObject *totals = NULL, *matches = NULL;
    if (table.len != 128 || extra.len % 4 != 0) {
        PyErr_SetString(PyExc_ValueError, "char_counts needs a 128-byte ASCII table and uint32 extras");
        goto done;
    }
    totals = PyBytes_FromStringAndSize(NULL, s.length * 8);
    matches = PyBytes_FromStringAndSize(NULL, s.length * 8);
    if (!totals || !matches) { Py_CLEAR(totals); Py_CLEAR(matches); goto done; }
    {
        int64_t *t = (int64_t *)PyBytes_AS_STRING(totals), *m = (int64_t *)PyBytes_AS_STRING(matches);
        const uint8_t *ascii = (const uint8_t *)table.buf;
        const uint32_t *more = (const uint32_t *)extra.buf;
        Py_ssize_t n_more = extra.len / 4;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t d = 0; d < s.length; d++) {
            int64_t i = str_begin(&s, d), end = str_end(&s, d), chars = 0, hits = 0;
            while (i < end) {
                uint8_t b = s.data[i];
                if (b < 0x80) { hits += ascii[b] != 0; i++; }
                else {
                    int len;
                    uint32_t cp = decode(s.data + i, &len);
                    for (Py_ssize_t k = 0; k < n_more; k++) if (more[k] == cp) { hits++; break; }
                    i += len;
                }
                chars++;
            }
            t[d] = chars; m[d] = hits;
        }
        Py_END_ALLOW_THREADS
    }
done:
    PyBuffer_Release(&table); PyBuffer_Release(&extra);
    close_strings(&v);
    if (!totals) return NULL;
    return Py_BuildValue("(NN)", totals, matches);
}

/* ngram_scores(..., n, mode) -> float64[]: mode 0 = top n-gram score, mode 1 = duplicate n-gram
 * score; see RepeatingTopNGramsFilter and RepeatingDuplicateNGramsFilter for the definitions. */
static PyObject *ngram_scores(PyObject *Py_UNUSED(self), PyObject *args) {
    Strings s; Views v; int n, mode;
    if (open_strings(args, &s, &v, "ii", &n, &mode) < 0) return NULL;
    if (n < 1) { close_strings(&v); PyErr_SetString(PyExc_ValueError, "n must be >= 1"); return NULL; }
    PyObject *result = PyBytes_FromStringAndSize(NULL, s.length * 8);
    if (!result) { close_strings(&v); return NULL; }
    double *out = (double *)PyBytes_AS_STRING(result);
    Words words = {0};
    Table table = {0};
    uint8_t *joined = NULL;
    int64_t joined_capacity = 0;
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t d = 0; d < s.length && !failed; d++) {
        int64_t begin = str_begin(&s, d), end = str_end(&s, d);
        if (split_words(s.data, begin, end, &words, 1) < 0) { failed = 1; break; }
        Py_ssize_t windows = words.size - n + 1;
        if (windows <= 0) { out[d] = 1.0; continue; }
        int64_t total_chars = count_chars(s.data + begin, end - begin);
        Py_ssize_t used = table_size_for(windows);
        if (table_reset(&table, windows) < 0) { failed = 1; break; }
        if (mode == 0) {
            Slot *top = NULL;
            for (Py_ssize_t at = 0; at < windows; at++) {
                Slot *slot = table_add(&table, used, s.data, &words, at, n);
                /* most frequent; on a tie, the one that occurs first in the document */
                if (!top || slot->count > top->count || (slot->count == top->count && slot->first < top->first))
                    top = slot;
            }
            int64_t bytes = n - 1, chars = n - 1;
            for (int k = 0; k < n; k++) {
                const Word *w = &words.items[top->first + k];
                bytes += w->end - w->begin; chars += w->chars;
            }
            if (bytes > joined_capacity) {
                uint8_t *grown = realloc(joined, (size_t)bytes);
                if (!grown) { failed = 1; break; }
                joined = grown; joined_capacity = bytes;
            }
            int64_t at = 0;
            for (int k = 0; k < n; k++) {
                const Word *w = &words.items[top->first + k];
                if (k) joined[at++] = ' ';
                memcpy(joined + at, s.data + w->begin, (size_t)(w->end - w->begin));
                at += w->end - w->begin;
            }
            int64_t hits = count_occurrences(s.data + begin, end - begin, joined, bytes);
            out[d] = (double)(hits * chars) / (double)total_chars;
        } else {
            int64_t covered = 0;
            int ov = 0;
            for (Py_ssize_t at = 0; at < windows; at++) {
                Slot *slot = table_add(&table, used, s.data, &words, at, n);
                if (slot->count > 1) {
                    for (int k = ov; k < n; k++) covered += words.items[at + k].chars;
                    covered += (n - ov) < (n - 1) ? (n - ov) : (n - 1);
                    ov = n;
                }
                ov = ov > 0 ? ov - 1 : 0;
            }
            out[d] = total_chars ? (double)covered / (double)total_chars : 1.0;
        }
    }
    Py_END_ALLOW_THREADS
    free(words.items); free(table.slots); free(joined);
    close_strings(&v);
    if (failed) { Py_DECREF(result); return PyErr_NoMemory(); }
    return result;
}

static PyMethodDef methods[] = {
    {"word_stats", word_stats, METH_VARARGS, "Per document: word count, total word length, longest word."},
    {"char_counts", char_counts, METH_VARARGS, "Per document: code points, and those in a set."},
    {"ngram_scores", ngram_scores, METH_VARARGS, "Per document: top (mode 0) or duplicate (mode 1) n-gram score."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_textscan", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__textscan(void) { return PyModule_Create(&module); }

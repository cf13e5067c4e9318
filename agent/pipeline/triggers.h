/* Redaction's trigger words, matched ASCII-case-insensitively: shared by agent/pipeline/_scan.c
 * and the journald collector's event formatter (collectors/journald/_rows.c). */
#ifndef ALPACON_TRIGGERS_H
#define ALPACON_TRIGGERS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define TRIGGERS_MAX_WORDS 64

typedef struct {
    Py_ssize_t n;
    const unsigned char *word[TRIGGERS_MAX_WORDS];
    Py_ssize_t len[TRIGGERS_MAX_WORDS];
    long long mask[TRIGGERS_MAX_WORDS];
    uint64_t starts[256]; /* the words starting with each (lower-case) byte */
    uint8_t pairs[8192];  /* bit (a << 8 | b): some word starts with the lower-case bytes a, b */
    int short_word;       /* a one-byte word: the pair filter cannot be used */
    /* per word, an occurrence that does not count: spelled exactly ``except`` and not preceded
     * by one of ``unless`` (sudo's "PWD=/root" is no password; "MYSQL_PWD=" is) */
    const unsigned char *except[TRIGGERS_MAX_WORDS];
    const char *unless[TRIGGERS_MAX_WORDS];
} Triggers;

static inline unsigned char ascii_lower(unsigned char c) { return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c; }

/* From a tuple of non-empty lower-case ASCII bytes, a tuple of their rule masks and a tuple of
 * exceptions ``(word index, exact spelling, bytes that may precede it)``; -1 with an exception
 * set when they are not that. Everything stays owned by the tuples. */
static int triggers_init(Triggers *t, PyObject *words, PyObject *masks, PyObject *exceptions) {
    if (!PyTuple_Check(words) || !PyTuple_Check(masks) || PyTuple_GET_SIZE(words) != PyTuple_GET_SIZE(masks)
        || PyTuple_GET_SIZE(words) > TRIGGERS_MAX_WORDS) {
        PyErr_Format(PyExc_ValueError, "trigger words: two tuples of the same size, at most %d", TRIGGERS_MAX_WORDS);
        return -1;
    }
    memset(t->starts, 0, sizeof t->starts);
    memset(t->pairs, 0, sizeof t->pairs);
    memset(t->except, 0, sizeof t->except);
    memset(t->unless, 0, sizeof t->unless);
    t->short_word = 0;
    t->n = PyTuple_GET_SIZE(words);
    for (Py_ssize_t i = 0; i < t->n; i++) {
        PyObject *w = PyTuple_GET_ITEM(words, i);
        if (!PyBytes_Check(w) || PyBytes_GET_SIZE(w) == 0) {
            PyErr_SetString(PyExc_TypeError, "trigger words must be non-empty bytes");
            return -1;
        }
        t->word[i] = (const unsigned char *)PyBytes_AS_STRING(w);
        t->len[i] = PyBytes_GET_SIZE(w);
        t->mask[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(masks, i));
        if (t->mask[i] == -1 && PyErr_Occurred())
            return -1;
        for (Py_ssize_t k = 0; k < t->len[i]; k++) {
            if (t->word[i][k] >= 0x80 || ascii_lower(t->word[i][k]) != t->word[i][k]) {
                PyErr_SetString(PyExc_ValueError, "trigger words must be lower-case ASCII");
                return -1;
            }
        }
        t->starts[t->word[i][0]] |= (uint64_t)1 << i;
        if (t->len[i] < 2) {
            t->short_word = 1;
        } else {
            unsigned pair = (unsigned)t->word[i][0] << 8 | t->word[i][1];
            t->pairs[pair >> 3] |= (uint8_t)(1 << (pair & 7));
        }
    }
    if (!PyTuple_Check(exceptions)) {
        PyErr_SetString(PyExc_TypeError, "trigger exceptions: a tuple");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(exceptions); i++) {
        Py_ssize_t w;
        PyObject *spelling, *unless;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(exceptions, i), "nO!O!:exception", &w, &PyBytes_Type, &spelling,
                              &PyBytes_Type, &unless))
            return -1;
        if (w < 0 || w >= t->n || PyBytes_GET_SIZE(spelling) != t->len[w]) {
            PyErr_SetString(PyExc_ValueError, "trigger exception: a word's index and a spelling of its length");
            return -1;
        }
        t->except[w] = (const unsigned char *)PyBytes_AS_STRING(spelling);
        t->unless[w] = PyBytes_AS_STRING(unless);
    }
    return 0;
}

/* The rules (OR of masks) whose words ASCII text p[0:len] holds; 0: none. No GIL needed. */
static long long triggers_mask(const Triggers *t, const unsigned char *p, Py_ssize_t len) {
    long long mask = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        unsigned char c0 = ascii_lower(p[i]);
        uint64_t cand = t->starts[c0];
        if (cand == 0)
            continue;
        if (!t->short_word) {
            if (i + 1 >= len)
                break;
            unsigned pair = (unsigned)c0 << 8 | ascii_lower(p[i + 1]);
            if (!(t->pairs[pair >> 3] & (1 << (pair & 7))))
                continue;
        }
        while (cand) {
            int w = __builtin_ctzll(cand);
            cand &= cand - 1;
            Py_ssize_t wl = t->len[w];
            if (wl > len - i || (t->mask[w] & ~mask) == 0)
                continue;
            Py_ssize_t k = 1;
            while (k < wl && ascii_lower(p[i + k]) == t->word[w][k])
                k++;
            if (k < wl)
                continue;
            if (t->except[w] != NULL && memcmp(p + i, t->except[w], (size_t)wl) == 0
                && (i == 0 || strchr(t->unless[w], p[i - 1]) == NULL || p[i - 1] == 0))
                continue; /* the spelling that does not count, without a byte that makes it count */
            mask |= t->mask[w];
        }
    }
    return mask;
}

#endif

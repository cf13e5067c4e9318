/* Redaction's trigger scan in C: which texts hold which built-in rules' trigger words.
 *
 * scan(texts, words, masks) -> [(index, mask), ...] for each text that needs a look: ``mask`` has
 * bit k set when the text holds one of rule k's trigger words (``words[i]``, lower-case ASCII,
 * belongs to the rules in ``masks[i]``), compared ASCII-case-insensitively. A text that is not
 * all ASCII is given with mask -1: Unicode lower-casing can make a trigger word of other
 * characters (the Kelvin sign lower-cases to "k"), so Python decides for those. Texts with no
 * trigger word are left out: for them redaction changes nothing (redact.py's invariant: every
 * match of a rule holds one of its trigger words).
 *
 * One pass over each text, a table of first bytes, and a compare at the few positions whose byte
 * starts a word: this replaces a lower() and a regex search per text.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_WORDS 64

static unsigned char lower_of[256];

static PyObject *scan(PyObject *self, PyObject *args) {
    PyObject *texts, *words, *masks;
    if (!PyArg_ParseTuple(args, "O!O!O!:scan", &PyList_Type, &texts, &PyTuple_Type, &words, &PyTuple_Type, &masks))
        return NULL;
    Py_ssize_t nw = PyTuple_GET_SIZE(words);
    if (nw > MAX_WORDS || PyTuple_GET_SIZE(masks) != nw) {
        PyErr_Format(PyExc_ValueError, "at most %d words, one mask each", MAX_WORDS);
        return NULL;
    }
    const unsigned char *word[MAX_WORDS];
    Py_ssize_t word_len[MAX_WORDS];
    long long word_mask[MAX_WORDS];
    uint64_t starts[256];
    memset(starts, 0, sizeof starts);
    for (Py_ssize_t i = 0; i < nw; i++) {
        PyObject *w = PyTuple_GET_ITEM(words, i);
        if (!PyBytes_Check(w) || PyBytes_GET_SIZE(w) == 0) {
            PyErr_SetString(PyExc_TypeError, "words must be non-empty bytes");
            return NULL;
        }
        word[i] = (const unsigned char *)PyBytes_AS_STRING(w);
        word_len[i] = PyBytes_GET_SIZE(w);
        word_mask[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(masks, i));
        if (word_mask[i] == -1 && PyErr_Occurred())
            return NULL;
        for (Py_ssize_t k = 0; k < word_len[i]; k++) {
            if (word[i][k] >= 0x80 || lower_of[word[i][k]] != word[i][k]) {
                PyErr_SetString(PyExc_ValueError, "words must be lower-case ASCII");
                return NULL;
            }
        }
        starts[word[i][0]] |= (uint64_t)1 << i;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(texts);
    for (Py_ssize_t t = 0; t < n; t++) {
        PyObject *text = PyList_GET_ITEM(texts, t);
        if (!PyUnicode_Check(text)) {
            Py_DECREF(out);
            PyErr_SetString(PyExc_TypeError, "texts must be str");
            return NULL;
        }
        long long mask = 0;
        if (!PyUnicode_IS_ASCII(text)) {
            mask = -1;
        } else {
            const unsigned char *p = (const unsigned char *)PyUnicode_DATA(text);
            Py_ssize_t len = PyUnicode_GET_LENGTH(text);
            for (Py_ssize_t i = 0; i < len; i++) {
                uint64_t cand = starts[lower_of[p[i]]];
                while (cand) {
                    int w = __builtin_ctzll(cand);
                    cand &= cand - 1;
                    Py_ssize_t wl = word_len[w];
                    if (wl > len - i || (word_mask[w] & ~mask) == 0)
                        continue;
                    Py_ssize_t k = 1;
                    while (k < wl && lower_of[p[i + k]] == word[w][k])
                        k++;
                    if (k == wl)
                        mask |= word_mask[w];
                }
            }
        }
        if (mask != 0) {
            PyObject *item = Py_BuildValue("(nL)", t, mask);
            if (item == NULL || PyList_Append(out, item) < 0) {
                Py_XDECREF(item);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(item);
        }
    }
    return out;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(texts, words, masks) -> [(index, mask)]: the texts holding trigger words, with the rules'\n"
     "bits; a text that is not all ASCII comes with mask -1 (Python decides)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__scan(void) {
    for (int c = 0; c < 256; c++)
        lower_of[c] = (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : (unsigned char)c;
    return PyModule_Create(&module);
}

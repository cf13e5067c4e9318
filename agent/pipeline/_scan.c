/* Redaction's trigger scan in C: which texts hold which built-in rules' trigger words.
 *
 * scan(texts, words, masks, exceptions) -> [(index, mask), ...] for each text that needs a look: ``mask`` has
 * bit k set when the text holds one of rule k's trigger words (``words[i]``, lower-case ASCII,
 * belongs to the rules in ``masks[i]``), compared ASCII-case-insensitively. A text that is not
 * all ASCII is given with mask -1: Unicode lower-casing can make a trigger word of other
 * characters (the Kelvin sign lower-cases to "k"), so Python decides for those. Texts with no
 * trigger word are left out: for them redaction changes nothing (redact.py's invariant: every
 * match of a rule holds one of its trigger words).
 *
 * One pass over each text, a table of first bytes, and a compare at the few positions whose byte
 * starts a word (triggers.h): this replaces a lower() and a regex search per text.
 */
#include "triggers.h"

static PyObject *scan(PyObject *self, PyObject *args) {
    PyObject *texts, *words, *masks, *exceptions;
    Triggers trig;
    if (!PyArg_ParseTuple(args, "O!OOO:scan", &PyList_Type, &texts, &words, &masks, &exceptions)
        || triggers_init(&trig, words, masks, exceptions) < 0)
        return NULL;
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
        long long mask = -1;
        if (PyUnicode_IS_ASCII(text))
            mask = triggers_mask(&trig, (const unsigned char *)PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text));
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
     "scan(texts, words, masks, exceptions) -> [(index, mask)]: the texts holding trigger words, with\n"
     "the rules' bits; a text that is not all ASCII comes with mask -1 (Python decides)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }

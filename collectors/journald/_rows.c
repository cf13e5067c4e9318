/* The journald collector's hot loop in C: read up to a chunk of entries from a systemd-python
 * ``_Reader`` and give each as one tuple ``(cursor, realtime, value, ...)`` holding only the
 * fields asked for (bytes, or None when the entry lacks one; a field given twice keeps its first
 * value, as the pure-Python reader in rows.py does).
 *
 * Compared with ``_next()`` + ``_get_all()`` + ``_get_cursor()`` + ``_get_realtime()`` per entry,
 * this makes one call per chunk, builds no dict of the 20-30 fields journald records, decodes no
 * field names, and runs the libsystemd work (seeking, enumerating, decompressing) without the GIL,
 * so the event loop ships the previous chunk meanwhile.
 *
 * systemd-python's ``_Reader`` keeps its ``sd_journal *`` right after the object header (the
 * layout of systemd/_reader.c since 2013); ``read_rows`` checks the type's name and size before
 * using it and raises TypeError otherwise, and rows.py then falls back to the Python reader.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "entry.h"

PyObject *row_of(const Entry *e, Py_ssize_t nf, const Arena *arena) {
    PyObject *row = PyTuple_New(nf + 2);
    if (row == NULL)
        return NULL;
    PyObject *cursor = PyUnicode_DecodeUTF8(e->cursor, (Py_ssize_t)strlen(e->cursor), "replace");
    PyObject *rt = PyLong_FromUnsignedLongLong(e->realtime);
    if (cursor == NULL || rt == NULL) {
        Py_XDECREF(cursor);
        Py_XDECREF(rt);
        Py_DECREF(row);
        return NULL;
    }
    PyTuple_SET_ITEM(row, 0, cursor);
    PyTuple_SET_ITEM(row, 1, rt);
    for (Py_ssize_t i = 0; i < nf; i++) {
        PyObject *v;
        if (e->off[i] < 0) {
            v = Py_None;
            Py_INCREF(v);
        } else {
            v = PyBytes_FromStringAndSize(arena->buf + e->off[i], e->len[i]);
            if (v == NULL) {
                Py_DECREF(row);
                return NULL;
            }
        }
        PyTuple_SET_ITEM(row, i + 2, v);
    }
    return row;
}

/* The field names of a tuple of bytes (borrowed from it), indexed. */
int field_names(PyObject *fields, FieldSet *fs) {
    Py_ssize_t nf = PyTuple_GET_SIZE(fields);
    if (nf > MAX_FIELDS) {
        PyErr_Format(PyExc_ValueError, "at most %d fields", MAX_FIELDS);
        return -1;
    }
    fs->n = nf;
    for (Py_ssize_t i = 0; i < nf; i++) {
        PyObject *f = PyTuple_GET_ITEM(fields, i);
        if (!PyBytes_Check(f)) {
            PyErr_SetString(PyExc_TypeError, "field names must be bytes");
            return -1;
        }
        fs->name[i] = PyBytes_AS_STRING(f);
        fs->len[i] = (size_t)PyBytes_GET_SIZE(f);
    }
    fieldset_index(fs);
    return 0;
}

static PyObject *read_rows(PyObject *self, PyObject *args) {
    PyObject *reader, *fields;
    Py_ssize_t max_entries, max_bytes, message_cap, message_field;
    int pending;
    if (!PyArg_ParseTuple(args, "OO!nnnnp:read_rows", &reader, &PyTuple_Type, &fields, &message_field,
                          &max_entries, &max_bytes, &message_cap, &pending))
        return NULL;
    sd_journal *j = journal_of(reader);
    if (j == NULL)
        return NULL;
    Py_ssize_t nf = PyTuple_GET_SIZE(fields);
    FieldSet fs;
    if (field_names(fields, &fs) < 0)
        return NULL;
    PyObject *rows = PyList_New(0);
    if (rows == NULL)
        return NULL;
    Arena arena = {NULL, 0, 0};
    Entry e;
    int at_end = 0, err = 0;
    Py_ssize_t n = 0, nbytes = 0;
    while (n < max_entries && nbytes < max_bytes) {
        int r = next_entry(j, pending, &fs, message_field, &arena, &e);
        pending = 0;
        if (r < 0) {
            err = r;
            break;
        }
        if (r == 0) {
            at_end = 1;
            break;
        }
        if (e.error < 0) {
            free(e.cursor);
            err = e.error;
            if (n > 0) /* the rows so far are returned; the next call reads this entry again */
                sd_journal_previous(j);
            break;
        }
        PyObject *row = row_of(&e, nf, &arena);
        free(e.cursor);
        if (row == NULL || PyList_Append(rows, row) < 0) {
            Py_XDECREF(row);
            free(arena.buf);
            Py_DECREF(rows);
            return NULL;
        }
        Py_DECREF(row);
        n++;
        nbytes += (Py_ssize_t)(e.message_len < (size_t)message_cap ? e.message_len : (size_t)message_cap);
    }
    free(arena.buf);
    if (err < 0 && n == 0) {
        /* nothing read: the error is the caller's to see; after some rows, the next call meets it */
        Py_DECREF(rows);
        errno = -err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(Ni)", rows, at_end);
}


static PyMethodDef methods[] = {
    {"read_rows", read_rows, METH_VARARGS,
     "read_rows(reader, fields, message_field, max_entries, max_bytes, message_cap, pending) -> (rows, at_end)\n\n"
     "Up to max_entries entries (or until the messages, each counted up to message_cap, reach\n"
     "max_bytes) as tuples (cursor, realtime_usec, *values of fields); pending: the reader already\n"
     "sits on an unread entry."},
    {"read_events", read_events, METH_VARARGS,
     "read_events(reader, fields, spec, max_entries, max_bytes, pending, frags)\n"
     "    -> (events, hits, slow, at_end, cursor, n)\n\n"
     "events: finished event JSON (bytes), None where an entry is left to Python; hits: (slot, offset,\n"
     "length, message) for the messages redaction must look at (the message's JSON is\n"
     "events[slot][offset:offset + length]); slow: (slot, row, key) for the entries left to Python;\n"
     "cursor: the last entry's (None: none read); n: entries read. spec: (max_priority,\n"
     "message_cap, heads, mids, trigger words, their masks, their exceptions, deriver message prefixes)."},
    {"blake2b16", blake2b16, METH_O, "blake2b16(data) -> hashlib.blake2b(data, digest_size=16).digest()"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rows", NULL, -1, methods};

PyMODINIT_FUNC PyInit__rows(void) { return PyModule_Create(&module); }

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
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-journal.h>

typedef struct {
    PyObject_HEAD
    sd_journal *j;
} ReaderObject;

#define MAX_FIELDS 32

typedef struct {
    char *buf;
    size_t len, cap;
} Arena;

static int arena_put(Arena *a, const void *p, size_t n) {
    if (a->len + n > a->cap) {
        size_t cap = a->cap ? a->cap : 4096;
        while (cap < a->len + n)
            cap *= 2;
        char *nb = realloc(a->buf, cap);
        if (nb == NULL)
            return -1;
        a->buf = nb;
        a->cap = cap;
    }
    memcpy(a->buf + a->len, p, n);
    a->len += n;
    return 0;
}

static sd_journal *journal_of(PyObject *reader) {
    PyTypeObject *t = Py_TYPE(reader);
    const char *name = t->tp_name;
    size_t n = strlen(name);
    if (n < 7 || strcmp(name + n - 7, "_Reader") != 0 || t->tp_basicsize != (Py_ssize_t)sizeof(ReaderObject)) {
        PyErr_Format(PyExc_TypeError, "not a systemd-python _Reader of the known layout: %s", name);
        return NULL;
    }
    sd_journal *j = ((ReaderObject *)reader)->j;
    if (j == NULL)
        PyErr_SetString(PyExc_ValueError, "the journal reader is closed");
    return j;
}

/* One entry read without the GIL: where each wanted field's value sits in the arena (-1: none). */
typedef struct {
    Py_ssize_t off[MAX_FIELDS];
    Py_ssize_t len[MAX_FIELDS];
    char *cursor;
    uint64_t realtime;
    size_t message_len;
    int error;
} Entry;

static void read_entry(sd_journal *j, Py_ssize_t nf, const char *const *names, const size_t *name_len,
                       Py_ssize_t message_field, Arena *arena, Entry *e) {
    const void *data;
    size_t length;
    int r;
    for (Py_ssize_t i = 0; i < nf; i++)
        e->off[i] = -1;
    e->message_len = 0;
    e->cursor = NULL;
    e->error = 0;
    sd_journal_restart_data(j);
    while ((r = sd_journal_enumerate_data(j, &data, &length)) > 0) {
        const char *d = data;
        const char *eq = memchr(d, '=', length);
        if (eq == NULL)
            continue;
        size_t klen = (size_t)(eq - d);
        for (Py_ssize_t i = 0; i < nf; i++) {
            if (e->off[i] < 0 && name_len[i] == klen && memcmp(names[i], d, klen) == 0) {
                size_t vlen = length - klen - 1;
                e->off[i] = (Py_ssize_t)arena->len;
                e->len[i] = (Py_ssize_t)vlen;
                if (arena_put(arena, eq + 1, vlen) < 0) {
                    e->error = -ENOMEM;
                    return;
                }
                if (i == message_field)
                    e->message_len = vlen;
                break;
            }
        }
    }
    if (r < 0) {
        e->error = r;
        return;
    }
    r = sd_journal_get_cursor(j, &e->cursor);
    if (r < 0) {
        e->error = r;
        return;
    }
    r = sd_journal_get_realtime_usec(j, &e->realtime);
    if (r < 0)
        e->error = r;
}

static PyObject *row_of(const Entry *e, Py_ssize_t nf, const Arena *arena) {
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
    if (nf > MAX_FIELDS) {
        PyErr_Format(PyExc_ValueError, "at most %d fields", MAX_FIELDS);
        return NULL;
    }
    const char *names[MAX_FIELDS];
    size_t name_len[MAX_FIELDS];
    for (Py_ssize_t i = 0; i < nf; i++) {
        PyObject *f = PyTuple_GET_ITEM(fields, i);
        if (!PyBytes_Check(f)) {
            PyErr_SetString(PyExc_TypeError, "field names must be bytes");
            return NULL;
        }
        names[i] = PyBytes_AS_STRING(f);
        name_len[i] = (size_t)PyBytes_GET_SIZE(f);
    }
    PyObject *rows = PyList_New(0);
    if (rows == NULL)
        return NULL;
    Arena arena = {NULL, 0, 0};
    Entry e;
    int at_end = 0, err = 0;
    Py_ssize_t n = 0, nbytes = 0;
    while (n < max_entries && nbytes < max_bytes) {
        int r = 1;
        arena.len = 0;
        Py_BEGIN_ALLOW_THREADS
        if (!pending)
            r = sd_journal_next(j);
        if (r > 0)
            read_entry(j, nf, names, name_len, message_field, &arena, &e);
        Py_END_ALLOW_THREADS
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
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rows", NULL, -1, methods};

PyMODINIT_FUNC PyInit__rows(void) { return PyModule_Create(&module); }

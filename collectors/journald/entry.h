/* Reading one journal entry's wanted fields without the GIL (shared by _rows.c's functions). */
#ifndef ALPACON_ENTRY_H
#define ALPACON_ENTRY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <systemd/sd-journal.h>

#include "cbuf.h"

typedef struct {
    PyObject_HEAD
    sd_journal *j;
} ReaderObject;

#define MAX_FIELDS 32

static inline sd_journal *journal_of(PyObject *reader) {
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

/* The wanted fields, and which of them have each name length (to compare few names per field). */
typedef struct {
    Py_ssize_t n;
    const char *name[MAX_FIELDS];
    size_t len[MAX_FIELDS];
    uint64_t by_len[65]; /* [64]: the names of 64 bytes or more */
} FieldSet;

static inline void fieldset_index(FieldSet *fs) {
    memset(fs->by_len, 0, sizeof fs->by_len);
    for (Py_ssize_t i = 0; i < fs->n; i++)
        fs->by_len[fs->len[i] < 64 ? fs->len[i] : 64] |= (uint64_t)1 << i;
}

static inline void read_entry(sd_journal *j, const FieldSet *fs, Py_ssize_t message_field, Arena *arena, Entry *e) {
    Py_ssize_t nf = fs->n;
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
        uint64_t cand = fs->by_len[klen < 64 ? klen : 64];
        while (cand) {
            Py_ssize_t i = __builtin_ctzll(cand);
            cand &= cand - 1;
            if (e->off[i] < 0 && fs->len[i] == klen && memcmp(fs->name[i], d, klen) == 0) {
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

/* The next entry (or the one the reader sits on, ``pending``) read into ``e``, its fields put
 * after what the arena holds; the caller has let go of the GIL: sd_journal_next's answer (1 an
 * entry, 0 the end, < 0 an error; a read error is in e->error). */
static inline int step_entry(sd_journal *j, int pending, const FieldSet *fs, Py_ssize_t message_field, Arena *arena,
                             Entry *e) {
    int r = pending ? 1 : sd_journal_next(j);
    if (r > 0)
        read_entry(j, fs, message_field, arena, e);
    return r;
}

/* step_entry into an emptied arena, without the GIL. */
static inline int next_entry(sd_journal *j, int pending, const FieldSet *fs, Py_ssize_t message_field, Arena *arena,
                             Entry *e) {
    int r;
    arena->len = 0;
    Py_BEGIN_ALLOW_THREADS
    r = step_entry(j, pending, fs, message_field, arena, e);
    Py_END_ALLOW_THREADS
    return r;
}

/* defined in _rows.c */
PyObject *row_of(const Entry *e, Py_ssize_t nf, const Arena *arena);
int field_names(PyObject *fields, FieldSet *fs);
/* defined in format.c */
PyObject *read_events(PyObject *self, PyObject *args);
PyObject *blake2b16(PyObject *self, PyObject *arg);

#endif

/* The journald collector's compiled events: entries finished as event JSON (read_events).
 * Part of the collectors.journald._rows extension (setup.py); see _rows.c for the reader. */
#include <time.h>

#include "blake2b.h"
#include "entry.h"
#include "triggers.h"

/* ---------------------------------------------------------------- finished events (read_events)
 *
 * The common entry becomes its final event JSON here, exactly as __init__.py's Python loop
 * makes it: an ASCII message no longer than the cap and without a deriver's message prefix, a
 * plain decimal pid (or none), a timestamp before year 10000, and a (program, facility, unit,
 * host, transport, boot id, uid) whose serialized fragment Python has made before (``frags``:
 * key -> (head, tail, gated)) and no deriver wants (not gated). Any other entry is left to the
 * Python loop as ``(slot, row, key)``, which then fills ``frags`` for its key. For a message
 * holding a redaction trigger word, ``(slot, offset, length, message)`` says where its JSON is,
 * for Python to replace if redaction changes the message.
 */
enum { F_PRIORITY, F_IDENT, F_COMM, F_FACILITY, F_UNIT, F_HOST, F_TRANSPORT, F_BOOT, F_UID, F_PID, F_SPID,
       F_MESSAGE, F_FIXED };

typedef struct {
    int skip, slow, hit, pri;
    char pid[16];
    char ts[40];
    char id[33];
    size_t esc_len;
} Fast;

typedef struct {
    Py_ssize_t max_pri, message_cap;
    Triggers trig;
    Py_ssize_t n_prefixes;
    const char *prefix[16];
    Py_ssize_t prefix_len[16];
    long long ts_sec;
    char ts_prefix[32];
} Spec;

#define VAL(i) ((const unsigned char *)arena->buf + e->off[i])
#define HAS(i) (e->off[i] >= 0)

/* Phase one of an entry, without the GIL: can it be finished here, and its pieces if so. */
static void fast_of(const Entry *e, const Arena *arena, Spec *sp, Arena *esc, Fast *f) {
    f->skip = f->slow = f->hit = 0;
    f->pri = 6;
    if (HAS(F_PRIORITY) && e->len[F_PRIORITY] == 1 && VAL(F_PRIORITY)[0] >= '0' && VAL(F_PRIORITY)[0] <= '7')
        f->pri = VAL(F_PRIORITY)[0] - '0';
    if (f->pri > sp->max_pri) {
        f->skip = 1;
        return;
    }
    const unsigned char *msg = HAS(F_MESSAGE) ? VAL(F_MESSAGE) : (const unsigned char *)"";
    Py_ssize_t mlen = HAS(F_MESSAGE) ? e->len[F_MESSAGE] : 0;
    if (mlen > sp->message_cap)
        goto slow;
    for (Py_ssize_t i = 0; i < mlen; i++)
        if (msg[i] >= 0x80)
            goto slow;
    /* a trigger word: finished here all the same, and redaction decides on the text in Python */
    f->hit = triggers_mask(&sp->trig, msg, mlen) != 0;
    for (Py_ssize_t i = 0; i < sp->n_prefixes; i++)
        if (sp->prefix_len[i] <= mlen && memcmp(msg, sp->prefix[i], (size_t)sp->prefix_len[i]) == 0)
            goto slow;
    /* the pid: _PID, or SYSLOG_PID when _PID is missing or empty; only plain decimals here */
    int p = HAS(F_PID) && e->len[F_PID] > 0 ? F_PID : F_SPID;
    if (!HAS(p)) {
        strcpy(f->pid, "null");
    } else {
        Py_ssize_t n = e->len[p];
        if (n > 10)
            goto slow;
        long long v = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            unsigned char c = VAL(p)[i];
            if (c < '0' || c > '9')
                goto slow;
            v = v * 10 + (c - '0');
        }
        if (n == 0 || v >= (1LL << 31)) { /* int(b"") fails: no pid */
            strcpy(f->pid, "null");
        } else {
            char digits[12];
            int k = 0;
            do {
                digits[k++] = (char)('0' + v % 10);
                v /= 10;
            } while (v);
            for (int d = 0; d < k; d++)
                f->pid[d] = digits[k - 1 - d];
            f->pid[k] = 0;
        }
    }
    long long sec = (long long)(e->realtime / 1000000), ms = (long long)(e->realtime % 1000000) / 1000;
    if (sec >= 253402300800LL)
        goto slow;
    if (sec != sp->ts_sec) {
        struct tm tm;
        time_t t = (time_t)sec;
        if (gmtime_r(&t, &tm) == NULL)
            goto slow;
        snprintf(sp->ts_prefix, sizeof sp->ts_prefix, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        sp->ts_sec = sec;
    }
    size_t tl = strlen(sp->ts_prefix);
    memcpy(f->ts, sp->ts_prefix, tl);
    f->ts[tl] = '.';
    f->ts[tl + 1] = (char)('0' + ms / 100);
    f->ts[tl + 2] = (char)('0' + ms / 10 % 10);
    f->ts[tl + 3] = (char)('0' + ms % 10);
    f->ts[tl + 4] = 'Z';
    f->ts[tl + 5] = 0;
    uint8_t digest[16];
    blake2b_2(digest, 16, (const uint8_t *)"jd\x1f", 3, (const uint8_t *)e->cursor, strlen(e->cursor));
    for (int i = 0; i < 16; i++) {
        f->id[2 * i] = HEX[digest[i] >> 4];
        f->id[2 * i + 1] = HEX[digest[i] & 15];
    }
    f->id[32] = 0;
    esc->len = 0;
    if (put_escaped(esc, msg, (size_t)mlen) < 0)
        goto slow;
    f->esc_len = esc->len;
    return;
slow:
    f->slow = 1;
}


/* The fragment cache's key of an entry: each of (program, facility, unit, host, transport, boot
 * id, uid) as a 4-byte length (0xffffffff: absent) and its bytes; the program is the identifier,
 * or _COMM when that is missing or empty. */
static PyObject *key_of(const Entry *e, const Arena *arena) {
    int prog = HAS(F_IDENT) && e->len[F_IDENT] > 0 ? F_IDENT : F_COMM;
    const int parts[7] = {prog, F_FACILITY, F_UNIT, F_HOST, F_TRANSPORT, F_BOOT, F_UID};
    Py_ssize_t size = 0;
    for (int i = 0; i < 7; i++)
        size += 4 + (HAS(parts[i]) ? e->len[parts[i]] : 0);
    PyObject *key = PyBytes_FromStringAndSize(NULL, size);
    if (key == NULL)
        return NULL;
    unsigned char *k = (unsigned char *)PyBytes_AS_STRING(key);
    for (int i = 0; i < 7; i++) {
        uint32_t n = HAS(parts[i]) ? (uint32_t)e->len[parts[i]] : 0xffffffffU;
        for (int b = 0; b < 4; b++)
            *k++ = (unsigned char)(n >> (8 * b));
        if (HAS(parts[i])) {
            memcpy(k, VAL(parts[i]), (size_t)e->len[parts[i]]);
            k += e->len[parts[i]];
        }
    }
    return key;
}

/* ``head + id + '","ts":"' + ts + mid + message + frag head + pid + frag tail + '}}'`` */
static PyObject *event_of(PyObject *head, const Fast *f, PyObject *mid, const Arena *esc, PyObject *frag) {
    PyObject *fh = PyTuple_GET_ITEM(frag, 0), *ft = PyTuple_GET_ITEM(frag, 1);
    size_t idn = 32, tsn = strlen(f->ts), pidn = strlen(f->pid);
    Py_ssize_t n = PyBytes_GET_SIZE(head) + (Py_ssize_t)(idn + 8 + tsn) + PyBytes_GET_SIZE(mid) + (Py_ssize_t)f->esc_len
                   + PyBytes_GET_SIZE(fh) + (Py_ssize_t)pidn + PyBytes_GET_SIZE(ft) + 2;
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL)
        return NULL;
    char *o = PyBytes_AS_STRING(out);
#define PUT(p, len) do { memcpy(o, (p), (len)); o += (len); } while (0)
    PUT(PyBytes_AS_STRING(head), (size_t)PyBytes_GET_SIZE(head));
    PUT(f->id, idn);
    PUT("\",\"ts\":\"", 8);
    PUT(f->ts, tsn);
    PUT(PyBytes_AS_STRING(mid), (size_t)PyBytes_GET_SIZE(mid));
    PUT(esc->buf, f->esc_len);
    PUT(PyBytes_AS_STRING(fh), (size_t)PyBytes_GET_SIZE(fh));
    PUT(f->pid, pidn);
    PUT(PyBytes_AS_STRING(ft), (size_t)PyBytes_GET_SIZE(ft));
    PUT("}}", 2);
#undef PUT
    return out;
}

static int spec_init(Spec *sp, PyObject *spec, PyObject **heads, PyObject **mids) {
    PyObject *words, *masks, *exceptions, *hs, *ms, *prefixes;
    if (!PyArg_ParseTuple(spec, "nnO!O!OOOO!:spec", &sp->max_pri, &sp->message_cap, &PyTuple_Type, &hs,
                          &PyTuple_Type, &ms, &words, &masks, &exceptions, &PyTuple_Type, &prefixes))
        return -1;
    if (PyTuple_GET_SIZE(hs) != 8 || PyTuple_GET_SIZE(ms) != 8 || PyTuple_GET_SIZE(prefixes) > 16) {
        PyErr_SetString(PyExc_ValueError, "spec: 8 heads, 8 mids, at most 16 prefixes");
        return -1;
    }
    for (int i = 0; i < 8; i++) {
        heads[i] = PyTuple_GET_ITEM(hs, i);
        mids[i] = PyTuple_GET_ITEM(ms, i);
        if ((heads[i] != Py_None && !PyBytes_Check(heads[i])) || !PyBytes_Check(mids[i])) {
            PyErr_SetString(PyExc_TypeError, "spec: heads are bytes or None, mids bytes");
            return -1;
        }
    }
    sp->n_prefixes = PyTuple_GET_SIZE(prefixes);
    for (Py_ssize_t i = 0; i < sp->n_prefixes; i++) {
        PyObject *p = PyTuple_GET_ITEM(prefixes, i);
        if (!PyBytes_Check(p)) {
            PyErr_SetString(PyExc_TypeError, "spec: prefixes are bytes");
            return -1;
        }
        sp->prefix[i] = PyBytes_AS_STRING(p);
        sp->prefix_len[i] = PyBytes_GET_SIZE(p);
    }
    sp->ts_sec = -1;
    return triggers_init(&sp->trig, words, masks, exceptions);
}

typedef struct {
    Spec *sp;
    Arena *esc;
    Fast *f;
} FastCtx;

static void fast_then(const Entry *e, const Arena *arena, void *ctx) {
    FastCtx *c = ctx;
    fast_of(e, arena, c->sp, c->esc, c->f);
}

PyObject *read_events(PyObject *self, PyObject *args) {
    PyObject *reader, *fields, *spec, *frags, *heads[8], *mids[8];
    Py_ssize_t max_entries, max_bytes;
    int pending;
    Spec sp;
    if (!PyArg_ParseTuple(args, "OO!OnnpO!:read_events", &reader, &PyTuple_Type, &fields, &spec, &max_entries,
                          &max_bytes, &pending, &PyDict_Type, &frags) || spec_init(&sp, spec, heads, mids) < 0)
        return NULL;
    sd_journal *j = journal_of(reader);
    FieldSet fs;
    Py_ssize_t nf = PyTuple_GET_SIZE(fields);
    if (j == NULL || field_names(fields, &fs) < 0)
        return NULL;
    if (nf < F_FIXED) {
        PyErr_SetString(PyExc_ValueError, "read_events: the fields start with rows.py's FIELDS");
        return NULL;
    }
    PyObject *out = PyList_New(0), *hits = PyList_New(0), *slow = PyList_New(0);
    Arena arena = {NULL, 0, 0}, esc = {NULL, 0, 0};
    Entry e;
    Fast f;
    char *last = NULL; /* the cursor of the last entry read */
    int at_end = 0, err = 0;
    Py_ssize_t n = 0, nbytes = 0;
    if (out == NULL || hits == NULL || slow == NULL)
        goto fail;
    while (n < max_entries && nbytes < max_bytes) {
        FastCtx ctx = {&sp, &esc, &f};
        int r = next_entry(j, pending, &fs, F_MESSAGE, &arena, &e, fast_then, &ctx);
        pending = 0;
        if (r <= 0 || e.error < 0) {
            if (r > 0) {
                free(e.cursor);
                if (n > 0) /* the entries so far are returned; the next call reads this one again */
                    sd_journal_previous(j);
            }
            err = r < 0 ? r : e.error;
            at_end = r == 0;
            break;
        }
        n++;
        nbytes += (Py_ssize_t)(e.message_len < (size_t)sp.message_cap ? e.message_len : (size_t)sp.message_cap);
        free(last);
        last = e.cursor;
        if (f.skip)
            continue;
        PyObject *key = key_of(&e, &arena);
        PyObject *frag = key ? PyDict_GetItemWithError(frags, key) : NULL;
        if (key == NULL || (frag == NULL && PyErr_Occurred())) {
            Py_XDECREF(key);
            goto fail;
        }
        int fast = !f.slow && frag != NULL && PyTuple_Check(frag) && PyTuple_GET_SIZE(frag) == 3
                   && !PyObject_IsTrue(PyTuple_GET_ITEM(frag, 2));
        if (fast && heads[f.pri] == Py_None) { /* the filter drops the level, no deriver wants it */
            Py_DECREF(key);
            continue;
        }
        Py_ssize_t slot = PyList_GET_SIZE(out);
        PyObject *item = NULL, *extra = NULL;
        if (fast) {
            item = event_of(heads[f.pri], &f, mids[f.pri], &esc, frag);
            if (item != NULL && f.hit) { /* (slot, where its message's JSON starts, its length, the message) */
                Py_ssize_t at = PyBytes_GET_SIZE(heads[f.pri]) + 40 + (Py_ssize_t)strlen(f.ts)
                                + PyBytes_GET_SIZE(mids[f.pri]);
                const char *m = e.off[F_MESSAGE] >= 0 ? arena.buf + e.off[F_MESSAGE] : "";
                PyObject *text = PyUnicode_DecodeASCII(m, e.off[F_MESSAGE] >= 0 ? e.len[F_MESSAGE] : 0, "strict");
                extra = text ? Py_BuildValue("(nnnN)", slot, at, (Py_ssize_t)f.esc_len, text) : NULL;
                if (extra == NULL || PyList_Append(hits, extra) < 0)
                    Py_CLEAR(item);
            }
        } else { /* None in its slot, and (slot, row, key) for the Python loop */
            PyObject *row = row_of(&e, nf, &arena);
            extra = row ? Py_BuildValue("(nNO)", slot, row, key) : NULL;
            if (extra != NULL && PyList_Append(slow, extra) == 0) {
                item = Py_None;
                Py_INCREF(item);
            }
        }
        Py_DECREF(key);
        Py_XDECREF(extra);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            goto fail;
        }
        Py_DECREF(item);
    }
    free(arena.buf);
    free(esc.buf);
    if (err < 0 && n == 0) {
        free(last);
        Py_DECREF(out);
        Py_DECREF(hits);
        Py_DECREF(slow);
        errno = -err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *cursor = last ? PyUnicode_DecodeUTF8(last, (Py_ssize_t)strlen(last), "replace") : Py_None;
    if (last == NULL)
        Py_INCREF(cursor);
    free(last);
    if (cursor == NULL)
        goto fail_returned;
    return Py_BuildValue("(NNNiNn)", out, hits, slow, at_end, cursor, n);
fail:
    free(last);
    free(arena.buf);
    free(esc.buf);
fail_returned:
    Py_XDECREF(out);
    Py_XDECREF(hits);
    Py_XDECREF(slow);
    return NULL;
}

/* blake2b16(data) -> the 16-byte digest, as hashlib.blake2b(data, digest_size=16) (for the tests) */
PyObject *blake2b16(PyObject *self, PyObject *arg) {
    Py_buffer b;
    uint8_t digest[16];
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    blake2b_2(digest, 16, b.buf, (size_t)b.len, NULL, 0);
    PyBuffer_Release(&b);
    return PyBytes_FromStringAndSize((const char *)digest, 16);
}

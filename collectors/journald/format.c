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
    size_t esc_off, esc_len; /* the escaped message's JSON in the batch's esc arena */
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
    f->esc_off = esc->len;
    if (put_escaped(esc, msg, (size_t)mlen) < 0)
        goto slow;
    f->esc_len = esc->len - f->esc_off;
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
    PUT(esc->buf + f->esc_off, f->esc_len);
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

/* Entries read per release of the GIL, and the most field bytes such a batch holds: one release
 * per entry cost the reader most of its speed whenever the event loop's thread was busy (each
 * time, it waited for that thread to hand the GIL back). */
#define BATCH 64
#define BATCH_BYTES (1 << 20)

typedef struct {
    Entry e;
    Fast f;
} Slot;

/* Without the GIL: read up to ``want`` entries into ``slots`` (their fields in ``arena``, their
 * escaped messages in ``esc``), stopping after an entry that fails to read, once ``*nbytes`` of
 * messages reach ``max_bytes`` or the batch's bytes BATCH_BYTES; the number read, and in ``*r``
 * sd_journal_next's last answer (1: stopped with entries to come, 0: the end, < 0: an error). */
static Py_ssize_t read_batch(sd_journal *j, int *pending, const FieldSet *fs, Arena *arena, Arena *esc, Spec *sp,
                             Slot *slots, Py_ssize_t want, Py_ssize_t max_bytes, Py_ssize_t *nbytes, int *r) {
    Py_ssize_t got = 0;
    arena->len = esc->len = 0;
    *r = 1;
    while (got < want && *nbytes < max_bytes && arena->len + esc->len < BATCH_BYTES) {
        Slot *s = &slots[got];
        *r = step_entry(j, *pending, fs, F_MESSAGE, arena, &s->e);
        *pending = 0;
        if (*r <= 0)
            break;
        got++;
        if (s->e.error < 0)
            break;
        fast_of(&s->e, arena, sp, esc, &s->f);
        *nbytes += (Py_ssize_t)(s->e.message_len < (size_t)sp->message_cap ? s->e.message_len : (size_t)sp->message_cap);
    }
    return got;
}

static void free_cursors(Slot *slots, Py_ssize_t from, Py_ssize_t to) {
    for (Py_ssize_t k = from; k < to; k++)
        free(slots[k].e.cursor);
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
    Slot *slots = malloc(sizeof(Slot) * BATCH);
    char *last = NULL; /* the cursor of the last entry read */
    int at_end = 0, err = 0, done = 0;
    Py_ssize_t n = 0, nbytes = 0, k = 0, got = 0;
    if (out == NULL || hits == NULL || slow == NULL || slots == NULL)
        goto fail;
    while (!done && n < max_entries && nbytes < max_bytes) {
        int r;
        Py_BEGIN_ALLOW_THREADS
        got = read_batch(j, &pending, &fs, &arena, &esc, &sp, slots, max_entries - n < BATCH ? max_entries - n : BATCH,
                         max_bytes, &nbytes, &r);
        Py_END_ALLOW_THREADS
        for (k = 0; k < got; k++) {
            Entry *ep = &slots[k].e;
            Fast *fp = &slots[k].f;
            if (ep->error < 0) { /* the last of the batch */
                free(ep->cursor);
                if (n > 0) /* the entries so far are returned; the next call reads this one again */
                    sd_journal_previous(j);
                err = ep->error;
                done = 1;
                break;
            }
            n++;
            free(last);
            last = ep->cursor;
            if (fp->skip)
                continue;
            PyObject *key = key_of(ep, &arena);
            PyObject *frag = key ? PyDict_GetItemWithError(frags, key) : NULL;
            if (key == NULL || (frag == NULL && PyErr_Occurred())) {
                Py_XDECREF(key);
                goto fail_batch;
            }
            int fast = !fp->slow && frag != NULL && PyTuple_Check(frag) && PyTuple_GET_SIZE(frag) == 3
                       && !PyObject_IsTrue(PyTuple_GET_ITEM(frag, 2));
            if (fast && heads[fp->pri] == Py_None) { /* the filter drops the level, no deriver wants it */
                Py_DECREF(key);
                continue;
            }
            Py_ssize_t slot = PyList_GET_SIZE(out);
            PyObject *item = NULL, *extra = NULL;
            if (fast) {
                item = event_of(heads[fp->pri], fp, mids[fp->pri], &esc, frag);
                if (item != NULL && fp->hit) { /* (slot, where its message's JSON starts, its length, the message) */
                    Py_ssize_t at = PyBytes_GET_SIZE(heads[fp->pri]) + 40 + (Py_ssize_t)strlen(fp->ts)
                                    + PyBytes_GET_SIZE(mids[fp->pri]);
                    const char *m = ep->off[F_MESSAGE] >= 0 ? arena.buf + ep->off[F_MESSAGE] : "";
                    PyObject *text = PyUnicode_DecodeASCII(m, ep->off[F_MESSAGE] >= 0 ? ep->len[F_MESSAGE] : 0, "strict");
                    extra = text ? Py_BuildValue("(nnnN)", slot, at, (Py_ssize_t)fp->esc_len, text) : NULL;
                    if (extra == NULL || PyList_Append(hits, extra) < 0)
                        Py_CLEAR(item);
                }
            } else { /* None in its slot, and (slot, row, key) for the Python loop */
                PyObject *row = row_of(ep, nf, &arena);
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
                goto fail_batch;
            }
            Py_DECREF(item);
        }
        got = 0;
        if (r <= 0) {
            err = r < 0 ? r : err;
            at_end = r == 0;
            done = 1;
        }
    }
    free(slots);
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
fail_batch:
    free_cursors(slots, k + 1, got);
fail:
    free(slots);
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

/* The syslog file collector's hot loop in C: a block of rsyslog's RFC 3339 lines (Debian's
 * /var/log/syslog) finished as event JSON, exactly as collector.py's block path (bulk.py's
 * BLOCK_ISO, StampCache, encode.system_log_block) makes them.
 *
 * iso_block(block, at, spec, heads, seconds, learn_head, learn_second)
 *     -> (events, hits, last_second, last_ms) or None
 *
 * Each line is read as BLOCK_ISO reads it: ``YYYY-MM-DDTHH:MM:SS``, an optional fraction of 1-9
 * digits (its first three are the milliseconds), a zone (``Z`` or ``+HH:MM``), a space, the
 * host (1-256 bytes, no white space), a space, an optional tag ``[ *-- ]prog[\]][ ver][[pid]][
 * (sub)]:[ ]`` with the regex's lengths and classes, tried in the regex's order, and the message
 * to the end of the line. The header (zone to the tag's end) is looked up in ``heads``: where
 * its pid is a plain number (1-9 digits, no leading zero), first without the pid's digits after
 * a NUL byte (bulk.py's pidless) -> (JSON fragment before the pid, after it, gated), then whole
 * -> (JSON fragment, gated); and the stamp in ``seconds[zone]`` (stamp -> ``YYYY-MM-DDTHH:MM:SS.``
 * UTC, or None for an impossible date); one not there yet is made by Python,
 * ``learn_head(header)`` and ``learn_second(stamp, zone)``, which add it. None (nothing made)
 * when any line is of another shape, longer than the cap, has an impossible date, or is wanted
 * by a deriver (a gated header, a message prefix): Python then reads the block. ``hits``: (slot, offset, length, message) of each message redaction must look
 * at (a trigger word, or not ASCII), its JSON being events[slot][offset:offset + length].
 *
 * spec: (head, mid, max_line, trigger words, masks, exceptions, deriver message prefixes) where
 * an event is head + offset + '","ts":"' + second + ms + mid + fragment + ',"message":' +
 * message + '}}'.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "cbuf.h"
#include "triggers.h"

/* bytes that end a host or a program: white space, and any byte of a multi-byte character */
static int ws(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f) || c >= 0x80; }
static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static int prog_byte(unsigned char c) { return !ws(c) && c != '[' && c != ']' && c != ':'; }
static int ver_byte(unsigned char c) {
    return is_digit(c) || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' || c == '.' || c == '+' || c == '~'
           || c == '-';
}
static int sub_byte(unsigned char c) { return (c >= '!' && c <= '\'') || (c >= '*' && c <= '~'); }

/* The length of the longest run of bytes of a class from p (at most max; more: -1, as a regex
 * {min,max} then fails, the next byte being of the class too). */
static Py_ssize_t run(const unsigned char *p, const unsigned char *end, int (*cls)(unsigned char), Py_ssize_t max) {
    Py_ssize_t n = 0;
    while (p + n < end && cls(p[n]))
        if (++n > max)
            return -1;
    return n;
}

/* The end of the tag from p after its optional "[ *-- ]" part (NULL: this way fails), trying
 * each optional piece present first, as the regex does; ``*pid`` the pid's first byte (NULL:
 * none) and ``*pid_len`` its length. */
static const unsigned char *tag_rest(const unsigned char *p, const unsigned char *end, const unsigned char **pid_at,
                                     Py_ssize_t *pid_len) {
    Py_ssize_t n = run(p, end, prog_byte, 256);
    if (n < 1)
        return NULL;
    const unsigned char *q0 = p + n;
    for (int bracket = 1; bracket >= 0; bracket--) {
        const unsigned char *q1 = q0;
        if (bracket) {
            if (q1 < end && *q1 == ']')
                q1++;
            else
                continue;
        }
        for (int ver = 1; ver >= 0; ver--) {
            const unsigned char *q2 = q1;
            if (ver) {
                if (q2 + 1 < end && *q2 == ' ' && is_digit(q2[1])) {
                    Py_ssize_t v = run(q2 + 2, end, ver_byte, 63);
                    if (v < 0)
                        continue;
                    q2 += 2 + v;
                } else {
                    continue;
                }
            }
            for (int pid = 1; pid >= 0; pid--) {
                const unsigned char *q3 = q2;
                Py_ssize_t k = 0;
                if (pid) {
                    if (q3 < end && *q3 == '[') {
                        while (q3 + 1 + k < end && !ws(q3[1 + k]) && q3[1 + k] != ']' && k <= 32)
                            k++;
                        if (k > 32 || q3 + 1 + k >= end || q3[1 + k] != ']')
                            continue;
                        q3 += 2 + k;
                    } else {
                        continue;
                    }
                }
                for (int sub = 1; sub >= 0; sub--) {
                    const unsigned char *q4 = q3;
                    if (sub) {
                        if (q4 + 1 < end && q4[0] == ' ' && q4[1] == '(') {
                            Py_ssize_t k = run(q4 + 2, end, sub_byte, 256);
                            if (k < 1 || q4 + 2 + k >= end || q4[2 + k] != ')')
                                continue;
                            q4 += 3 + k;
                        } else {
                            continue;
                        }
                    }
                    if (q4 < end && *q4 == ':') {
                        *pid_at = pid ? q2 + 1 : NULL;
                        *pid_len = pid ? k : 0;
                        return q4 + 1 + (q4 + 1 < end && q4[1] == ' ');
                    }
                }
            }
        }
    }
    return NULL;
}

typedef struct {
    const unsigned char *stamp, *frac, *head, *head_end, *msg, *end, *pid;
    Py_ssize_t frac_len, zone_len, pid_len;
} Parsed;

/* One line (p to end, no newline) as BLOCK_ISO reads it; 0 when it is of another shape. */
static int parse_line(const unsigned char *p, const unsigned char *end, Parsed *o) {
    static const char shape[] = "dddd-dd-ddTdd:dd:dd";
    if (end - p < 19)
        return 0;
    for (int i = 0; i < 19; i++)
        if (shape[i] == 'd' ? !is_digit(p[i]) : p[i] != (unsigned char)shape[i])
            return 0;
    o->stamp = p;
    const unsigned char *q = p + 19;
    o->frac = q;
    o->frac_len = 0;
    if (q < end && *q == '.') {
        Py_ssize_t k = 0;
        while (q + 1 + k < end && is_digit(q[1 + k]))
            k++;
        if (k < 1 || k > 9)
            return 0;
        o->frac = q + 1;
        o->frac_len = k < 3 ? k : 3;
        q += 1 + k;
    }
    o->head = q;
    if (q < end && *q == 'Z') {
        o->zone_len = 1;
    } else if (end - q >= 6 && (*q == '+' || *q == '-') && is_digit(q[1]) && is_digit(q[2]) && q[3] == ':' && is_digit(q[4])
               && is_digit(q[5])) {
        o->zone_len = 6;
    } else {
        return 0;
    }
    q += o->zone_len;
    if (q >= end || *q != ' ')
        return 0;
    q++;
    Py_ssize_t host = 0;
    while (q + host < end && !ws(q[host]))
        if (++host > 256)
            return 0;
    if (host < 1 || q + host >= end || q[host] != ' ')
        return 0;
    q += host + 1;
    /* the optional tag: with its " *-- " part, then without it, then none at all */
    const unsigned char *t = NULL, *s = q;
    o->pid = NULL;
    o->pid_len = 0;
    while (s < end && *s == ' ')
        s++;
    if (end - s >= 3 && s[0] == '-' && s[1] == '-' && s[2] == ' ')
        t = tag_rest(s + 3, end, &o->pid, &o->pid_len);
    if (t == NULL)
        t = tag_rest(q, end, &o->pid, &o->pid_len);
    if (t == NULL)
        t = q;
    o->head_end = t;
    o->msg = t;
    o->end = end;
    return 1;
}

static PyObject *iso_block(PyObject *self, PyObject *args) {
    Py_buffer b;
    Py_ssize_t at, max_line;
    PyObject *spec, *heads, *seconds, *learn_head, *learn_second, *head, *mid, *words, *masks, *exceptions, *prefixes;
    if (!PyArg_ParseTuple(args, "y*nO!O!O!OO:iso_block", &b, &at, &PyTuple_Type, &spec, &PyDict_Type, &heads,
                          &PyDict_Type, &seconds, &learn_head, &learn_second))
        return NULL;
    Triggers trig;
    /* last_sec and frag are held, not borrowed: the Python called for a second not met yet may
     * clear the caches they come from */
    PyObject *events = NULL, *hits = NULL, *out = NULL, *last_sec = NULL, *frag = NULL, *zone_key = NULL;
    Arena esc = {NULL, 0, 0};
    char ms[3] = {'0', '0', '0'};
    if (!PyArg_ParseTuple(spec, "O!O!nOOOO!:spec", &PyBytes_Type, &head, &PyBytes_Type, &mid, &max_line, &words, &masks,
                          &exceptions, &PyTuple_Type, &prefixes)
        || triggers_init(&trig, words, masks, exceptions) < 0)
        goto done;
    events = PyList_New(0);
    hits = PyList_New(0);
    if (events == NULL || hits == NULL)
        goto done;
    const unsigned char *p = b.buf, *end = p + b.len;
    while (p < end) {
        const unsigned char *nl = memchr(p, '\n', (size_t)(end - p));
        Parsed o;
        if (nl == NULL || nl - p > max_line || !parse_line(p, nl, &o))
            goto refuse;
        /* the header's fragment, and whether a deriver wants its program: by the header without
         * its pid where that is a plain number, as (before the pid, after it, gated), else by the
         * whole header, as (fragment, gated) */
        Py_ssize_t hlen = o.head_end - o.head, plen = o.pid_len;
        int plain = o.pid != NULL && plen >= 1 && plen <= 9 && (o.pid[0] != '0' || plen == 1);
        for (Py_ssize_t i = 0; plain && i < plen; i++)
            plain = is_digit(o.pid[i]);
        PyObject *hk = PyBytes_FromStringAndSize((const char *)o.head, hlen), *pk = NULL;
        if (hk != NULL && plain) {
            Py_ssize_t before = o.pid - o.head;
            pk = PyBytes_FromStringAndSize(NULL, 1 + hlen - plen);
            if (pk != NULL) {
                char *k = PyBytes_AS_STRING(pk);
                k[0] = 0;
                memcpy(k + 1, o.head, (size_t)before);
                memcpy(k + 1 + before, o.pid + plen, (size_t)(hlen - before - plen));
            }
        }
        PyObject *hv = NULL;
        if (hk != NULL && (pk != NULL || !plain)) {
            for (int tries = 0; tries < 2 && hv == NULL && !PyErr_Occurred(); tries++) {
                if (tries) { /* a header not met yet: Python reads it (and keeps it) */
                    PyObject *learned = PyObject_CallOneArg(learn_head, hk);
                    if (learned == NULL)
                        break;
                    Py_DECREF(learned);
                }
                hv = pk ? PyDict_GetItemWithError(heads, pk) : NULL;
                if (hv == NULL && !PyErr_Occurred())
                    hv = PyDict_GetItemWithError(heads, hk);
            }
        }
        Py_XDECREF(hk);
        Py_XDECREF(pk);
        if (hv == NULL) {
            if (PyErr_Occurred())
                goto done;
            goto refuse;
        }
        Py_ssize_t nv = PyTuple_Check(hv) ? PyTuple_GET_SIZE(hv) : 0;
        if ((nv != 2 && nv != 3) || (nv == 3 && !plain) || !PyBytes_Check(PyTuple_GET_ITEM(hv, 0))
            || (nv == 3 && !PyBytes_Check(PyTuple_GET_ITEM(hv, 1))) || PyObject_IsTrue(PyTuple_GET_ITEM(hv, nv - 1)))
            goto refuse;
        Py_XSETREF(frag, Py_NewRef(hv)); /* held: its pieces stay valid */
        PyObject *fa = PyTuple_GET_ITEM(frag, 0), *fb = nv == 3 ? PyTuple_GET_ITEM(frag, 1) : NULL;
        Py_ssize_t frag_len = PyBytes_GET_SIZE(fa) + (fb ? plen + PyBytes_GET_SIZE(fb) : 0);
        Py_ssize_t mlen = o.end - o.msg;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(prefixes); i++) {
            PyObject *px = PyTuple_GET_ITEM(prefixes, i);
            if (PyBytes_Check(px) && PyBytes_GET_SIZE(px) <= mlen
                && memcmp(o.msg, PyBytes_AS_STRING(px), (size_t)PyBytes_GET_SIZE(px)) == 0)
                goto refuse;
        }
        /* the stamp's second, in its zone */
        Py_XDECREF(zone_key);
        zone_key = PyBytes_FromStringAndSize((const char *)o.head, o.zone_len);
        if (zone_key == NULL)
            goto done;
        PyObject *sk = PyBytes_FromStringAndSize((const char *)o.stamp, 19);
        if (sk == NULL)
            goto done;
        PyObject *zone = PyDict_GetItemWithError(seconds, zone_key);
        PyObject *sec = zone != NULL && PyDict_Check(zone) ? PyDict_GetItemWithError(zone, sk) : NULL;
        if (sec == NULL && !PyErr_Occurred()) { /* a second not met yet: Python dates it (and keeps it) */
            PyObject *learned = PyObject_CallFunctionObjArgs(learn_second, sk, zone_key, NULL);
            Py_XDECREF(learned);
            zone = learned ? PyDict_GetItemWithError(seconds, zone_key) : NULL;
            sec = zone != NULL && PyDict_Check(zone) ? PyDict_GetItemWithError(zone, sk) : NULL;
        }
        Py_DECREF(sk);
        if (sec == NULL || !PyBytes_Check(sec)) { /* an impossible date (None): the line parser's */
            if (PyErr_Occurred())
                goto done;
            goto refuse;
        }
        Py_XSETREF(last_sec, Py_NewRef(sec)); /* held from here: sec stays valid */
        ms[0] = ms[1] = ms[2] = '0';
        memcpy(ms, o.frac, (size_t)o.frac_len);
        /* the message: redaction looks at it in Python when it holds a trigger word or is not ASCII */
        int ascii = 1;
        for (Py_ssize_t i = 0; i < mlen && ascii; i++)
            ascii = o.msg[i] < 0x80;
        int hit = !ascii || triggers_mask(&trig, o.msg, mlen) != 0;
        esc.len = 0;
        if (put_escaped(&esc, o.msg, (size_t)mlen) < 0) {
            PyErr_NoMemory();
            goto done;
        }
        char offset[24];
        int offn = snprintf(offset, sizeof offset, "%zd", at + (Py_ssize_t)(p - (const unsigned char *)b.buf));
        Py_ssize_t msg_at = PyBytes_GET_SIZE(head) + offn + 8 + PyBytes_GET_SIZE(sec) + 3 + PyBytes_GET_SIZE(mid)
                            + frag_len + 11;
        PyObject *ev = PyBytes_FromStringAndSize(NULL, msg_at + (Py_ssize_t)esc.len + 2);
        if (ev == NULL)
            goto done;
        char *w = PyBytes_AS_STRING(ev);
#define PUT(src, len) do { memcpy(w, (src), (size_t)(len)); w += (len); } while (0)
        PUT(PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head));
        PUT(offset, offn);
        PUT("\",\"ts\":\"", 8);
        PUT(PyBytes_AS_STRING(sec), PyBytes_GET_SIZE(sec));
        PUT(ms, 3);
        PUT(PyBytes_AS_STRING(mid), PyBytes_GET_SIZE(mid));
        PUT(PyBytes_AS_STRING(fa), PyBytes_GET_SIZE(fa));
        if (fb != NULL) {
            PUT(o.pid, plen);
            PUT(PyBytes_AS_STRING(fb), PyBytes_GET_SIZE(fb));
        }
        PUT(",\"message\":", 11);
        PUT(esc.buf, esc.len);
        PUT("}}", 2);
#undef PUT
        Py_ssize_t slot = PyList_GET_SIZE(events);
        int bad = PyList_Append(events, ev) < 0;
        Py_DECREF(ev);
        if (bad)
            goto done;
        if (hit) {
            PyObject *text = PyUnicode_DecodeUTF8((const char *)o.msg, mlen, "strict");
            PyObject *h = text ? Py_BuildValue("(nnnN)", slot, msg_at, (Py_ssize_t)esc.len, text) : NULL;
            if (h == NULL || PyList_Append(hits, h) < 0) {
                Py_XDECREF(h);
                goto done;
            }
            Py_DECREF(h);
        }
        p = nl + 1;
    }
    out = Py_BuildValue("(OOOy#)", events, hits, last_sec ? last_sec : Py_None, ms, (Py_ssize_t)3);
    goto done;
refuse:
    out = Py_None;
    Py_INCREF(out);
done:
    Py_XDECREF(zone_key);
    Py_XDECREF(frag);
    Py_XDECREF(last_sec);
    Py_XDECREF(events);
    Py_XDECREF(hits);
    free(esc.buf);
    PyBuffer_Release(&b);
    return out;
}

static PyMethodDef methods[] = {
    {"iso_block", iso_block, METH_VARARGS,
     "iso_block(block, at, spec, heads, seconds, learn_head, learn_second)\n"
     "    -> (events, hits, last_second, last_ms) or None\n\n"
     "A block of RFC 3339 syslog lines as event JSON (see the file's comment); None: Python reads it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_lines", NULL, -1, methods};

PyMODINIT_FUNC PyInit__lines(void) { return PyModule_Create(&module); }

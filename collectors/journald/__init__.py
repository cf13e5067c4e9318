"""The journald collector: reads the systemd journal into ``system_log`` events, cursor-checkpointed.

Reading uses systemd-python's low-level ``_Reader``; entries come as rows of the fields used
(``rows.py``): from the compiled reader, one call per chunk with the GIL released for the
libsystemd work, or from the pure-Python one (``_get_all`` per entry) where it is not built.
``bench/journald.py`` measures both. All reader calls run in one dedicated thread, so the event
loop stays responsive and the (not thread-safe) ``sd_journal`` handle is only ever used by one
thread at a time. Entries become finished event
JSON on the pipeline's fast path (``agent.pipeline.encode``: the chain's server, level filter
and redaction), derived events through the chain (``CollectorContext.with_derived``).

Resuming: the saved cursor always wins over ``start_at``. If its entry was vacuumed away, reading
resumes at the oldest entry after it, and the gap is logged and counted (``journal_gap``).
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import time
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import orjson

from agent.collector import Collector, CollectorContext, ReaderThread
from agent.config import LEVELS, JournaldConfig
from agent.pipeline.encode import TRUNCATION_MARKER, Prepared, redact_hits, segments_of
from agent.typing import Checkpoint, Event, Item, LineGate
from collectors.derivers.provenance import with_journal_sender
from collectors.journald.fields import FACILITIES as FACILITIES  # re-exported for the tests
from collectors.journald.fields import fragment, pid_json
from collectors.journald.rows import FIELDS, FIELDS_B, EventReader, RowReader, choose, events

#: entries (and message bytes) read per emitted chunk
CHUNK_ENTRIES = 2000
CHUNK_BYTES = 4 * 1024 * 1024
#: how long one blocking ``wait`` in the reader thread may last (µs); bounds shutdown latency
WAIT_USEC = 500_000

_PRIORITY_BY_BYTES = {str(i).encode(): i for i in range(8)}
#: ``stable_id("jd", cursor)`` is blake2b over ``b"jd\x1f" + cursor``; the seed holds the prefix
_ID_SEED = hashlib.blake2b(b"jd\x1f", digest_size=16)
#: serialized (program, pid, facility, extra …) fragments kept before the cache starts over
_FRAG_CACHE_MAX = 8192
_TRUNCATED = b',"truncated":true'
_MS = [b".%03dZ" % i for i in range(1000)]


def cursor_seqnum(cursor: str) -> tuple[str, int] | None:
    """``(seqnum_id, seqnum)`` of a journal cursor (``s=…;i=…;…``), or None if it lacks them."""
    parts = dict(p.split("=", 1) for p in cursor.split(";") if "=" in p)
    try:
        return parts["s"], int(parts["i"], 16)
    except (KeyError, ValueError):
        return None


def _second_prefix(sec: int) -> bytes:
    """``YYYY-MM-DDTHH:MM:SS`` (UTC, ASCII bytes) of epoch seconds; the event's ``ts`` adds ``.mmmZ``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode()


@dataclass
class _Chunk:
    #: finished events as ``(kind, JSON)``
    items: list[Item] = field(default_factory=list)
    #: lines for the derivers: ``(items up to and including the line, event dict)``
    derive: list[tuple[int, Event]] = field(default_factory=list)
    cursor: str | None = None
    truncated: int = 0
    #: the reader is at the end of the journal (nothing more to read right now)
    at_end: bool = False


class JournaldCollector(Collector):
    """Reads journal entries, maps them to ``system_log`` events and checkpoints the cursor."""

    name = "journald"

    def __init__(self, config: JournaldConfig, ctx: CollectorContext) -> None:
        super().__init__(config, ctx)
        self.source = f"journald:{config.directory or 'system'}"
        self._thread = ReaderThread("journald")
        self._reader: Any = None
        #: the reader sits on an unread entry (after resuming past a gap)
        self._pending = False
        self._max_priority = LEVELS.index(config.min_level)
        self._exclude_units = {u.encode() for u in config.exclude_units}
        self._exclude_idents = {i.encode() for i in config.exclude_identifiers}
        self._names: dict[bytes, str] = {}
        self._frags: dict[tuple[bytes | None, ...], tuple[bytes, bytes, str, dict[str, Any]]] = {}
        self._pids: dict[bytes | None, tuple[bytes, int | None]] = {}
        self._src_name = config.directory or "journald"
        self.entries_read = 0
        #: entries the compiled formatter finished (the rest went through the Python loop)
        self.entries_formatted = 0
        #: how entries are read (rows.py): the compiled reader where it is built, else Python's
        self._rows: RowReader
        self.row_reader = ""
        self._row_reader_refusal: str | None = None
        #: the compiled formatter (rows.events) where the row reader is the compiled one, and its
        #: cache of serialized fragments by its own key of the raw values: (head, tail, gated)
        self._events: EventReader | None = None
        self._fast_frags: dict[bytes, tuple[bytes, bytes, bool]] = {}

    # ------------------------------------------------------------------ reader thread side

    def _open(self) -> Any:
        import systemd.journal as journal

        cfg: JournaldConfig = self.config
        if cfg.directory:
            r = journal._Reader(0, cfg.directory)
        else:
            r = journal._Reader(journal.LOCAL_ONLY)
        # fields longer than this come back cut; we cut (and mark) at max_message_bytes
        r.data_threshold = cfg.max_message_bytes + 1
        for u in cfg.units:
            r.add_match(f"_SYSTEMD_UNIT={u}")
        if cfg.units and cfg.identifiers:
            r.add_disjunction()
        for i in cfg.identifiers:
            r.add_match(f"SYSLOG_IDENTIFIER={i}")
        if cfg.this_boot_only:
            import systemd.id128 as id128

            if cfg.units or cfg.identifiers:
                r.add_conjunction()
            r.add_match(f"_BOOT_ID={id128.get_boot().hex}")
        self.row_reader, self._rows, self._row_reader_refusal = choose(r)
        self._events = events() if self.row_reader == "compiled" else None
        return r

    def _position(self, saved: str | None) -> tuple[str, dict[str, Any]]:
        """Place the reader; returns what happened (``cursor``/``gap``/``head``/``tail``) and details."""
        r = self._reader
        cfg: JournaldConfig = self.config
        if saved:
            try:
                r.seek_cursor(saved)
            except (ValueError, OSError) as exc:
                r.seek_head()
                return "bad_cursor", {"cursor": saved, "error": str(exc)}
            if not r._next():
                # the saved entry is gone and nothing follows it yet: wait for new entries there
                return "gap", {"cursor": saved, "lost": None, "resumed_at": None}
            if r.test_cursor(saved):
                return "cursor", {"cursor": saved}
            # the saved entry was vacuumed: we sit on the oldest entry after it, still unread
            self._pending = True
            now = r._get_cursor()
            old, new = cursor_seqnum(saved), cursor_seqnum(now)
            lost = new[1] - old[1] - 1 if old and new and old[0] == new[0] and new[1] > old[1] else None
            return "gap", {"cursor": saved, "lost": lost, "resumed_at": now}
        if cfg.start_at == "end":
            r.seek_tail()
            if r._previous():
                return "tail", {"cursor": r._get_cursor()}
        r.seek_head()
        return "head", {}

    def _read_chunk(self, prepared: Prepared, gate: LineGate | None) -> _Chunk:
        """Read up to one chunk of entries and serialize them (runs in the reader thread).

        This is the hot loop. Each entry becomes its final JSON directly: everything but the
        message, level and id (program, pid, facility, hostname, source, ``extra``) is one
        serialized fragment cached per distinct tuple of those raw field values; the message
        is decoded, and all messages of the chunk are redacted at once (one scan of them all for
        the trigger words of the built-in rules) and serialized; the id is ``stable_id("jd", cursor)`` from a
        pre-seeded hash. Event dicts are only built for lines a deriver may use (``gate``).
        """
        chunk = _Chunk()
        items = chunk.items
        derive = chunk.derive
        max_bytes = self.config.max_message_bytes
        max_pri = self._max_priority
        ex_units, ex_idents = self._exclude_units, self._exclude_idents
        fmt_ts, pri_of, ms_of = _second_prefix, _PRIORITY_BY_BYTES, _MS
        frags, pids = self._frags, self._pids
        if len(frags) > _FRAG_CACHE_MAX:
            frags.clear()
        if len(pids) > _FRAG_CACHE_MAX:
            pids.clear()
        names, src = self._names, self._src_name
        pid_of = pid_json
        hexlify = binascii.b2a_hex
        #: per accepted entry: its template and the values for it; the message apart, for redaction
        rows: list[tuple[bytes, bytes, bytes, bytes, bytes, bytes, bytes]] = []
        messages: list[str] = []
        # one template per level the filter keeps (None: it drops that level)
        heads = [prepared.envelope(lvl) for lvl in LEVELS]
        templates = [
            None if head is None else
            head + b'jd-%b","ts":"%b","data":{"level":"' + lvl.encode() + b'","message":%b%b%b%b%b}}'
            for head, lvl in zip(heads, LEVELS, strict=True)
        ]
        id_seed = _ID_SEED
        ts_sec, ts_prefix = -1, b""
        fast = self._fast_frags
        spec = self._event_spec(prepared, gate, heads)
        read_events = self._events
        hits: list[tuple[int, int, int, str]] = []
        #: the chunk's event JSON in order; None where a row's waits for the Python loop below
        out: list[bytes | None]
        #: (slot in out, row, the compiled formatter's key for the row's fragment)
        slow: list[tuple[int, tuple[Any, ...], bytes | None]]
        if spec is not None and read_events is not None:  # the compiled formatter finishes common entries
            if len(fast) > _FRAG_CACHE_MAX:
                fast.clear()
            out, hits, slow, chunk.at_end, cursor, n = read_events(self._reader, FIELDS_B, spec, CHUNK_ENTRIES,
                                                                   CHUNK_BYTES, self._pending, fast)
            self.entries_formatted += len(out) - len(slow)
        else:
            got, chunk.at_end = self._rows(self._reader, CHUNK_ENTRIES, CHUNK_BYTES, max_bytes, self._pending)
            cursor, n = (got[-1][0] if got else None), len(got)
            out = [None] * len(got)
            slow = [(i, row, None) for i, row in enumerate(got)]
        self._pending = False
        slots: list[int] = []  # of the rows formatted below, once their messages are redacted
        dropped = 0
        raw_derive: list[tuple[int, bool, Event]] = []
        for slot, row, ckey in slow:
            (_, rt, pri_b, ident, comm, fac, unit, host, transport, boot, uid, pid_b, spid, raw,
             *_sender) = row
            pri = pri_of.get(pri_b, 6)
            tpl = templates[pri]
            if pri > max_pri or (ex_units and unit in ex_units) or (ex_idents and ident in ex_idents):
                dropped += 1
                continue
            raw = raw or b""
            truncated = len(raw) > max_bytes
            message = (raw[:max_bytes] if truncated else raw).decode("utf-8", "replace")
            key = (ident or comm, fac, unit, host, transport, boot, uid)
            frag = frags.get(key)
            if frag is None:
                frag = frags[key] = fragment(names, src, key)
            if ckey is not None and ckey not in fast:  # the compiled formatter's copy
                fast[ckey] = (frag[0], frag[1], gate is not None and gate(frag[2], ""))
            pid_b = pid_b or spid
            pid = pids.get(pid_b)
            if pid is None:
                pid = pids[pid_b] = pid_of(pid_b)
            if truncated:
                message += TRUNCATION_MARKER
                chunk.truncated += 1
            h = id_seed.copy()
            h.update(row[0].encode())
            eid = hexlify(h.digest())
            sec, usec = divmod(rt, 1_000_000)
            if sec != ts_sec:
                ts_sec, ts_prefix = sec, fmt_ts(sec)
            ts = ts_prefix + ms_of[usec // 1000]
            tail = frag[1]
            if gate is not None and gate(frag[2], message):  # with journald's record of its sender
                tail, fields = with_journal_sender(frag[1], frag[3],
                                                   dict(zip(FIELDS, row[2:], strict=True)), prepared.redact)
                data = dict(fields, pid=pid[1], level=LEVELS[pri], message=message,
                            **({"truncated": True} if truncated else {}))
                raw_derive.append((slot, tpl is not None, {"id": "jd-" + eid.decode(), "kind": "system_log",
                                                           "ts": ts.decode(), "data": data}))
            if tpl is None:
                dropped += 1
            else:
                slots.append(slot)
                rows.append((tpl, eid, ts, frag[0], pid[0], tail, _TRUNCATED if truncated else b""))
                messages.append(message)
        dumps = orjson.dumps
        redact_hits(prepared, out, hits)
        changed = prepared.changed_texts(messages)
        if changed:
            messages = [changed.get(i, m) for i, m in enumerate(messages)]
        for slot, (tpl, eid, ts, head_j, pid_j, tail, trunc), m in zip(slots, rows, messages, strict=True):
            out[slot] = tpl % (eid, ts, dumps(m), head_j, pid_j, tail, trunc)
        if dropped:  # the slots of rows the loop dropped go; a deriver's line counts the items before it
            before = list(accumulate((x is not None for x in out), initial=0))
            derive.extend((before[slot] + emits, ev) for slot, emits, ev in raw_derive)
            out = [x for x in out if x is not None]
        else:
            derive.extend((slot + emits, ev) for slot, emits, ev in raw_derive)
        blobs: list[bytes] = out  # type: ignore[assignment]  # every slot is filled now
        chunk.cursor = cursor
        self.entries_read += n
        if derive:
            items.extend([("system_log", j, 1) for j in blobs])
        else:  # joined here, in the reader thread, rather than on the event loop
            chunk.items = segments_of("system_log", blobs, prepared)
        return chunk

    def _event_spec(self, prepared: Prepared, gate: LineGate | None,
                    heads: list[bytes | None]) -> tuple[Any, ...] | None:
        """What the compiled formatter needs to finish entries as this chunk's Python loop would;
        None where it cannot: not built, exclusions configured, redaction that must see every
        message (custom patterns), or a deriver that reads every line."""
        triggers = prepared.triggers
        if self._events is None or triggers is None or self._exclude_units or self._exclude_idents:
            return None
        prefixes: tuple[bytes, ...] = ()
        if gate is not None:
            programs = getattr(gate, "programs", None)
            if programs is None or len(getattr(gate, "prefixes", ())) > 16:
                return None
            prefixes = tuple(p.encode() for p in gate.prefixes)  # type: ignore[attr-defined]
        return (self._max_priority, self.config.max_message_bytes,
                tuple(None if h is None else h + b"jd-" for h in heads),
                tuple(b'","data":{"level":"' + lvl.encode() + b'","message":' for lvl in LEVELS),
                *triggers, prefixes)

    def _wait(self) -> int:
        """Block (in the reader thread) until the journal changes or WAIT_USEC pass."""
        return self._reader.wait(WAIT_USEC)

    def _close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # ------------------------------------------------------------------ event loop side

    async def _open_reader(self) -> bool:
        """Open the journal, retrying while its directory is missing; False in one-shot mode."""
        delay = 1.0
        while True:
            try:
                self._reader = await self._thread.call(self._open)
                return True
            except (OSError, ValueError) as exc:
                self.log.error("journal_open_failed", directory=self.config.directory, error=str(exc))
                self.ctx.count("journal_open_failed", source=self.source)
                if self.ctx.once:
                    return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    def _report_start(self, how: str, info: dict[str, Any]) -> None:
        if how == "gap":
            self.log.warning("journal_gap", source=self.source, saved_cursor=info["cursor"],
                             resumed_at=info["resumed_at"], entries_lost=info["lost"])
            self.ctx.count("journal_gap", source=self.source)
        elif how == "bad_cursor":
            self.log.error("journal_bad_cursor", source=self.source, **info)
            self.ctx.count("journal_gap", source=self.source)
        else:
            self.log.info("journal_start", source=self.source, at=how, reader=self.row_reader, **info)
        if self._row_reader_refusal:
            self.log.warning("journal_reader_fallback", source=self.source, reason=self._row_reader_refusal)

    async def run(self) -> None:
        if not await self._open_reader():
            return
        how, info = await self._thread.call(self._position, self.ctx.checkpoint(self.source))
        self._report_start(how, info)
        if how == "tail":
            # remember where "end" was, so a restart before any new entry loses nothing
            await self.ctx.emit([], Checkpoint(self.source, info["cursor"]))
        gate = self.ctx.line_gate
        prepared = self.ctx.prepared()
        pending = asyncio.ensure_future(self._thread.call(self._read_chunk, prepared, gate))
        backlog = False  # a chunk since the last wait stopped short of the end
        try:
            while not self.ctx.stopping.is_set():
                chunk: _Chunk = await pending
                backlog = backlog or not chunk.at_end
                if chunk.cursor is not None:
                    used = prepared
                    prepared = self.ctx.prepared()  # follows reloads, one chunk later
                    if not chunk.at_end:  # read ahead while the pipeline takes this chunk
                        pending = asyncio.ensure_future(self._thread.call(self._read_chunk, prepared, gate))
                    if chunk.truncated:
                        self.ctx.count("journal_truncated", chunk.truncated, source=self.source)
                    items = self.ctx.with_derived(chunk.items, chunk.derive, used, self.source)
                    await self.ctx.emit_items(items, Checkpoint(self.source, chunk.cursor))
                    if not chunk.at_end:
                        continue
                if backlog:  # the end of a backlog: its last events need not wait for more
                    self.ctx.caught_up()
                    backlog = False
                if self.ctx.once:
                    return
                change = await self._thread.call(self._wait)
                if change == 2:  # INVALIDATE: files added or removed (rotation, vacuum, restart)
                    self.log.debug("journal_invalidate", source=self.source)
                prepared = self.ctx.prepared()
                pending = asyncio.ensure_future(self._thread.call(self._read_chunk, prepared, gate))
        finally:
            if not pending.done():
                pending.cancel()

    async def aclose(self) -> None:
        await self._thread.close(self._close)

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
from typing import Any

import orjson

from agent.collector import Collector, CollectorContext, ReaderThread
from agent.config import LEVELS, JournaldConfig
from agent.pipeline.encode import TRUNCATION_MARKER, Prepared, segmented
from agent.typing import Checkpoint, Event, Item, LineGate
from collectors.derivers.provenance import with_journal_sender
from collectors.journald.rows import FIELDS, RowReader, choose

#: syslog facility numbers (``SYSLOG_FACILITY``) to names
FACILITIES: tuple[str, ...] = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
    "authpriv", "ftp", "ntp", "security", "console", "solaris-cron",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
)
#: entries (and message bytes) read per emitted chunk
CHUNK_ENTRIES = 2000
CHUNK_BYTES = 4 * 1024 * 1024
#: how long one blocking ``wait`` in the reader thread may last (µs); bounds shutdown latency
WAIT_USEC = 500_000

_PRIORITY_BY_BYTES = {str(i).encode(): i for i in range(8)}
_FACILITY_BY_BYTES = {str(i).encode(): name for i, name in enumerate(FACILITIES)}
#: journal fields kept in ``data.extra`` (and under which name)
_EXTRA_FIELDS = (
    ("_SYSTEMD_UNIT", "unit"),
    ("_HOSTNAME", "hostname"),
    ("_TRANSPORT", "transport"),
    ("_BOOT_ID", "boot_id"),
    ("_UID", "uid"),
)
#: ``stable_id("jd", cursor)`` is blake2b over ``b"jd\x1f" + cursor``; the seed holds the prefix
_ID_SEED = hashlib.blake2b(b"jd\x1f", digest_size=16)
_NAME_CACHE_MAX = 4096
#: serialized (program, pid, facility, extra …) fragments kept before the cache starts over
_FRAG_CACHE_MAX = 8192
_TRUNCATED = b',"truncated":true'
_MS = [b".%03dZ" % i for i in range(1000)]


def _decode_name(cache: dict[bytes, str], value: bytes) -> str:
    """Decode a short, repetitive field value (unit, host, program …), cut to 256 characters."""
    text = value.decode("utf-8", "replace")[:256]
    if len(cache) >= _NAME_CACHE_MAX:
        cache.clear()
    cache[value] = text
    return text


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
        #: how entries are read (rows.py): the compiled reader where it is built, else Python's
        self._rows: RowReader
        self.row_reader = ""
        self._row_reader_refusal: str | None = None

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
        fragment, pid_of = self._fragment, self._pid
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
        entries, chunk.at_end = self._rows(self._reader, CHUNK_ENTRIES, CHUNK_BYTES, max_bytes, self._pending)
        self._pending = False
        cursor = None
        for row in entries:
            (cursor, rt, pri_b, ident, comm, fac, unit, host, transport, boot, uid, pid_b, spid, raw,
             *_sender) = row
            pri = pri_of.get(pri_b, 6)
            if pri > max_pri or (ex_units and unit in ex_units) or (ex_idents and ident in ex_idents):
                continue
            raw = raw or b""
            truncated = len(raw) > max_bytes
            message = (raw[:max_bytes] if truncated else raw).decode("utf-8", "replace")
            key = (ident or comm, fac, unit, host, transport, boot, uid)
            frag = frags.get(key)
            if frag is None:
                frag = frags[key] = fragment(key)
            pid_b = pid_b or spid
            pid = pids.get(pid_b)
            if pid is None:
                pid = pids[pid_b] = pid_of(pid_b)
            if truncated:
                message += TRUNCATION_MARKER
                chunk.truncated += 1
            h = id_seed.copy()
            h.update(cursor.encode())
            eid = hexlify(h.digest())
            sec, usec = divmod(rt, 1_000_000)
            if sec != ts_sec:
                ts_sec, ts_prefix = sec, fmt_ts(sec)
            ts = ts_prefix + ms_of[usec // 1000]
            tpl = templates[pri]
            tail = frag[1]
            if gate is not None and gate(frag[2], message):  # with journald's record of its sender
                tail, fields = with_journal_sender(frag[1], frag[3],
                                                   dict(zip(FIELDS, row[2:], strict=True)), prepared.redact)
                data = dict(fields, pid=pid[1], level=LEVELS[pri], message=message,
                            **({"truncated": True} if truncated else {}))
                derive.append((len(rows) + (tpl is not None), {"id": "jd-" + eid.decode(), "kind": "system_log",
                                                               "ts": ts.decode(), "data": data}))
            if tpl is not None:
                rows.append((tpl, eid, ts, frag[0], pid[0], tail, _TRUNCATED if truncated else b""))
                messages.append(message)
        n = len(entries)
        changed = prepared.changed_texts(messages)
        dumps = orjson.dumps
        if changed:
            messages = [changed.get(i, m) for i, m in enumerate(messages)]
        items.extend([("system_log", tpl % (eid, ts, dumps(m), head, pid, tail, trunc), 1)
                      for (tpl, eid, ts, head, pid, tail, trunc), m in zip(rows, messages, strict=True)])
        chunk.cursor = cursor
        self.entries_read += n
        if not derive:  # joined here, in the reader thread, rather than on the event loop
            chunk.items = segmented(items, prepared)
        return chunk

    @staticmethod
    def _pid(pid_b: bytes | None) -> tuple[bytes, int | None]:
        """A pid field's value as JSON and as a number (None: absent, not a number or out of range)."""
        pid: int | None = None
        if pid_b is not None:
            try:
                pid = int(pid_b)
            except ValueError:
                pid = None
            else:
                if not 0 <= pid < 1 << 31:
                    pid = None
        return (b"null" if pid is None else b"%d" % pid), pid

    def _fragment(self, key: tuple[bytes | None, ...]) -> tuple[bytes, bytes, str, dict[str, Any]]:
        """``(JSON up to the pid's value, JSON after it, program, data fields but the pid)`` for one
        tuple of raw field values: program, facility, unit, hostname, transport, boot id and uid
        (see ``_read_chunk``)."""
        program, fac, *extra_values = key
        names = self._names
        facility = _FACILITY_BY_BYTES.get(fac)  # type: ignore[arg-type]  # a field value may be None (absent); .get gives None then
        extra: dict[str, Any] = {}
        for (_, name), value in zip(_EXTRA_FIELDS, extra_values, strict=True):
            if value is not None:
                text = names.get(value)
                extra[name] = text if text is not None else _decode_name(names, value)
        if facility:
            extra["facility"] = facility
        prog = "unknown" if program is None else (names.get(program) or _decode_name(names, program))
        fields = {"program": prog, "pid": None, "facility": facility, "hostname": extra.get("hostname"),
                  "source": self._src_name, "extra": extra}
        # the program's JSON string escapes its quotes: the first "pid":null is the field's
        head, _, tail = orjson.dumps(fields)[1:-1].partition(b'"pid":null')
        del fields["pid"]
        return b"," + head + b'"pid":', tail, prog, fields

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
        try:
            while not self.ctx.stopping.is_set():
                chunk: _Chunk = await pending
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

"""The syslog-file collector: follows log files (paths and globs) into ``system_log`` events.

Which files are followed, and how rotation is told apart, is ``collectors.syslog.files``; the
checkpoint (source ``syslog``) is a JSON list of every followed file's state; ``start_at`` only
applies to files present at the very first start. A line's event id is its file's identity and
its offset (``collectors.syslog.tail.line_id``).

Reading is built for volume: a block read from a file is cut into 32 KiB pieces; a piece whose
lines are all of one common timestamped format (and valid UTF-8) is parsed with one regex call
(``_bulk``) and its events assembled by the pipeline's fast path as a block
(``agent.pipeline.encode.system_log_block``), other pieces line by line through
``collectors.syslog.parse``; both give the same events. Each file has its own parser, anchored
at the file's mtime, so that year-less timestamps are dated from that file's context
(``collectors.syslog.year``; lines ahead of a back-fill are scanned once for their New Years);
CRLF line ends are read as LF ones, the ids keeping the file's own offsets. The next chunk is read while the last
one is handed to the pipeline, as segments of many events.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import time
import weakref
from itertools import accumulate
from typing import Any

import orjson

from agent.collector import Collector, CollectorContext, ReaderThread
from agent.config import SyslogConfig
from agent.events import format_ts
from agent.pipeline.encode import TRUNCATION_MARKER, Prepared, segmented, system_log_block
from agent.typing import Checkpoint, Event, Item, LineGate
from collectors.syslog.bulk import BLOCK_ISO, BLOCK_TRAD, BULK_ISO, BULK_TRAD, StampCache, without_crs
from collectors.syslog.compiled import block_items, compiled_block_reader
from collectors.syslog.files import FollowedFiles
from collectors.syslog.parse import SyslogLineParser
from collectors.syslog.tail import Line, TailedFile, iter_blocks, split_lines
from collectors.syslog.year import first_year, stamps_in

SOURCE = "syslog"
#: lines (and bytes) per emitted chunk
CHUNK_LINES = 5000
CHUNK_BYTES = 4 * 1024 * 1024
#: bytes of lines parsed per call (see SyslogFileCollector._to_items)
_PIECE_BYTES = 32 * 1024


class SyslogFileCollector(Collector):
    """Follows the configured files and emits one ``system_log`` event per line."""

    name = "syslog"

    def __init__(self, config: SyslogConfig, ctx: CollectorContext) -> None:
        super().__init__(config, ctx)
        self.source = SOURCE
        self._thread = ReaderThread("syslog")
        #: each file's own parser: year-less dates are read in the file's context
        self._parsers: weakref.WeakKeyDictionary[TailedFile, SyslogLineParser] = weakref.WeakKeyDictionary()
        self._bad_dates = 0
        self.followed = FollowedFiles(config, self.log)
        self._truncated = 0
        self._stamps = StampCache()
        self._seconds_hour = -1
        #: the compiled block reader (None: not built, or ALPACON_SYSLOG_READER=python)
        self._lines = compiled_block_reader()
        #: lines it made (the others went through the Python block and line paths)
        self.lines_compiled = 0

    @property
    def files(self) -> dict[tuple[int, int], TailedFile]:
        """Files whose path still names them, by (dev, ino)."""
        return self.followed.files

    @property
    def rotated(self) -> dict[tuple[int, int], TailedFile]:
        """Files renamed away, deleted or copies, read to their end before closing."""
        return self.followed.rotated

    # ------------------------------------------------------------------ reader thread side

    def _parser_of(self, t: TailedFile, st: os.stat_result | None = None) -> SyslogLineParser:
        """The file's parser, anchored at its mtime (``st``); made on first use, with the year of
        the first line found by scanning the lines ahead (a back-fill: see
        :func:`collectors.syslog.year.first_year`)."""
        p = self._parsers.get(t)
        if p is None:
            p = self._parsers[t] = SyslogLineParser(ftp_times=self.config.ftp_times)
            if st is not None and st.st_size > t.state.off:
                # the lines ahead, as they are now, scanned when a year-less stamp is first dated
                # (through the file's own descriptor, while it is open: never a reused number). The
                # file is held weakly: the parser is the value of a weak-keyed dict keyed by it
                fd, off, size, mtime = t.fd, t.state.off, st.st_size, st.st_mtime
                tailed = weakref.ref(t)

                def scan() -> int | None:
                    now_t = tailed()
                    if now_t is None or now_t.fd != fd:
                        return None
                    return first_year(stamps_in(iter_blocks(fd, off, size)), mtime)

                p.set_anchor(mtime, functools.cache(scan))
                return p
        if st is not None:
            p.set_anchor(st.st_mtime)
        return p

    def _to_events(self, t: TailedFile, lines: list[Any], now_ts: str) -> list[Event]:
        parser = self._parser_of(t)
        parse = parser.parse
        before = parser.impossible_dates
        prefix = t.id_prefix()
        path = t.source_path
        events: list[Event] = []
        append = events.append
        for line in lines:
            text = line.raw.decode("utf-8", "replace")
            ts, data = parse(text)
            data["source"] = path
            if line.truncated:
                data["truncated"] = True
                data["message"] += TRUNCATION_MARKER
                self._truncated += 1
            append({"id": f"{prefix}{line.off}", "kind": "system_log", "ts": ts or now_ts, "data": data})
        self._bad_dates += parser.impossible_dates - before
        return events

    def _bulk(self, t: TailedFile, block: bytes, at: int, rx: re.Pattern[bytes], prepared: Prepared,
              gate: LineGate | None, items: list[Item]) -> bool:
        """All lines of ``block`` as segment items, built with whole-block operations, when the
        block is valid UTF-8 and every line is of the block parser's format (an ASCII header),
        within ``max_line_bytes``, with a possible date and of no interest to the derivers;
        False (nothing added) otherwise."""
        if not block.isascii():
            try:  # messages go into the JSON as they are (escaping works on their bytes)
                block.decode("utf-8")
            except UnicodeDecodeError:
                return False
        lines = block.split(b"\n")
        lines.pop()  # the block ends with a newline
        n = len(lines)
        if not n or max(map(len, lines)) > self.config.max_line_bytes:
            return False
        rows = rx.findall(without_crs(block))  # CRLF lines: the lines' offsets are those of ``lines``
        if len(rows) != n:  # a line of another format (one match per line at most)
            return False
        stamps, mss, heads, messages = zip(*rows, strict=True)
        cache = self._stamps
        frags, zones, programs = cache.headers_of(heads)
        joined = b"\n".join(messages)
        if gate is not None and gate.wants_any(programs, joined):
            return False
        secs: list[bytes] | list[bytes | None] | None
        years = self._parser_of(t).years
        trial = years.save()
        if len(zones) == 1:
            secs = cache.seconds_of(stamps, next(iter(zones)), years)
        else:
            secs = [cache.second(stamp, cache.zone_of(head), years) for stamp, head in zip(stamps, heads, strict=True)]
        if secs is None or None in secs:
            years.restore(trial)  # the lines go through the line parser, which dates them again
            return False
        lens = set(map(len, mss))
        if lens != {3}:
            mss = [b"000"] * n if lens == {0} else [m.ljust(3, b"0") for m in mss]  # type: ignore[assignment]  # a list
        if zones != {b""}:  # the context of a later line without a usable date (as the line parser keeps it)
            last = n - 1 if cache.zone_of(heads[-1]) else max(i for i, h in enumerate(heads) if cache.zone_of(h))
            years.note(f"{secs[last].decode()}{mss[last].decode()}Z")  # type: ignore[union-attr]  # no None
        system_log_block(
            prepared, items, level="info", id_prefix=t.id_prefix().encode(),
            offsets=map(b"%d".__mod__, accumulate(map((1).__add__, map(len, lines)), initial=at)),
            seconds=secs,  # type: ignore[arg-type]  # no None left in secs
            millis=mss, data_head=b'"facility":null,"source":' + orjson.dumps(t.source_path) + b",",
            fragments=frags, messages=joined)
        return True

    def _compiled(self, t: TailedFile, block: bytes, at: int, prepared: Prepared, gate: LineGate | None,
                  items: list[Item]) -> bool:
        """A block of RFC 3339 lines by the compiled reader (see :func:`compiled.block_items`)."""
        if self._lines is None:
            return False
        n = block_items(self._lines, self._stamps, self._parser_of(t).years, t, block, at, prepared, gate,
                        self.config.max_line_bytes, items)
        if n is None:
            return False
        self.lines_compiled += n
        return True

    def _to_items(self, t: TailedFile, block: bytes, at: int, tail: list[Line], now_ts: str,
                  prepared: Prepared, gate: LineGate | None, items: list[Item],
                  derive: list[tuple[int, Event]]) -> None:
        """Serialize a block of whole lines (at file offset ``at``) and the ``tail`` line(s), in
        pieces of about _PIECE_BYTES: the regex engine holds the GIL for as long as one call
        takes, and the event loop (answers from the backend, hook clients) must not wait long."""
        start = 0
        while len(block) - start > _PIECE_BYTES:
            cut = block.rfind(b"\n", start, start + _PIECE_BYTES) + 1
            if cut <= start:  # a line longer than a piece: the piece ends with it
                cut = block.find(b"\n", start + _PIECE_BYTES) + 1
            self._piece_items(t, block[start:cut], at + start, [], now_ts, prepared, gate, items, derive)
            start = cut
        self._piece_items(t, block[start:] if start else block, at + start, tail, now_ts, prepared, gate,
                          items, derive)

    def _piece_items(self, t: TailedFile, block: bytes, at: int, tail: list[Line], now_ts: str,
                     prepared: Prepared, gate: LineGate | None, items: list[Item],
                     derive: list[tuple[int, Event]]) -> None:
        """Serialize whole lines and the tail: lines of the common formats in bulk, the others
        through the line parser."""
        prefix = t.id_prefix().encode()
        path = t.source_path
        max_line = self.config.max_line_bytes
        rx = BULK_ISO if block[:1].isdigit() else BULK_TRAD if block[:1].isupper() else None
        pos = 0
        if rx is BULK_ISO and self._compiled(t, block, at, prepared, gate, items):
            pos = len(block)
        elif rx is not None and self._bulk(t, block, at, BLOCK_ISO if rx is BULK_ISO else BLOCK_TRAD,
                                         prepared, gate, items):
            pos = len(block)
        elif rx is not None and b"\r" not in block:  # CRLF lines (not in bulk): the line parser
            years = self._parser_of(t).years
            text = prepared.text
            second, header = self._stamps.second, self._stamps.header
            head = prepared.envelope("info")
            tpl = None
            if head is not None:
                tpl = (head + prefix + b'%d","ts":"%b%bZ","data":{"level":"info","facility":null,"source":'
                       + orjson.dumps(path) + b',%b,"message":%b}}')
            for m in rx.finditer(block):
                start = m.start()
                if start != pos:
                    self._slow(t, split_lines(block[pos:start], at + pos, max_line), now_ts, prepared,
                               gate, items, derive)
                pos = m.end()
                stamp, ms, zone, host, program, version, pid, sub, raw = m.groups()
                trial = years.save()
                sec = second(stamp, zone, years)
                if sec is None or pos - start > max_line + 1:  # a bad date, an over-long line
                    years.restore(trial)
                    self._slow(t, split_lines(block[start:pos], at + start, max_line), now_ts, prepared,
                               gate, items, derive)
                    continue
                frag, prog, extra = header(host, program, version, pid, sub)
                ms = b"000" if ms is None else ms if len(ms) == 3 else ms.ljust(3, b"0")
                if zone:
                    years.note(f"{sec.decode()}{ms.decode()}Z")
                message = raw.decode()
                if tpl is not None:
                    items.append(("system_log", tpl % (at + start, sec, ms, frag, text(message)), 1))
                if gate is not None and gate(prog, message):
                    p = pid.decode() if pid else None
                    data: dict[str, Any] = {"program": prog, "level": "info",
                                            "pid": int(p) if p and p.isdigit() and len(p) <= 9 else None,
                                            "message": message, "facility": None, "hostname": host.decode(),
                                            "source": path}
                    if extra:
                        data["extra"] = dict(extra)
                    derive.append((len(items), {"id": f"{prefix.decode()}{at + start}", "kind": "system_log",
                                                "ts": f"{sec.decode()}{ms.decode()}Z", "data": data}))
        if pos != len(block):
            self._slow(t, split_lines(block[pos:], at + pos, max_line), now_ts, prepared, gate, items, derive)
        if tail:
            self._slow(t, tail, now_ts, prepared, gate, items, derive)

    def _slow(self, t: TailedFile, lines: list[Line], now_ts: str, prepared: Prepared, gate: LineGate | None,
              items: list[Item], derive: list[tuple[int, Event]]) -> None:
        """Lines the bulk parsers leave aside: the line parser, then the chain (``Prepared.finish``)."""
        for ev in self._to_events(t, lines, now_ts):
            data = ev["data"]
            line = None
            if gate is not None and gate(data["program"], data["message"]):
                line = {**ev, "data": dict(data)}  # before redaction, as the derivers saw it
            fin = prepared.finish(ev)
            if fin is not None:
                items.append(("system_log", fin[0], 1))
            if line is not None:
                derive.append((len(items), line))  # type: ignore[arg-type]  # line is a Line here, the tuple type is the wider Event pair

    def _read_chunk(self, flush_all: bool, prepared: Prepared, gate: LineGate | None
                    ) -> tuple[list[Item], list[tuple[int, Event]], bool]:
        """Read from rotated files first (to their end), then current ones:
        ``(items, lines for the derivers, more)``."""
        items: list[Item] = []
        derive: list[tuple[int, Event]] = []
        nbytes = 0
        nlines = 0
        more = False
        now = time.time()
        now_ts = format_ts(now)
        if int(now // 3600) != self._seconds_hour:  # the year of "Dec 31 …" lines depends on now
            self._seconds_hour = int(now // 3600)
            self._stamps.clear_seconds()
        max_line = self.config.max_line_bytes
        quiet = self.config.partial_line_timeout_s
        for group in (self.rotated, self.files):
            for key, t in list(group.items()):
                while nlines < CHUNK_LINES and nbytes < CHUNK_BYTES:
                    try:
                        st = t.fstat()
                        t.ensure_fingerprint()
                        self._parser_of(t, st)  # anchored at the file's mtime
                        flush = flush_all or t.drain_only or now - st.st_mtime >= quiet
                        block, at, tail, file_more = t.read_block(max_line, flush)
                    except OSError as exc:
                        self.log.error("syslog_read_failed", path=t.state.path, error=str(exc))
                        file_more = False
                        block, at, tail = b"", 0, []
                    self._to_items(t, block, at, tail, now_ts, prepared, gate, items, derive)
                    nbytes += len(block) + sum(len(ln.raw) for ln in tail)
                    nlines += block.count(b"\n") + len(tail)
                    if not file_more:
                        break
                else:
                    more = True
                    return items, derive, more
                if group is self.rotated and self.followed.drained(t, now, flush_all):
                    self.log.info("syslog_rotated_done", path=t.state.path)
                    t.close()
                    del group[key]
        return items, derive, more

    def _step(self, prepared: Prepared, gate: LineGate | None) -> tuple[Any, bool, str, int, int]:
        items, derive, more = self._read_chunk(self.ctx.once, prepared, gate)
        if not derive:  # joined here, in the reader thread (merge_derived does it otherwise)
            items = segmented(items, prepared)
        gaps, trunc = self.followed.gaps, self._truncated
        self.followed.gaps = self._truncated = 0
        if self._bad_dates:  # lines dated from their context: the date they give does not exist
            self.ctx.count("syslog_bad_timestamp", self._bad_dates, source=self.source)
            self._bad_dates = 0
        return (items, derive), more, self.followed.state_json(), gaps, trunc

    # ------------------------------------------------------------------ event loop side

    async def run(self) -> None:
        followed = self.followed
        had_state = await self._thread.call(followed.restore, self.ctx.checkpoint(self.source))
        first_start = not had_state
        await self._thread.call(followed.discover, first_start)
        last_state = None
        if first_start:  # remember where "end" was, so a restart before new lines loses nothing
            last_state = await self._thread.call(followed.state_json)
            await self.ctx.emit([], Checkpoint(self.source, last_state))
        gate = self.ctx.line_gate
        last_glob = time.monotonic()
        #: the next chunk, read while the last one is handed over: (its step, its settings)
        ahead: tuple[asyncio.Future[Any], Prepared] | None = None
        backlog = False  # a chunk since the last poll stopped at the chunk's limit
        try:
            while not self.ctx.stopping.is_set():
                if ahead is None:
                    prepared = self.ctx.prepared()
                    step: asyncio.Future[Any] = asyncio.ensure_future(self._thread.call(self._step, prepared, gate))
                else:
                    step, prepared = ahead
                    ahead = None
                (items, derive), more, state, gaps, trunc = await step
                if more:
                    nxt = self.ctx.prepared()
                    ahead = (asyncio.ensure_future(self._thread.call(self._step, nxt, gate)), nxt)
                if gaps:
                    self.ctx.count("syslog_gap", gaps, source=self.source)
                if trunc:
                    self.ctx.count("syslog_truncated", trunc, source=self.source)
                if items or derive or state != last_state:
                    items = self.ctx.with_derived(items, derive, prepared, self.source)
                    await self.ctx.emit_items(items, Checkpoint(self.source, state))
                    last_state = state
                if more:
                    backlog = True
                    continue
                if backlog:  # the end of a backlog: its last lines need not wait for more
                    self.ctx.caught_up()
                    backlog = False
                if self.ctx.once:
                    return
                await asyncio.sleep(self.config.poll_interval_s)
                await self._thread.call(followed.check_rotations)
                if time.monotonic() - last_glob >= self.config.glob_interval_s:
                    last_glob = time.monotonic()
                    await self._thread.call(followed.discover, False)
        finally:
            if ahead is not None:  # read but never handed over: read again after a restart
                ahead[0].cancel()

    async def aclose(self) -> None:
        await self._thread.close(self.followed.close_all)


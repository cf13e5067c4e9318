"""The syslog-file collector: follows log files (paths and globs) into ``system_log`` events.

Files are tracked by identity (device + inode + fingerprint of their first bytes), so rotation by
rename (the old file is read to its end first), copytruncate (the copy is searched for lines not
yet read, then the file is read again from 0), deletion and re-creation, and inode reuse are all
told apart. The checkpoint (source ``syslog``) is a JSON list of every followed file's state;
``start_at`` only applies to files present at the very first start. A line's event id is its
file's identity and its offset (``collectors.tail.line_id``).

Reading is built for volume: a block read from a file is cut into 32 KiB pieces; a piece whose
lines are all of one common timestamped format (and valid UTF-8) is parsed with one regex call
and its events assembled with C-level operations (``_bulk``), other pieces line by line
through ``syslog_parse``; both give the same events. The next chunk is read while the last
one is handed to the pipeline, as segments of many events.
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
import time
from itertools import accumulate, chain, repeat
from typing import Any

import orjson

from agent.collector import Collector, CollectorContext, ReaderThread
from agent.config import SyslogConfig
from agent.events import format_ts
from agent.pipeline import Prepared
from agent.typing import Checkpoint, Event, Item
from collectors.derive import LineGate, line_gate
from collectors.journald import (
    TRUNCATION_MARKER,
    Deriver,
    emit_items,
    finish_event,
    merge_derived,
    prepared_for,
    segmented,
)
from collectors.syslog_parse import UNKNOWN_PROGRAM, SyslogLineParser
from collectors.tail import FileState, Line, TailedFile, split_lines

SOURCE = "syslog"
#: lines (and bytes) per emitted chunk
CHUNK_LINES = 5000
CHUNK_BYTES = 4 * 1024 * 1024
IGNORED_SUFFIXES = (".gz", ".xz", ".bz2", ".zst", ".lz4", ".zip")

# The bulk parsers: the two common timestamped formats of ``syslog_parse`` (no ``<PRI>``), as
# bytes regexes over a whole block of lines. They only match all-ASCII lines, on which these
# classes are exactly those of the str regexes there (``\S`` there is "not whitespace" in the
# Unicode sense, which for ASCII is not [\t\n\v\f\r\x1c-\x1f ]); any other line is left
# for the line parser, so both ways give the same events.
_WS = rb"\t\n\x0b\x0c\r\x1c-\x1f \x80-\xff"
_HOST = rb"([^" + _WS + rb"]{1,256}) "
_TAG = (rb"(?:([^" + _WS + rb"\[\]:]{1,256})(?:\[([^" + _WS + rb"\]]{0,32})\])?: ?)?"
        rb"([\x00-\x09\x0b-\x7f]*)\n")
#: rsyslog's RFC 3339 form: (second, ms digits, zone, host, program, pid, message)
_BULK_ISO = re.compile(rb"^([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,3})[0-9]{0,6})?"
                       rb"(Z|[+-][0-9]{2}:[0-9]{2}) " + _HOST + _TAG, re.M)
#: the traditional form: (stamp, -, -, host, program, pid, message)
_BULK_TRAD = re.compile(rb"^([A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2})()() " + _HOST + _TAG, re.M)
# The block parsers: the same formats for a block known to be UTF-8, with four groups —
# (second, ms digits, header, message) — the header being zone, host and tag (parsed once per
# distinct header by _HEADER), and ``.*`` for the message, which the regex engine scans several
# times faster than a class.
_HEADER_NC = (rb"[^" + _WS + rb"]{1,256} (?:[^" + _WS + rb"\[\]:]{1,256}(?:\[[^" + _WS + rb"\]]{0,32}\])?: ?)?")
_BLOCK_ISO = re.compile(rb"^([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,3})[0-9]{0,6})?"
                        rb"((?:Z|[+-][0-9]{2}:[0-9]{2}) " + _HEADER_NC + rb")(.*)\n", re.M)
_BLOCK_TRAD = re.compile(rb"^([A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2})()( " + _HEADER_NC + rb")(.*)\n",
                         re.M)
#: a block parser's header: (zone, host, program, pid)
_HEADER = re.compile(rb"(Z|[+-][0-9]{2}:[0-9]{2})? " + _HOST
                     + rb"(?:([^" + _WS + rb"\[\]:]{1,256})(?:\[([^" + _WS + rb"\]]{0,32})\])?: ?)?")
_CACHE_MAX = 4096
#: bytes of lines parsed per call (see SyslogFileCollector._to_items)
_PIECE_BYTES = 32 * 1024
#: parts per line in a :meth:`SyslogFileCollector._bulk` parts list
_PARTS = 10
_UNKNOWN_B = UNKNOWN_PROGRAM.encode()
#: control characters a JSON string must escape (the newline separates lines there)
_CTRL = bytes(range(0x0A)) + bytes(range(0x0B, 0x20))
_CTRL_RX = re.compile(b"[" + re.escape(_CTRL) + b"]")


def _escape_ctrl(m: re.Match[bytes]) -> bytes:
    return orjson.dumps(m.group().decode())[1:-1]


class SyslogFileCollector(Collector):
    """Follows the configured files and emits one ``system_log`` event per line."""

    name = "syslog"

    def __init__(self, config: SyslogConfig, ctx: CollectorContext) -> None:
        super().__init__(config, ctx)
        self.source = SOURCE
        self._thread = ReaderThread("syslog")
        self._parser = SyslogLineParser()
        #: files whose path still names them, by (dev, ino)
        self.files: dict[tuple[int, int], TailedFile] = {}
        #: files renamed away, deleted or copies, read to their end before closing
        self.rotated: dict[tuple[int, int], TailedFile] = {}
        self._gaps = 0
        self._truncated = 0
        #: ``YYYY-MM-DDTHH:MM:SS.`` of timestamps, by zone and stamp (None: impossible date)
        self._seconds: dict[bytes, dict[bytes, bytes | None]] = {}
        self._seconds_hour = -1
        self._headers: dict[tuple[bytes, bytes, bytes], tuple[bytes, str]] = {}
        #: by block-parser header: its JSON fragment, and its (zone, program)
        self._frags: dict[bytes, bytes] = {}
        self._head_info: dict[bytes, tuple[bytes, bytes]] = {}

    # ------------------------------------------------------------------ reader thread side

    def _patterns(self) -> list[str]:
        return list(self.config.paths)

    def _matching_paths(self) -> list[str]:
        out: set[str] = set()
        for pattern in self._patterns():
            matches = glob.glob(pattern) if glob.has_magic(pattern) else [pattern]
            for p in matches:
                if not p.endswith(IGNORED_SUFFIXES) and os.path.isfile(p):
                    out.add(os.path.abspath(p))
        return sorted(out)

    def _restore(self, saved: str | None) -> bool:
        """Reopen the files of a saved checkpoint; returns whether there was one."""
        if not saved:
            return False
        try:
            entries = [FileState.from_json(d) for d in orjson.loads(saved)["files"]]
        except (ValueError, KeyError, TypeError) as exc:
            self.log.error("syslog_bad_checkpoint", error=str(exc))
            self._gap("bad checkpoint", None)
            return False
        for st in entries:
            t = TailedFile.open(st.path, st.off)
            if t is not None and t.key == (st.dev, st.ino):
                # the same inode: unchanged, or cut/rewritten while we were stopped
                changed = not t.same_content(st.fp, st.fpl) or t.fstat().st_size < st.off
                t.state = FileState(**st.to_json())
                if changed:
                    self._copytruncated(t)
            else:
                if t is not None:
                    t.close()
                t = self._find_moved(st)
            if t is None:
                self._gap("file gone while stopped", st.path)
                continue
            if t.state.path == st.path and st.path in self._matching_paths():
                self.files[t.key] = t
            else:
                t.rotated = True
                self.rotated[t.key] = t
        return True

    def _find_moved(self, st: FileState) -> TailedFile | None:
        """A saved file renamed while we were stopped: same device and inode in the same directory."""
        d = os.path.dirname(st.path) or "."
        try:
            names = os.listdir(d)
        except OSError:
            return None
        for name in names:
            p = os.path.join(d, name)
            try:
                s = os.stat(p)
            except OSError:
                continue
            if (s.st_dev, s.st_ino) == (st.dev, st.ino):
                t = TailedFile.resume(FileState(**{**st.to_json(), "path": p}))
                if t is not None:
                    return t
        return None

    def _find_copy(self, t: TailedFile) -> TailedFile | None:
        """The copy a copytruncate made: a sibling starting with the same bytes, at least as long."""
        s = t.state
        d, base = os.path.split(s.path)
        try:
            names = sorted(os.listdir(d or "."))
        except OSError:
            return None
        for name in names:
            if not name.startswith(base) or name == base or name.endswith(IGNORED_SUFFIXES):
                continue
            c = TailedFile.open(os.path.join(d, name), s.off)
            if c is None:
                continue
            if c.key != t.key and c.fstat().st_size >= s.off and c.same_content(s.fp, s.fpl):
                # lines of the copy keep the identity (and ids) of the file they were read from
                c.state = FileState(c.state.path, s.dev, s.ino, s.fp, s.fpl, s.off, s.skip)
                c.drain_only = True
                c.rotated = True
                return c
            c.close()
        return None

    def _copytruncated(self, t: TailedFile) -> None:
        copy = self._find_copy(t)
        if copy is not None:
            self.rotated[(-copy.fd - 1, 0)] = copy
        elif t.state.off > 0:
            self._gap("truncated or replaced, no copy found", t.state.path)
        self.log.info("syslog_copytruncate", path=t.state.path, copy=copy.state.path if copy else None)
        t.restart_after_truncate()

    def _gap(self, why: str, path: str | None) -> None:
        self.log.warning("syslog_gap", reason=why, path=path)
        self._gaps += 1

    def _check_rotations(self) -> None:
        """Notice renamed, deleted and truncated files; a new file at a rotated path is read from 0."""
        for key, t in list(self.files.items()):
            s = t.state
            try:
                ps = os.stat(s.path)
                moved = (ps.st_dev, ps.st_ino) != key
            except OSError:
                moved = True
            if moved:
                path = s.path
                t.rotated = True
                s.path = t.current_path()
                self.rotated[key] = self.files.pop(key)
                self.log.info("syslog_rotated", path=path, now=s.path)
                self._follow(path, 0)
                continue
            try:
                size = t.fstat().st_size
            except OSError:
                continue
            if size < s.off or not t.same_content(s.fp, s.fpl):
                self._copytruncated(t)

    def _follow(self, path: str, off: int | None) -> None:
        """Start following ``path`` (at ``off``; None: its end) unless it is already followed."""
        t = TailedFile.open(path, off)
        if t is None:
            return
        if t.key in self.files or t.key in self.rotated:
            t.close()
            return
        self.files[t.key] = t
        self.log.info("syslog_follow", path=path, offset=t.state.off)

    def _discover(self, first_start: bool) -> None:
        """Follow files newly matching the paths and globs."""
        self._check_rotations()
        known = set(self.files) | set(self.rotated)
        for path in self._matching_paths():
            try:
                ps = os.stat(path)
            except OSError:
                continue
            if (ps.st_dev, ps.st_ino) not in known:
                self._follow(path, None if first_start and self.config.start_at == "end" else 0)

    def _state_json(self) -> str:
        files = [t.state.to_json() for t in self.rotated.values() if not t.drain_only]
        files += [t.state.to_json() for t in self.files.values()]
        return orjson.dumps({"files": files}).decode()

    def _to_events(self, t: TailedFile, lines: list[Any], now_ts: str) -> list[Event]:
        parse = self._parser.parse
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
        return events

    def _second(self, stamp: bytes, zone: bytes) -> bytes | None:
        """``YYYY-MM-DDTHH:MM:SS.`` (UTC) of a line's timestamp as the line parser sees it; None
        for an impossible date."""
        cache = self._seconds.get(zone)
        if cache is None:
            cache = self._seconds[zone] = {}
        out = cache.get(stamp, False)
        if out is False:
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            out = cache[stamp] = self._convert(stamp, zone)
        return out  # type: ignore[return-value]

    def _convert(self, stamp: bytes, zone: bytes) -> bytes | None:
        clock = self._parser._clock
        if zone:
            ts = clock.iso(stamp.decode(), None, zone.decode())
        else:
            text = stamp.decode()
            ts = clock.traditional(text[:3], text[4:6], text[7:9], text[10:12], text[13:15])
        return ts[:-4].encode() if ts else None

    def _seconds_of(self, stamps: tuple[bytes, ...], zone: bytes) -> list[bytes] | None:
        """:meth:`_second` of each line, all in one zone (one dict lookup per line, in C); None
        if any date is impossible."""
        cache = self._seconds.get(zone)
        if cache is None:
            cache = self._seconds[zone] = {}
        out = list(map(cache.get, stamps))
        if None in out:
            missing = set(stamps).difference(cache)
            if len(cache) + len(missing) > _CACHE_MAX:
                cache.clear()
                missing = set(stamps)
            for stamp in missing:
                cache[stamp] = self._convert(stamp, zone)
            out = list(map(cache.get, stamps))
            if None in out:
                return None
        return out

    def _header(self, host: bytes, program: bytes | None, pid: bytes | None) -> tuple[bytes, str]:
        """The JSON fragment of program, pid and hostname, and the program name."""
        key = (host, program or b"", pid or b"")
        out = self._headers.get(key)
        if out is None:
            prog = program.decode() if program else UNKNOWN_PROGRAM
            p = pid.decode() if pid else None
            fields = {"program": prog, "pid": int(p) if p and p.isdigit() and len(p) <= 9 else None,
                      "hostname": host.decode()}
            out = (orjson.dumps(fields)[1:-1], prog)
            if len(self._headers) >= _CACHE_MAX:
                self._headers.clear()
            self._headers[key] = out
        return out

    def _headers_of(self, heads: tuple[bytes, ...]) -> tuple[list[bytes], set[bytes], set[bytes]]:
        """For a block parser's headers: each line's JSON fragment of program, pid and hostname
        (one dict lookup per line, in C), and the zones and programs among them."""
        frags, info = self._frags, self._head_info
        distinct = set(heads)
        missing = distinct.difference(frags)
        if missing:
            if len(frags) + len(missing) > _CACHE_MAX:
                frags.clear()
                info.clear()
                missing = distinct
            for head in missing:
                m = _HEADER.fullmatch(head)
                assert m is not None  # the block parser matched the same pattern
                zone, host, program, pid = m.groups()
                frags[head] = self._header(host, program, pid)[0]
                info[head] = (zone or b"", program or _UNKNOWN_B)
        zones = {info[h][0] for h in distinct}
        programs = {info[h][1] for h in distinct}
        return list(map(frags.__getitem__, heads)), zones, programs

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
        rows = rx.findall(block)
        if len(rows) != n:  # a line of another format (one match per line at most)
            return False
        stamps, mss, heads, messages = zip(*rows, strict=True)
        frags, zones, programs = self._headers_of(heads)
        joined = b"\n".join(messages)
        if gate is not None and gate.wants_any(programs, joined):
            return False
        if len(zones) == 1:
            secs = self._seconds_of(stamps, next(iter(zones)))
        else:
            info = self._head_info
            secs = list(map(self._second, stamps, (info[h][0] for h in heads)))
        if secs is None or None in secs:
            return False
        if not prepared.accepts("system_log", "info"):
            return True  # every line filtered out, none for the derivers
        lens = set(map(len, mss))
        if lens != {3}:
            mss = [b"000"] * n if lens == {0} else [m.ljust(3, b"0") for m in mss]  # type: ignore[assignment]
        changed = prepared.changed_lines(joined.decode("utf-8"))
        escaped = joined.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        if len(escaped.translate(None, _CTRL)) != len(escaped):
            escaped = _CTRL_RX.sub(_escape_ctrl, escaped)
        texts = escaped.split(b"\n")
        for i, text in changed.items():
            texts[i] = orjson.dumps(text)[1:-1]
        offsets = map(b"%d".__mod__, accumulate(map((1).__add__, map(len, lines)), initial=at))
        dumps = orjson.dumps
        path = t.source_path
        parts = list(chain.from_iterable(zip(
            repeat(b'{"kind":"system_log","server":' + dumps(prepared.server) + b',"id":"'
                   + t.id_prefix().encode()),
            offsets,
            repeat(b'","ts":"'), secs, mss,
            repeat(b'Z","data":{"level":"info","facility":null,"source":' + dumps(path) + b","),
            frags,
            repeat(b',"message":"'), texts,
            repeat(b'"}},'))))
        step = max(1, prepared.segment_events)
        for s in range(0, n, step):
            self._segment(parts, s, min(n, s + step), prepared.segment_bytes, items)
        return True

    @staticmethod
    def _segment(parts: list[bytes], start: int, end: int, cap: int, items: list[Item]) -> None:
        """Lines ``start:end`` of a :meth:`_bulk` parts list as one item, halved while over ``cap`` bytes."""
        blob = b"".join(parts[start * _PARTS:end * _PARTS])
        if len(blob) > cap + 1 and end - start > 1:
            mid = (start + end) // 2
            SyslogFileCollector._segment(parts, start, mid, cap, items)
            SyslogFileCollector._segment(parts, mid, end, cap, items)
            return
        items.append(("system_log", blob[:-1], end - start))

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
        rx = _BULK_ISO if block[:1].isdigit() else _BULK_TRAD if block[:1].isupper() else None
        pos = 0
        if rx is not None and self._bulk(t, block, at, _BLOCK_ISO if rx is _BULK_ISO else _BLOCK_TRAD,
                                         prepared, gate, items):
            pos = len(block)
        elif rx is not None:
            redact, dumps = prepared.redact, orjson.dumps
            second, header = self._second, self._header
            tpl = None
            if prepared.accepts("system_log", "info"):
                tpl = (b'{"kind":"system_log","server":' + dumps(prepared.server) + b',"id":"' + prefix + b'%d",'
                       b'"ts":"%b%bZ","data":{"level":"info","facility":null,"source":' + dumps(path)
                       + b',%b,"message":%b}}')
            for m in rx.finditer(block):
                start = m.start()
                if start != pos:
                    self._slow(t, split_lines(block[pos:start], at + pos, max_line), now_ts, prepared,
                               gate, items, derive)
                pos = m.end()
                stamp, ms, zone, host, program, pid, raw = m.groups()
                sec = second(stamp, zone)
                if sec is None or pos - start > max_line + 1:  # a bad date, an over-long line
                    self._slow(t, split_lines(block[start:pos], at + start, max_line), now_ts, prepared,
                               gate, items, derive)
                    continue
                frag, prog = header(host, program, pid)
                ms = b"000" if ms is None else ms if len(ms) == 3 else ms.ljust(3, b"0")
                message = raw.decode()
                if tpl is not None:
                    items.append(("system_log", tpl % (at + start, sec, ms, frag, dumps(redact(message))), 1))
                if gate is not None and gate(prog, message):
                    p = pid.decode() if pid else None
                    derive.append((len(items), {
                        "id": f"{prefix.decode()}{at + start}", "kind": "system_log",
                        "ts": f"{sec.decode()}{ms.decode()}Z",
                        "data": {"program": prog, "level": "info",
                                 "pid": int(p) if p and p.isdigit() and len(p) <= 9 else None,
                                 "message": message, "facility": None, "hostname": host.decode(),
                                 "source": path}}))
        if pos != len(block):
            self._slow(t, split_lines(block[pos:], at + pos, max_line), now_ts, prepared, gate, items, derive)
        if tail:
            self._slow(t, tail, now_ts, prepared, gate, items, derive)

    def _slow(self, t: TailedFile, lines: list[Line], now_ts: str, prepared: Prepared, gate: LineGate | None,
              items: list[Item], derive: list[tuple[int, Event]]) -> None:
        """Lines the bulk parsers leave aside: the line parser, then the chain by hand."""
        for ev in self._to_events(t, lines, now_ts):
            data = ev["data"]
            line = None
            if gate is not None and gate(data["program"], data["message"]):
                line = {**ev, "data": dict(data)}  # before redaction, as the derivers saw it
            fin = finish_event(ev, prepared)
            if fin is not None:
                items.append(("system_log", fin[0], 1))
            if line is not None:
                derive.append((len(items), line))  # type: ignore[arg-type]

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
            self._seconds.clear()
        max_line = self.config.max_line_bytes
        quiet = self.config.partial_line_timeout_s
        for group in (self.rotated, self.files):
            for key, t in list(group.items()):
                while nlines < CHUNK_LINES and nbytes < CHUNK_BYTES:
                    try:
                        st = t.fstat()
                        t.ensure_fingerprint()
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
                if group is self.rotated and self._drained(t, now, flush_all):
                    self.log.info("syslog_rotated_done", path=t.state.path)
                    t.close()
                    del group[key]
        return items, derive, more

    def _drained(self, t: TailedFile, now: float, flush_all: bool) -> bool:
        """A rotated file is done once read to its end and quiet (its writer moved on)."""
        try:
            st = t.fstat()
        except OSError:
            return True
        if st.st_size > t.state.off:
            return False
        return t.drain_only or flush_all or now - st.st_mtime >= self.config.partial_line_timeout_s

    def _step(self, prepared: Prepared, gate: LineGate | None) -> tuple[Any, bool, str, int, int]:
        items, derive, more = self._read_chunk(self.ctx.once, prepared, gate)
        if not derive:  # joined here, in the reader thread (merge_derived does it otherwise)
            items = segmented(items, prepared)
        gaps, trunc = self._gaps, self._truncated
        self._gaps = self._truncated = 0
        return (items, derive), more, self._state_json(), gaps, trunc

    def _close_all(self) -> None:
        for t in [*self.files.values(), *self.rotated.values()]:
            t.close()
        self.files.clear()
        self.rotated.clear()

    # ------------------------------------------------------------------ event loop side

    async def run(self) -> None:
        had_state = await self._thread.call(self._restore, self.ctx.checkpoint(self.source))
        first_start = not had_state
        await self._thread.call(self._discover, first_start)
        last_state = None
        if first_start:  # remember where "end" was, so a restart before new lines loses nothing
            last_state = await self._thread.call(self._state_json)
            await self.ctx.emit([], Checkpoint(self.source, last_state))
        derivers: list[Deriver] = self.ctx.services.get("derivers", [])
        gate = line_gate(derivers)
        last_glob = time.monotonic()
        #: the next chunk, read while the last one is handed over: (its step, its settings)
        ahead: tuple[asyncio.Future[Any], Prepared] | None = None
        try:
            while not self.ctx.stopping.is_set():
                if ahead is None:
                    prepared = prepared_for(self.ctx)
                    step: asyncio.Future[Any] = asyncio.ensure_future(self._thread.call(self._step, prepared, gate))
                else:
                    step, prepared = ahead
                    ahead = None
                (items, derive), more, state, gaps, trunc = await step
                if more:
                    nxt = prepared_for(self.ctx)
                    ahead = (asyncio.ensure_future(self._thread.call(self._step, nxt, gate)), nxt)
                if gaps:
                    self.ctx.count("syslog_gap", gaps, source=self.source)
                if trunc:
                    self.ctx.count("syslog_truncated", trunc, source=self.source)
                if items or derive or state != last_state:
                    items = merge_derived(items, derive, derivers, prepared, self.log, self.ctx, self.source)
                    await emit_items(self.ctx, items, Checkpoint(self.source, state))
                    last_state = state
                if more:
                    continue
                if self.ctx.once:
                    return
                await asyncio.sleep(self.config.poll_interval_s)
                await self._thread.call(self._check_rotations)
                if time.monotonic() - last_glob >= self.config.glob_interval_s:
                    last_glob = time.monotonic()
                    await self._thread.call(self._discover, False)
        finally:
            if ahead is not None:  # read but never handed over: read again after a restart
                ahead[0].cancel()

    async def aclose(self) -> None:
        await self._thread.close(self._close_all)


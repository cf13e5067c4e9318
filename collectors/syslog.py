"""The syslog-file collector: follows log files (paths and globs) into ``system_log`` events.

Files are tracked by identity (device + inode + fingerprint of their first bytes), so rotation by
rename (the old file is read to its end first), copytruncate (the copy is searched for lines not
yet read, then the file is read again from 0), deletion and re-creation, and inode reuse are all
told apart. The checkpoint (source ``syslog``) is a JSON list of every followed file's state;
``start_at`` only applies to files present at the very first start.
"""

from __future__ import annotations

import asyncio
import binascii
import glob
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from agent.collector import Collector, CollectorContext
from agent.config import SyslogConfig
from agent.events import format_ts
from agent.pipeline import Prepared
from agent.typing import Checkpoint, Event, Item
from collectors.derive import line_gate
from collectors.journald import (
    TRUNCATION_MARKER,
    Deriver,
    Gate,
    emit_items,
    finish_event,
    merge_derived,
    prepared_for,
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
_CACHE_MAX = 4096


class SyslogFileCollector(Collector):
    """Follows the configured files and emits one ``system_log`` event per line."""

    name = "syslog"

    def __init__(self, config: SyslogConfig, ctx: CollectorContext) -> None:
        super().__init__(config, ctx)
        self.source = SOURCE
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syslog")
        self._parser = SyslogLineParser()
        #: files whose path still names them, by (dev, ino)
        self.files: dict[tuple[int, int], TailedFile] = {}
        #: files renamed away, deleted or copies, read to their end before closing
        self.rotated: dict[tuple[int, int], TailedFile] = {}
        self._gaps = 0
        self._truncated = 0
        self._seconds: dict[bytes, bytes | None] = {}
        self._seconds_hour = -1
        self._headers: dict[tuple[bytes | None, ...], tuple[bytes, str]] = {}

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
        seed = t.id_seed()
        path = t.state.path if not t.rotated else t.state.path.removesuffix(" (deleted)")
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
            h = seed.copy()
            h.update(str(line.off).encode())
            append({"id": "f-" + h.hexdigest(), "kind": "system_log", "ts": ts or now_ts, "data": data})
        return events

    def _second(self, stamp: bytes, zone: bytes) -> bytes | None:
        """The ``YYYY-MM-DDTHH:MM:SS`` (UTC) of a line's timestamp, as the line parser sees it."""
        key = stamp + zone
        out = self._seconds.get(key, False)
        if out is False:
            clock = self._parser._clock
            if zone:
                ts = clock.iso(stamp.decode(), None, zone.decode())
            else:
                text = stamp.decode()
                ts = clock.traditional(text[:3], text[4:6], text[7:9], text[10:12], text[13:15])
            out = ts[:-5].encode() if ts else None
            if len(self._seconds) >= _CACHE_MAX:
                self._seconds.clear()
            self._seconds[key] = out
        return out  # type: ignore[return-value]

    def _header(self, host: bytes, program: bytes | None, pid: bytes | None) -> tuple[bytes, str]:
        """The JSON fragment of program, pid and hostname, and the program name."""
        key = (host, program, pid)
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

    def _to_items(self, t: TailedFile, block: bytes, at: int, tail: list[Line], now_ts: str,
                  prepared: Prepared, gate: Gate | None, items: list[Item],
                  derive: list[tuple[int, Event]]) -> None:
        """Serialize a block of whole lines (at file offset ``at``) and the ``tail`` line(s):
        lines of the common formats in bulk, the others through the line parser."""
        seed = t.id_seed()
        path = t.state.path if not t.rotated else t.state.path.removesuffix(" (deleted)")
        max_line = self.config.max_line_bytes
        rx = _BULK_ISO if block[:1].isdigit() else _BULK_TRAD if block[:1].isupper() else None
        pos = 0
        if rx is not None:
            redact, dumps, hexlify = prepared.redact, orjson.dumps, binascii.b2a_hex
            second, header = self._second, self._header
            tpl = None
            if prepared.accepts("system_log", "info"):
                tpl = (b'{"kind":"system_log","server":' + dumps(prepared.server) + b',"id":"f-%b",'
                       b'"ts":"%b.%bZ","data":{"level":"info","facility":null,"source":' + dumps(path)
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
                h = seed.copy()
                h.update(b"%d" % (at + start))
                eid = hexlify(h.digest())
                message = raw.decode()
                if tpl is not None:
                    items.append(("system_log", tpl % (eid, sec, ms, frag, dumps(redact(message))), 1))
                if gate is not None and gate(prog, message):
                    p = pid.decode() if pid else None
                    derive.append((len(items), {
                        "id": "f-" + eid.decode(), "kind": "system_log", "ts": f"{sec.decode()}.{ms.decode()}Z",
                        "data": {"program": prog, "level": "info",
                                 "pid": int(p) if p and p.isdigit() and len(p) <= 9 else None,
                                 "message": message, "facility": None, "hostname": host.decode(),
                                 "source": path}}))
        if pos != len(block):
            self._slow(t, split_lines(block[pos:], at + pos, max_line), now_ts, prepared, gate, items, derive)
        if tail:
            self._slow(t, tail, now_ts, prepared, gate, items, derive)

    def _slow(self, t: TailedFile, lines: list[Line], now_ts: str, prepared: Prepared, gate: Gate | None,
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

    def _read_chunk(self, flush_all: bool, prepared: Prepared, gate: Gate | None
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

    def _step(self, prepared: Prepared, gate: Gate | None) -> tuple[Any, bool, str, int, int]:
        items, derive, more = self._read_chunk(self.ctx.once, prepared, gate)
        gaps, trunc = self._gaps, self._truncated
        self._gaps = self._truncated = 0
        return (items, derive), more, self._state_json(), gaps, trunc

    def _close_all(self) -> None:
        for t in [*self.files.values(), *self.rotated.values()]:
            t.close()
        self.files.clear()
        self.rotated.clear()

    # ------------------------------------------------------------------ event loop side

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def run(self) -> None:
        had_state = await self._call(self._restore, self.ctx.checkpoint(self.source))
        first_start = not had_state
        await self._call(self._discover, first_start)
        last_state = None
        if first_start:  # remember where "end" was, so a restart before new lines loses nothing
            last_state = await self._call(self._state_json)
            await self.ctx.emit([], Checkpoint(self.source, last_state))
        derivers: list[Deriver] = self.ctx.services.get("derivers", [])
        gate = line_gate(derivers)
        last_glob = time.monotonic()
        while not self.ctx.stopping.is_set():
            prepared = prepared_for(self.ctx)
            (items, derive), more, state, gaps, trunc = await self._call(self._step, prepared, gate)
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
            await self._call(self._check_rotations)
            if time.monotonic() - last_glob >= self.config.glob_interval_s:
                last_glob = time.monotonic()
                await self._call(self._discover, False)

    async def aclose(self) -> None:
        try:
            await self._call(self._close_all)
        finally:
            self._executor.shutdown(wait=False)


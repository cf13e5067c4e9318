"""Syslog line parsing: one text line in, a timestamp and ``system_log`` data out, never an error.

Formats, tried by the line's first character:

- RFC 3164 with the traditional timestamp: ``Nov 26 21:22:36 web-01 sshd[812]: message``
- RFC 3164 with rsyslog's high-precision RFC 3339 timestamp (Debian 12's ``/var/log/syslog``):
  ``2026-11-26T21:22:36.922364+00:00 web-01 sshd[812]: message``
- RFC 5424: ``<34>1 2026-11-26T21:22:36.003Z web-01 su 123 ID47 [sd@1 k="v"] message``
  (structured data and MSGID kept in ``extra``)
- anything else: the raw fallback (the whole line is the message, program ``unknown``).

An optional ``<PRI>`` prefix gives facility and level; without it the level is ``info``.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

import orjson

from agent.config import LEVELS
from agent.events import format_ts

FACILITIES: tuple[str, ...] = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
    "authpriv", "ftp", "ntp", "security", "console", "solaris-cron",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
)
UNKNOWN_PROGRAM = "unknown"
_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}

_PRI = re.compile(r"<(\d{1,3})>")
#: RFC 3164 TAG: program, optional [pid], then ':' (optional as a whole)
_TAG = r"(?:([^\s\[\]:]{1,256})(?:\[([^\]\s]{0,32})\])?: ?)?"
_TRAD = re.compile(r"([A-Z][a-z]{2}) ([ \d]\d) (\d\d):(\d\d):(\d\d) (\S{1,256}) " + _TAG)
_RFC3339 = re.compile(
    r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d{1,9})?(Z|[+-]\d\d:\d\d) (\S{1,256}) " + _TAG)
_V1 = re.compile(r"1 (\S{1,64}) (\S{1,255}) (\S{1,48}) (\S{1,128}) (\S{1,32}) ")
_SD_ID = re.compile(r"\[([^\s=\]\"]{1,64})")
_SD_PARAM = re.compile(r" ([^\s=\]\"]{1,64})=\"((?:[^\"\\]|\\.)*+)\"", re.S)
_SD_UNESCAPE = re.compile(r"\\([\"\\\]])")


def _pid(text: str | None) -> int | None:
    if text and text.isdigit() and len(text) <= 10:
        value = int(text)
        return value if value < 1 << 31 else None
    return None


class _Clock:
    """Turns timestamps into RFC 3339 UTC milliseconds, caching per second (files repeat them)."""

    def __init__(self) -> None:
        self._trad: tuple[str, str] = ("", "")
        self._iso: tuple[str, str] = ("", "")

    def traditional(self, mon: str, day: str, hh: str, mm: str, ss: str) -> str | None:
        key = f"{mon}{day}{hh}{mm}{ss}"
        if key == self._trad[0]:
            return self._trad[1]
        month = _MONTHS.get(mon)
        if month is None or not (0 < int(day) <= 31 and int(hh) < 24 and int(mm) < 60 and int(ss) < 61):
            return None
        now = time.time()
        year = time.localtime(now).tm_year
        try:
            stamp = time.mktime((year, month, int(day), int(hh), int(mm), int(ss), 0, 0, -1))
            if stamp > now + 7 * 86400:  # "Dec 31" read in January: last year's line
                stamp = time.mktime((year - 1, month, int(day), int(hh), int(mm), int(ss), 0, 0, -1))
        except (ValueError, OverflowError):
            return None
        out = format_ts(stamp)
        self._trad = (key, out)
        return out

    def iso(self, base: str, frac: str | None, zone: str) -> str | None:
        key = base + zone
        if key != self._iso[0]:
            try:
                dt = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
            except ValueError:
                return None
            self._iso = (key, format_ts(dt)[:-5])
        ms = (frac[1:4] if frac else "").ljust(3, "0")
        return f"{self._iso[1]}.{ms}Z"


class SyslogLineParser:
    """Parses syslog lines; keeps small timestamp caches, so use one per file or collector."""

    def __init__(self) -> None:
        self._clock = _Clock()

    def parse(self, line: str) -> tuple[str | None, dict[str, Any]]:
        """``(ts or None, data)`` for one line without its newline; never raises."""
        try:
            return self._parse(line)
        except Exception:  # the raw fallback never fails
            return None, raw_data(line)

    def _parse(self, line: str) -> tuple[str | None, dict[str, Any]]:
        pos = 0
        facility = None
        level = "info"
        if line[:1] == "<":
            m = _PRI.match(line)
            if m and int(m.group(1)) < 192:
                pri = int(m.group(1))
                facility, level = FACILITIES[pri >> 3], LEVELS[pri & 7]
                pos = m.end()
                if line.startswith("1 ", pos):
                    parsed = self._rfc5424(line, pos, facility, level)
                    if parsed is not None:
                        return parsed
        c = line[pos:pos + 1]
        if c.isdigit():
            m = _RFC3339.match(line, pos)
            if m is None:
                return None, raw_data(line, facility, level)
            base, frac, zone, hostname, program, pid = m.groups()
            ts = self._clock.iso(base, frac, zone)
        elif c.isupper():
            m = _TRAD.match(line, pos)
            if m is None:
                return None, raw_data(line, facility, level)
            mon, day, hh, mi, ss, hostname, program, pid = m.groups()
            ts = self._clock.traditional(mon, day, hh, mi, ss)
        else:
            return None, raw_data(line, facility, level)
        return ts, {
            "program": program or UNKNOWN_PROGRAM,
            "level": level,
            "pid": int(pid) if pid and pid.isdigit() and len(pid) <= 9 else None,
            "message": line[m.end():],
            "facility": facility,
            "hostname": hostname,
        }

    def _rfc5424(self, line: str, pos: int, facility: str, level: str) -> tuple[str | None, dict[str, Any]] | None:
        m = _V1.match(line, pos)
        if m is None:
            return None
        stamp, host, app, procid, msgid = m.groups()
        ts = None
        if stamp != "-":
            t = _RFC3339.match(stamp + " - ")  # the same timestamp grammar
            if t is not None:
                ts = self._clock.iso(t.group(1), t.group(2), t.group(3))
        i = m.end()
        extra: dict[str, Any] = {}
        if msgid != "-":
            extra["msgid"] = msgid
        if line.startswith("-", i):
            i += 1
        else:
            sd, i = parse_structured_data(line, i)
            if sd is None:
                return None
            extra["structured_data"] = sd
        message = line[i + 1:] if line.startswith(" ", i) else line[i:]
        if message.startswith("\ufeff"):
            message = message[1:]
        data: dict[str, Any] = {
            "program": app if app != "-" else UNKNOWN_PROGRAM,
            "level": level,
            "pid": _pid(procid),
            "message": message,
            "facility": facility,
            "hostname": host if host != "-" else None,
        }
        if procid != "-" and data["pid"] is None:
            extra["procid"] = procid
        if extra:
            data["extra"] = extra
        return ts, data


def parse_structured_data(line: str, i: int) -> tuple[dict[str, dict[str, str]] | None, int]:
    """RFC 5424 STRUCTURED-DATA at ``line[i:]``: ``({sd_id: {name: value}}, end)``; None if malformed.

    Linear in the input: each element is matched once, parameters by a possessive-style regex.
    """
    out: dict[str, dict[str, str]] = {}
    n = len(line)
    while i < n and line[i] == "[":
        m = _SD_ID.match(line, i)
        if m is None:
            return None, i
        params: dict[str, str] = {}
        j = m.end()
        while True:
            p = _SD_PARAM.match(line, j)
            if p is None:
                break
            params[p.group(1)] = _SD_UNESCAPE.sub(r"\1", p.group(2))
            j = p.end()
        if j >= n or line[j] != "]":
            return None, i
        out[m.group(1)] = params
        i = j + 1
    return out, i


def raw_data(line: str, facility: str | None = None, level: str = "info") -> dict[str, Any]:
    """The fallback: the whole line is the message."""
    return {
        "program": UNKNOWN_PROGRAM,
        "level": level,
        "pid": None,
        "message": line,
        "facility": facility,
        "hostname": None,
    }


_default = SyslogLineParser()


def parse_line(line: str) -> tuple[str | None, dict[str, Any]]:
    """Parse one line with a shared parser (see :meth:`SyslogLineParser.parse`)."""
    return _default.parse(line)


# The bulk parsers: the two common timestamped formats of :class:`SyslogLineParser` (no ``<PRI>``), as
# bytes regexes over a whole block of lines. They only match all-ASCII lines, on which these
# classes are exactly those of the str regexes there (``\S`` there is "not whitespace" in the
# Unicode sense, which for ASCII is not [\t\n\v\f\r\x1c-\x1f ]); any other line is left
# for the line parser, so both ways give the same events.
_WS = rb"\t\n\x0b\x0c\r\x1c-\x1f \x80-\xff"
_HOST = rb"([^" + _WS + rb"]{1,256}) "
_TAG_B = (rb"(?:([^" + _WS + rb"\[\]:]{1,256})(?:\[([^" + _WS + rb"\]]{0,32})\])?: ?)?"
        rb"([\x00-\x09\x0b-\x7f]*)\n")
#: rsyslog's RFC 3339 form: (second, ms digits, zone, host, program, pid, message)
_BULK_ISO = re.compile(rb"^([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,3})[0-9]{0,6})?"
                       rb"(Z|[+-][0-9]{2}:[0-9]{2}) " + _HOST + _TAG_B, re.M)
#: the traditional form: (stamp, -, -, host, program, pid, message)
_BULK_TRAD = re.compile(rb"^([A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2})()() " + _HOST + _TAG_B, re.M)
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
_UNKNOWN_B = UNKNOWN_PROGRAM.encode()

class StampCache:
    """The parts of a block parser's lines that repeat, converted once: each timestamp's second
    (``YYYY-MM-DDTHH:MM:SS.`` UTC, as :class:`SyslogLineParser` sees it) and each header's JSON
    fragment of program, pid and hostname. Clear it each hour: the year of ``Dec 31 …`` lines
    depends on the clock."""

    def __init__(self) -> None:
        self._clock = _Clock()
        #: ``YYYY-MM-DDTHH:MM:SS.`` of timestamps, by zone and stamp (None: impossible date)
        self._seconds: dict[bytes, dict[bytes, bytes | None]] = {}
        self._headers: dict[tuple[bytes, bytes, bytes], tuple[bytes, str]] = {}
        #: by block-parser header: its JSON fragment, and its (zone, program)
        self._frags: dict[bytes, bytes] = {}
        self._head_info: dict[bytes, tuple[bytes, bytes]] = {}

    def clear_seconds(self) -> None:
        self._seconds.clear()

    def zone_of(self, head: bytes) -> bytes:
        """The zone of a header seen by :meth:`headers_of`."""
        return self._head_info[head][0]

    def second(self, stamp: bytes, zone: bytes) -> bytes | None:
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
        return out  # type: ignore[return-value]  # the False of a miss was replaced

    def _convert(self, stamp: bytes, zone: bytes) -> bytes | None:
        clock = self._clock
        if zone:
            ts = clock.iso(stamp.decode(), None, zone.decode())
        else:
            text = stamp.decode()
            ts = clock.traditional(text[:3], text[4:6], text[7:9], text[10:12], text[13:15])
        return ts[:-4].encode() if ts else None

    def seconds_of(self, stamps: tuple[bytes, ...], zone: bytes) -> list[bytes] | None:
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
        return out  # type: ignore[return-value]  # no None left in it

    def header(self, host: bytes, program: bytes | None, pid: bytes | None) -> tuple[bytes, str]:
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

    def headers_of(self, heads: tuple[bytes, ...]) -> tuple[list[bytes], set[bytes], set[bytes]]:
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
                frags[head] = self.header(host, program, pid)[0]
                info[head] = (zone or b"", program or _UNKNOWN_B)
        zones = {info[h][0] for h in distinct}
        programs = {info[h][1] for h in distinct}
        return list(map(frags.__getitem__, heads)), zones, programs

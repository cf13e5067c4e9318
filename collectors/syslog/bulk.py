"""The syslog file collector's bulk parsers: the two common timestamped line formats as bytes
regexes over a whole block of lines, and the cache of what repeats in them.

They read exactly what :class:`~collectors.syslog.parse.SyslogLineParser` reads on the lines
they match (the same tag grammar: ``--`` after the host, old PAM's ``prog(module)``, a version,
a macOS subsystem), and leave any other line to it, so both ways give the same events. A block
with CRLF line ends is matched with its CRs taken out (:func:`without_crs`); its lines' offsets
come from the block as it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from collectors.syslog.parse import UNKNOWN_PROGRAM, _Clock, split_program
from collectors.syslog.year import YearResolver

# The bulk parsers: the two common timestamped formats of SyslogLineParser (no ``<PRI>``), as
# bytes regexes over a whole block of lines. Their header classes only match ASCII, on which
# they are exactly those of the str regexes (``\S`` there is "not whitespace" in the Unicode
# sense, which for ASCII is not [\t\n\v\f\r\x1c-\x1f ]); any other line is left for the line
# parser, so both ways give the same events.
_WS = rb"\t\n\x0b\x0c\r\x1c-\x1f \x80-\xff"
_HOST = rb"([^" + _WS + rb"]{1,256}) "
_PROG = rb"[^" + _WS + rb"\[\]:]{1,256}"
_VER = rb"[0-9][A-Za-z0-9_.+~-]{0,63}"
_PID = rb"[^" + _WS + rb"\]]{0,32}"
_SUB = rb"[!-'*-~]{1,256}"
#: the tag, capturing (program, version, pid, subsystem), optional as a whole
_TAG_CAP = (rb"(?:(?: *-- )?(" + _PROG + rb")\]?(?: (" + _VER + rb"))?(?:\[(" + _PID + rb")\])?"
            rb"(?: \((" + _SUB + rb")\))?: ?)?")
_TAG_NC = (rb"(?:(?: *-- )?" + _PROG + rb"\]?(?: " + _VER + rb")?(?:\[" + _PID + rb"\])?"
           rb"(?: \(" + _SUB + rb"\))?: ?)?")
_MESSAGE = rb"([\x00-\x09\x0b-\x7f]*)\n"
#: rsyslog's RFC 3339 form: (second, ms digits, zone, host, program, version, pid, subsystem, message)
BULK_ISO = re.compile(rb"^([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,3})[0-9]{0,6})?"
                      rb"(Z|[+-][0-9]{2}:[0-9]{2}) " + _HOST + _TAG_CAP + _MESSAGE, re.M)
#: the traditional form: (stamp, -, -, host, program, version, pid, subsystem, message)
BULK_TRAD = re.compile(rb"^([A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2})()() " + _HOST + _TAG_CAP + _MESSAGE,
                       re.M)
# The block parsers: the same formats for a block known to be UTF-8, with four groups —
# (second, ms digits, header, message) — the header being zone, host and tag (parsed once per
# distinct header by _HEADER), and ``.*`` for the message, which the regex engine scans several
# times faster than a class.
_HEADER_NC = rb"[^" + _WS + rb"]{1,256} " + _TAG_NC
BLOCK_ISO = re.compile(rb"^([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,3})[0-9]{0,6})?"
                       rb"((?:Z|[+-][0-9]{2}:[0-9]{2}) " + _HEADER_NC + rb")(.*)\n", re.M)
BLOCK_TRAD = re.compile(rb"^([A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2})()( " + _HEADER_NC + rb")(.*)\n",
                        re.M)
#: a block parser's header: (zone, host, program, version, pid, subsystem)
_HEADER = re.compile(rb"(Z|[+-][0-9]{2}:[0-9]{2})? " + _HOST + _TAG_CAP)
_CACHE_MAX = 4096
_UNKNOWN_B = UNKNOWN_PROGRAM.encode()
Header = tuple[bytes, str, "dict[str, Any] | None"]


def without_crs(block: bytes) -> bytes:
    """``block`` with the CR of each CRLF line end taken out (the block itself when it has none)."""
    return block.replace(b"\r\n", b"\n") if b"\r" in block else block


def plain_pid(pid: bytes) -> bool:
    """Whether a header's pid is written in JSON as it stands: 1-9 ASCII digits, no leading zero
    (as the line parser reads a pid: ``int(pid)`` where it is all digits and at most 9 long)."""
    return 1 <= len(pid) <= 9 and pid.isdigit() and (pid[:1] != b"0" or len(pid) == 1)


def pidless(head: bytes, start: int, end: int) -> bytes:
    """The compiled reader's key of a header whose plain pid is ``head[start:end]``: the header
    without the pid's digits, after a NUL byte (which no header starts with)."""
    return b"\0" + head[:start] + head[end:]


class StampCache:
    """The parts of a block parser's lines that repeat, converted once: each RFC 3339 timestamp's
    second (``YYYY-MM-DDTHH:MM:SS.`` UTC, as :class:`SyslogLineParser` sees it) and each header's
    JSON fragment of program, pid, hostname and extra. Year-less stamps are dated by the file's
    own :class:`YearResolver` (their year depends on the lines before them)."""

    def __init__(self) -> None:
        self._clock = _Clock(YearResolver())
        #: ``YYYY-MM-DDTHH:MM:SS.`` of timestamps, by zone and stamp (None: impossible date)
        self._seconds: dict[bytes, dict[bytes, bytes | None]] = {}
        self._headers: dict[tuple[bytes | None, ...], Header] = {}
        #: by block-parser header: its JSON fragment, and its (zone, program)
        self._frags: dict[bytes, bytes] = {}
        self._head_info: dict[bytes, tuple[bytes, bytes]] = {}
        #: for the compiled block reader (_lines.c): header -> (fragment, a deriver wants its
        #: program), or for a plain pid, its pidless() key -> (fragment before the pid, after it, wanted)
        self.c_heads: dict[bytes, tuple[bytes, bool] | tuple[bytes, bytes, bool]] = {}

    def clear_seconds(self) -> None:
        self._seconds.clear()

    @property
    def seconds_by_zone(self) -> dict[bytes, dict[bytes, bytes | None]]:
        """The seconds of RFC 3339 stamps by zone and stamp, as :meth:`second` caches them."""
        return self._seconds

    def learn_head(self, head: bytes, gated: Callable[[str], bool]) -> None:
        """One header the compiled block reader has not met, read as :meth:`headers_of` reads it
        (nothing when it is not a block parser's header). A header whose pid is a plain number
        is kept without it (:func:`pidless`): its fragment in two pieces, before and after the
        pid's digits, which the reader puts between them. A file's many processes then share
        one entry per program and host, instead of one per process that the cache keeps
        dropping and reading again."""
        m = _HEADER.fullmatch(head)
        if m is None:
            return
        zone, host, program, version, pid, subsystem = m.groups()
        heads = self.c_heads
        if len(heads) >= _CACHE_MAX:
            heads.clear()
        if pid is not None and plain_pid(pid):
            frag, prog, _ = self.header(host, program, version, None, subsystem)
            before, _, after = frag.partition(b'"pid":null')
            start, end = m.span(5)
            heads[pidless(head, start, end)] = (before + b'"pid":', after, gated(prog))
            return
        frag, prog, _ = self.header(host, program, version, pid, subsystem)
        heads[head] = (frag, gated(prog))

    def learn_second(self, stamp: bytes, zone: bytes) -> None:
        """One RFC 3339 second the compiled block reader has not met, dated and kept."""
        self.second(stamp, zone, self._clock.years)

    def zone_of(self, head: bytes) -> bytes:
        """The zone of a header seen by :meth:`headers_of`."""
        return self._head_info[head][0]

    def second(self, stamp: bytes, zone: bytes, years: YearResolver) -> bytes | None:
        """``YYYY-MM-DDTHH:MM:SS.`` (UTC) of a line's timestamp as the line parser sees it; None
        for an impossible date. ``years``: the file's (for a stamp without a year)."""
        if not zone:
            return years.seconds((stamp,))[0]
        cache = self._seconds.get(zone)
        if cache is None:
            cache = self._seconds[zone] = {}
        out = cache.get(stamp, False)
        if out is False:
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            ts = self._clock.iso(stamp.decode(), None, zone.decode())
            out = cache[stamp] = ts[:-4].encode() if ts else None
        return out  # type: ignore[return-value]  # the False of a miss was replaced

    def seconds_of(self, stamps: tuple[bytes, ...], zone: bytes, years: YearResolver) -> list[bytes] | None:
        """:meth:`second` of each line, all in one zone (for RFC 3339 stamps one dict lookup per
        line, in C); None if any date is impossible."""
        if not zone:
            got = years.seconds(stamps)
            return None if None in got else got  # type: ignore[return-value]  # no None left
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
                ts = self._clock.iso(stamp.decode(), None, zone.decode())
                cache[stamp] = ts[:-4].encode() if ts else None
            out = list(map(cache.get, stamps))
            if None in out:
                return None
        return out  # type: ignore[return-value]  # no None left in it

    def header(self, host: bytes, program: bytes | None, version: bytes | None = None, pid: bytes | None = None,
               subsystem: bytes | None = None) -> Header:
        """The JSON fragment of program, pid, hostname (and extra), the program name and the extra."""
        key = (host, program, version, pid, subsystem)
        out = self._headers.get(key)
        if out is None:
            prog = program.decode() if program else UNKNOWN_PROGRAM
            extra: dict[str, Any] = {}
            if program:
                prog, module = split_program(prog)
                if module is not None:
                    extra["pam_module"] = module
                if version:
                    extra["version"] = version.decode()
                if subsystem:
                    extra["subsystem"] = subsystem.decode()
            p = pid.decode() if pid else None
            fields: dict[str, Any] = {"program": prog, "pid": int(p) if p and p.isdigit() and len(p) <= 9 else None,
                                      "hostname": host.decode()}
            if extra:
                fields["extra"] = extra
            out = (orjson.dumps(fields)[1:-1], prog, extra or None)
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
                zone, host, program, version, pid, subsystem = m.groups()
                frag, prog, _ = self.header(host, program, version, pid, subsystem)
                frags[head] = frag
                info[head] = (zone or b"", prog.encode())
        zones = {info[h][0] for h in distinct}
        programs = {info[h][1] for h in distinct}
        return list(map(frags.__getitem__, heads)), zones, programs

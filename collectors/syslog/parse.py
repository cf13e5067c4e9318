"""Syslog line parsing: one text line in, a timestamp and ``system_log`` data out, never an error.

Formats, tried by the line's first character:

- RFC 3164 with the traditional timestamp: ``Nov 26 21:22:36 web-01 sshd[812]: message``
  (the year is decided from the file's context: :mod:`collectors.syslog.year`)
- RFC 3164 with rsyslog's high-precision RFC 3339 timestamp (Debian 12's ``/var/log/syslog``):
  ``2026-11-26T21:22:36.922364+00:00 web-01 sshd[812]: message``
- RFC 5424: ``<34>1 2026-11-26T21:22:36.003Z web-01 su 123 ID47 [sd@1 k="v"] message``
  (structured data and MSGID kept in ``extra``)
- ``ctime`` stamped lines with a year, as FTP servers write them: the standard ``xferlog``
  (``Mon Dec  1 10:00:00 2026 1 198.51.100.7 1048576 /srv/a.iso b _ o r alice ftp 0 * c``,
  program ``xferlog``) and vsftpd's own log (``Mon Dec  1 10:00:00 2026 [pid 4242] [alice] OK
  UPLOAD: …``, program ``vsftpd``)
- ProFTPD's SystemLog: ``2026-12-01 10:00:00,123 ftp-01 proftpd[4242] ftp-01 (…): message``
- anything else: the raw fallback (the whole line is the message, program ``unknown``).

An optional ``<PRI>`` prefix gives facility and level; without it the level is ``info``.
A line end's ``\r`` (CRLF files) is not part of the line.

Tags are read as real daemons write them: ``sshd[812]:``, ``kernel:``, a version after the name
(``syslogd 1.4.1: restart.``, the version in ``extra``), old PAM's ``sshd(pam_unix)[812]:``
(program ``sshd``, ``extra.pam_module``), a host followed by ``--`` (``host -- root[2421]:``),
and macOS's ``launchd[1] (com.example.job[42]):`` (``extra.subsystem``).
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from agent.config import LEVELS
from agent.events import format_ts
from collectors.syslog.year import MONTHS as _MONTHS
from collectors.syslog.year import YearResolver, valid_date

FACILITIES: tuple[str, ...] = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
    "authpriv", "ftp", "ntp", "security", "console", "solaris-cron",
    "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
)
UNKNOWN_PROGRAM = "unknown"

_PRI = re.compile(r"<(\d{1,3})>")
#: RFC 3164 TAG, optional as a whole: [spaces and "-- " after the host,] program [and a stray ']',
#: as gdm writes "gdm-password][607]:"], [a version after a blank,] [[pid]], [a macOS " (subsystem)"],
#: then ':' (the version and subsystem in ASCII, as the bulk parsers of collectors.syslog.bulk read them)
_TAG = (r"(?:(?: *-- )?([^\s\[\]:]{1,256})\]?(?: ([0-9][A-Za-z0-9_.+~-]{0,63}))?(?:\[([^\]\s]{0,32})\])?"
        r"(?: \(([!-'*-~]{1,256})\))?: ?)?")
_TRAD = re.compile(r"([A-Z][a-z]{2}) ( ?\d|\d\d) (\d\d):(\d\d):(\d\d) (\S{1,256}) " + _TAG)
_RFC3339 = re.compile(
    r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d{1,9})?(Z|[+-]\d\d:\d\d) (\S{1,256}) " + _TAG)
_V1 = re.compile(r"1 (\S{1,64}) (\S{1,255}) (\S{1,48}) (\S{1,128}) (\S{1,32}) ")
_SD_ID = re.compile(r"\[([^\s=\]\"]{1,64})")
_SD_PARAM = re.compile(r" ([^\s=\]\"]{1,64})=\"((?:[^\"\\]|\\.)*+)\"", re.S)
_SD_UNESCAPE = re.compile(r"\\([\"\\\]])")
#: ctime with a year (local time), as xferlog and vsftpd.log start: ``Mon Dec  1 10:00:00 2026 ``
_CTIME = re.compile(r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ([A-Z][a-z]{2}) ( ?\d|\d\d) (\d\d):(\d\d):(\d\d) (\d{4}) ")
_VSFTPD_PID = re.compile(r"\[pid (\d{1,10})\] ")
#: the fields an xferlog line starts with after its time: seconds, remote host, bytes
_XFERLOG = re.compile(r"\d{1,10} \S{1,256} \d{1,20} ")
#: ProFTPD's SystemLog: local date and time, ms after a comma, host, ``proftpd[pid]`` and a blank
_PROFTPD = re.compile(r"(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:,(\d{1,6}))? (\S{1,256}) "
                      r"([^\s\[\]:]{1,64})\[(\d{1,10})\]:? ")


def _pid(text: str | None) -> int | None:
    if text and text.isdigit() and len(text) <= 10:
        value = int(text)
        return value if value < 1 << 31 else None
    return None


def split_program(program: str) -> tuple[str, str | None]:
    """Old PAM's tag ``sshd(pam_unix)``: ``("sshd", "pam_unix")``; any other program as it is
    (``(sd-pam)`` included: nothing before its parenthesis)."""
    if program.endswith(")"):
        i = program.find("(")
        if i > 0 and program.find(")") == len(program) - 1:
            return program[:i], program[i + 1:-1] or None
    return program, None


class _Clock:
    """Turns timestamps into RFC 3339 UTC milliseconds, caching per second (files repeat them)."""

    def __init__(self, years: YearResolver) -> None:
        self.years = years
        self._iso: tuple[str, str] = ("", "")

    def traditional(self, mon: str, day: str, hh: str, mm: str, ss: str) -> str | None:
        """A year-less stamp in the file's context (None: an impossible date)."""
        return self.years.resolve(mon, day, hh, mm, ss)

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

    @staticmethod
    def local(year: int, month: int, day: int, hh: int, mm: int, ss: int, ms: str | None,
              utc: bool = False) -> str | None:
        """A local (``utc``: UTC) date and time with a year; None when the date is impossible."""
        if not (valid_date(year, month, day) and hh < 24 and mm < 60 and ss < 61):
            return None
        fields = (year, month, day, hh, mm, min(ss, 59), 0, 0, -1)
        stamp = (calendar.timegm(fields) if utc else time.mktime(fields)) + (ss > 59)
        return format_ts(stamp)[:-4] + (ms or "")[:3].ljust(3, "0") + "Z"


class SyslogLineParser:
    """Parses syslog lines. It dates year-less lines from the lines before them, so use one per
    file, in file order, with the file's mtime as :meth:`set_anchor`."""

    def __init__(self, anchor: float | None = None, now: Callable[[], float] = time.time,
                 ftp_times: str = "local") -> None:
        #: the FTP servers' ctime stamps (xferlog, vsftpd.log) are UTC: vsftpd without use_localtime=YES
        self.ftp_utc = ftp_times == "utc"
        self.years = YearResolver(anchor, now)
        self._clock = _Clock(self.years)

    def set_anchor(self, mtime: float | None, first_year: int | None | Callable[[], int | None] = None) -> None:
        """The file's mtime, and the year of the next line when the lines ahead were scanned
        (see :class:`~collectors.syslog.year.YearResolver`)."""
        self.years.set_anchor(mtime, first_year)

    @property
    def impossible_dates(self) -> int:
        """Lines read whose date does not exist (each dated from its context)."""
        return self.years.impossible

    def parse(self, line: str) -> tuple[str | None, dict[str, Any]]:
        """``(ts or None, data)`` for one line without its newline; never raises. A line end's
        ``\\r`` is dropped; a line with an impossible date is dated from its context and keeps
        its stamp in ``extra.raw_timestamp``."""
        if line.endswith("\r"):
            line = line[:-1]
        try:
            return self._parse(line)
        except Exception:  # the raw fallback never fails
            return None, raw_data(line)

    def _impossible(self, data: dict[str, Any], stamp: str) -> str:
        data.setdefault("extra", {})["raw_timestamp"] = stamp[:64]
        return self.years.context_ts()

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
                return self._proftpd(line, pos, facility, level)
            base, frac, zone, hostname, program, version, pid, sub = m.groups()
            ts = self._clock.iso(base, frac, zone)
            if ts is not None:
                self.years.note(ts)
            stamp = line[pos:m.start(4) - 1]
        elif c.isupper():
            m = _TRAD.match(line, pos)
            if m is None:
                return self._ctime(line, pos, facility, level)
            mon, day, hh, mi, ss, hostname, program, version, pid, sub = m.groups()
            ts = self._clock.traditional(mon, day, hh, mi, ss)
            stamp = line[pos:m.start(6) - 1]
        else:
            return None, raw_data(line, facility, level)
        data = _data(program, pid, level, line[m.end():], facility, hostname)
        if program:
            _tag_extra(data, version, sub)
        if ts is None:
            if c.isdigit():
                self.years.impossible += 1
            ts = self._impossible(data, stamp)
        return ts, data

    def _ctime(self, line: str, pos: int, facility: str | None, level: str) -> tuple[str | None, dict[str, Any]]:
        """xferlog and vsftpd.log lines (ctime with a year), else the raw fallback."""
        m = _CTIME.match(line, pos)
        if m is None:
            return None, raw_data(line, facility, level)
        mon, day, hh, mi, ss, year = m.groups()
        rest = line[m.end():]
        program, pid = UNKNOWN_PROGRAM, None
        if v := _VSFTPD_PID.match(rest):
            program, pid, rest = "vsftpd", v.group(1), rest[v.end():]
        elif _XFERLOG.match(rest):
            program = "xferlog"
        data = _data(program, pid, level, rest, facility, None)
        ts = self._clock.local(int(year), _MONTHS.get(mon, 0), int(day), int(hh), int(mi), int(ss), None,
                               self.ftp_utc)
        if ts is None:
            self.years.impossible += 1
            ts = self._impossible(data, line[pos:m.end() - 1])
        return ts, data

    def _proftpd(self, line: str, pos: int, facility: str | None, level: str) -> tuple[str | None, dict[str, Any]]:
        """ProFTPD's SystemLog lines, else the raw fallback."""
        m = _PROFTPD.match(line, pos)
        if m is None:
            return None, raw_data(line, facility, level)
        y, mo, d, hh, mi, ss, ms, host, program, pid = m.groups()
        data = _data(program, pid, level, line[m.end():], facility, host)
        ts = self._clock.local(int(y), int(mo), int(d), int(hh), int(mi), int(ss), ms)
        if ts is None:
            self.years.impossible += 1
            ts = self._impossible(data, line[pos:m.start(8) - 1])
        return ts, data

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
        if ts is None and stamp != "-":
            self.years.impossible += 1
            ts = self._impossible(data, stamp)
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


def _data(program: str | None, pid: str | None, level: str, message: str, facility: str | None,
          hostname: str | None) -> dict[str, Any]:
    return {
        "program": program or UNKNOWN_PROGRAM,
        "level": level,
        "pid": int(pid) if pid and pid.isdigit() and len(pid) <= 9 else None,
        "message": message,
        "facility": facility,
        "hostname": hostname,
    }


def _tag_extra(data: dict[str, Any], version: str | None, subsystem: str | None) -> None:
    """The parts of a tag beyond program and pid, in ``extra``; old PAM's ``prog(module)`` split."""
    program, module = split_program(data["program"])
    extra: dict[str, Any] = {}
    if module is not None:
        data["program"] = program
        extra["pam_module"] = module
    if version:
        extra["version"] = version
    if subsystem:
        extra["subsystem"] = subsystem
    if extra:
        data["extra"] = extra


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


def parse_line(line: str) -> tuple[str | None, dict[str, Any]]:
    """Parse one line on its own, a year-less date in the 12 months up to now (see
    :meth:`SyslogLineParser.parse`)."""
    return SyslogLineParser().parse(line)

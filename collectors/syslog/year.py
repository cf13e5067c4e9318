"""The year of a year-less syslog timestamp (``Dec 31 23:59:59``), decided from the file it is in.

RFC 3164 timestamps carry no year. A :class:`YearResolver` follows one file's lines in order
and decides each line's year from what the file says:

- the file's *anchor* is its mtime, when its last line was written: the last line takes the most
  recent year in which its date is not after the anchor by more than :data:`SKEW_S`, and a
  reader that scans the lines ahead first (:func:`first_year`) gives the first line that year
  less the New Years in between; without that scan the first line read is the one dated from
  the anchor;
- after that, time runs forward: each line keeps the year of the line before it, and a
  backwards jump (of months: ``Dec 31`` -> ``Jan 1``; of more than :data:`SKEW_S` in any case)
  is a year boundary when the date in the next year is not after the file's last write; smaller
  backwards steps (lines a relay delivered late, a clock set back) keep the year, and so does a
  jump back whose next-year date would lie after the mtime (a late or forged line);
- no timestamp is ever more than :data:`SKEW_S` after the file's mtime or the present: a year
  that would put a line there is one too many, the year before is taken;
- an impossible date (``Feb 29`` in a year that is not a leap year, ``Feb 31``, ``Apr 31``)
  stays impossible: the resolver answers None, counts it, and the caller keeps the raw text
  and dates the line from its context (:attr:`YearResolver.context_ts`).

Times are local time (as syslog daemons write them), converted with ``time.mktime``.
"""

from __future__ import annotations

import calendar
import functools
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from agent.events import format_ts

#: how far after the anchor (and after now) a line's time may be: clocks and zones of hosts
#: that send to a central syslog server differ by hours, never by more than a day
SKEW_S = 86_400.0
#: a backwards step larger than this is a year boundary, a smaller one disorder
BACKWARDS_S = 31 * 86_400.0
MONTHS: dict[str, int] = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def valid_date(year: int, month: int, day: int) -> bool:
    """Whether the day exists in that month of that year (Feb 29 only in leap years)."""
    if not 1 <= month <= 12 or day < 1:
        return False
    return day <= _DAYS[month - 1] or (month == 2 and day == 29 and calendar.isleap(year))


@functools.lru_cache(maxsize=8192)
def _hour(year: int, month: int, day: int, hh: int) -> float:
    """Epoch seconds of a local hour (zones change their offset on the hour)."""
    return time.mktime((year, month, day, hh, 0, 0, 0, 0, -1))


def _local(year: int, month: int, day: int, hh: int, mm: int, ss: int) -> float:
    return _hour(year, month, day, hh) + mm * 60 + min(ss, 59) + (ss > 59)


def latest_year(ref: float, month: int, day: int, hh: int = 0, mm: int = 0, ss: int = 0) -> int:
    """The most recent year in which ``month/day hh:mm:ss`` is not after ``ref`` by more than
    :data:`SKEW_S` (Feb 29 by that ordering, not a hunt for a leap year: in a non-leap context it
    is impossible)."""
    year = time.localtime(ref).tm_year
    if _local(year, month, min(day, 28) if month == 2 else min(day, 30), hh, mm, ss) > ref + SKEW_S:
        year -= 1
    return year


def first_year(stamps: Iterable[tuple[int, int, int, int, int]], anchor: float, now: float | None = None) -> int | None:
    """The year of the first of a file's year-less ``(month, day, hh, mm, ss)`` stamps, read to
    the file's end: the last stamp is dated from the anchor (mtime), and each backwards jump of
    more than :data:`BACKWARDS_S` on the way is one New Year before it. None without stamps."""
    first = last = None
    wraps = 0
    for st in stamps:
        if not (valid_date(2000, st[0], st[1]) and st[2] < 24 and st[3] < 60 and st[4] < 61):
            continue  # an impossible date (2000: a leap year, Feb 29 may be real) moves no year
        if first is None:
            first = st
        elif last is not None and _ordinal(st) < _ordinal(last) - BACKWARDS_S:
            wraps += 1
        last = st
    if first is None or last is None:
        return None
    ref = min(anchor, now if now is not None else time.time())
    return latest_year(ref, *last) - wraps


_STAMP_B = re.compile(rb"^(?:<[0-9]{1,3}>)?([A-Z][a-z]{2}) ( ?[0-9]|[0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ", re.M)


def stamps_in(blocks: Iterable[bytes]) -> Iterator[tuple[int, int, int, int, int]]:
    """The year-less stamps at the starts of the lines of ``blocks`` (a file's bytes, cut at line
    ends), as :func:`first_year` takes them; lines of other formats are passed over."""
    months = {m.encode(): i for m, i in MONTHS.items()}
    for block in blocks:
        for mon, day, hh, mm, ss in _STAMP_B.findall(block):
            month = months.get(mon)
            if month is not None:
                yield month, int(day), int(hh), int(mm), int(ss)


def _ordinal(st: tuple[int, int, int, int, int]) -> float:
    """Seconds since Jan 1 of a leap year: enough to order dates of one year and measure jumps."""
    month, day, hh, mm, ss = st
    return ((_CUMDAYS[month - 1] + day - 1) * 24 + hh) * 3600.0 + mm * 60 + ss


_CUMDAYS = (0, 31, 60, 91, 121, 152, 182, 213, 244, 274, 305, 335)


class YearResolver:
    """Years for one file's year-less timestamps, read in file order (see the module docstring)."""

    def __init__(self, anchor: float | None = None, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self.anchor = anchor
        #: (year, month, day, hh, mm, ss) and epoch of the last line dated
        self._last: tuple[int, float] | None = None
        self._last_key = ""
        self._last_ts = ""
        #: impossible dates met (each dated from its context)
        self.impossible = 0
        self._first_year: int | None = None
        #: the scan that gives ``_first_year``, run when a year-less stamp is first dated (a file
        #: of RFC 3339 lines never needs it); memoized, so a trial that is undone costs it once
        self._first_year_of: Callable[[], int | None] | None = None

    def set_anchor(self, mtime: float | None, first_year: int | None | Callable[[], int | None] = None) -> None:
        """The file's mtime: when its last line was written (used until a first line is dated),
        and, when the lines ahead were scanned, the year of the next line (:func:`first_year`), or
        the scan that gives it, run when first needed."""
        self.anchor = mtime
        if callable(first_year):
            if self._last is None:
                self._first_year_of = first_year
        elif first_year is not None and self._last is None:
            self._first_year = first_year

    def save(self) -> tuple[Any, ...]:
        """The state, for :meth:`restore`: lines dated on trial (a block that then goes line by line)."""
        return (self._last, self._last_key, self._last_ts, self.impossible, self._first_year)

    def restore(self, state: tuple[Any, ...]) -> None:
        self._last, self._last_key, self._last_ts, self.impossible, self._first_year = state

    def note(self, ts: str) -> None:
        """A line dated by its own full timestamp (RFC 3339): the context of a line after it."""
        self._last_ts = ts

    def context_ts(self) -> str:
        """The time a line without a usable date is given: the last line's, else the anchor's."""
        if self._last_ts:
            return self._last_ts
        now = self._now()
        return format_ts(min(self.anchor, now) if self.anchor is not None else now)

    def resolve(self, mon: str, day: str, hh: str, mm: str, ss: str) -> str | None:
        """The RFC 3339 UTC ms timestamp of ``Mon DD HH:MM:SS``, or None for an impossible date."""
        key = f"{mon}{day}{hh}{mm}{ss}"
        if key == self._last_key:
            return self._last_ts
        month = MONTHS.get(mon)
        d, h, mi, s = int(day), int(hh), int(mm), int(ss)
        if month is None or not (1 <= d <= 31 and h < 24 and mi < 60 and s < 61):
            self.impossible += 1
            return None
        now = self._now()
        # no line after the file's last write (its mtime) nor after now, by more than the skew
        limit = (min(self.anchor, now) if self.anchor is not None else now) + SKEW_S
        if self._last is None and self._first_year is None and self._first_year_of is not None:
            self._first_year = self._first_year_of()
        if self._last is None and self._first_year is not None:
            year = self._first_year
        elif self._last is None:
            ref = min(self.anchor, now) if self.anchor is not None else now
            year = latest_year(ref, month, d, h, mi, s)
        else:
            year, last = self._last
            if valid_date(year, month, d):
                back = _local(year, month, d, h, mi, s) < last - SKEW_S
            else:
                back = month < time.localtime(last).tm_mon
            # time runs forward: a jump back is New Year, when the next year's date is not after
            # the file's last write (so a line with a forged or stray stamp cannot move the year
            # of the lines after it)
            if back and valid_date(year + 1, month, d) and _local(year + 1, month, d, h, mi, s) <= limit:
                year += 1
        if not valid_date(year, month, d):
            self.impossible += 1
            return None
        stamp = _local(year, month, d, h, mi, s)
        if stamp > limit:  # never in the future: the year before
            year -= 1
            if not valid_date(year, month, d):
                self.impossible += 1
                return None
            stamp = _local(year, month, d, h, mi, s)
        self._last = (year, stamp)
        self._last_key = key
        self._last_ts = format_ts(stamp)
        return self._last_ts

    def seconds(self, stamps: Iterable[bytes]) -> list[bytes | None]:
        """``YYYY-MM-DDTHH:MM:SS.`` (UTC) of each ``Mon DD HH:MM:SS`` stamp of a block, in file order,
        exactly as :meth:`resolve` dates them (None: an impossible date). A stamp met before in the
        block is looked up instead of dated again when :meth:`resolve` would give it the same year:
        same year as the line before, and no backwards jump of more than the skew from it."""
        out: list[bytes | None] = []
        append = out.append
        #: stamp -> (year, epoch, second, key, ts)
        cache: dict[bytes, tuple[int, float, bytes, str, str]] = {}
        prev: bytes | None = None
        prev_sec: bytes | None = None
        for stamp in stamps:
            if stamp == prev:  # the line before's second (most lines of a busy log)
                append(prev_sec)
                continue
            prev = stamp
            hit = cache.get(stamp)
            last = self._last
            if hit is not None and last is not None and hit[0] == last[0] and hit[1] >= last[1] - SKEW_S:
                self._last = (hit[0], hit[1])
                self._last_key, self._last_ts = hit[3], hit[4]
                prev_sec = hit[2]
                append(prev_sec)
                continue
            text = stamp.decode("ascii")
            ts = self.resolve(text[:3], text[4:6], text[7:9], text[10:12], text[13:15])
            if ts is None:
                prev_sec = None
                append(None)
                continue
            prev_sec = ts[:-4].encode()
            if self._last is not None:
                cache[stamp] = (self._last[0], self._last[1], prev_sec, self._last_key, ts)
            append(prev_sec)
        return out

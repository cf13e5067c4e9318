"""The year of a year-less syslog timestamp (``Dec 31 23:59:59``), decided from the file it is in.

RFC 3164 timestamps carry no year. A :class:`YearResolver` follows one file's lines in order
and decides each line's year from what the file says:

- the first line read takes the most recent year in which its date is not after the file's
  *anchor* (its mtime: when its last line was written) by more than :data:`SKEW_S`;
- after that, time runs forward: each line keeps the year of the line before it, and a
  backwards jump of more than :data:`BACKWARDS_S` (a month) is a year boundary (``Dec 31`` ->
  ``Jan 1``); smaller backwards steps (lines a relay delivered late, a clock set back) keep
  the year;
- no timestamp is ever more than :data:`SKEW_S` after the present: a year that would put a line
  there is one too many, the year before is taken;
- an impossible date (``Feb 29`` in a year that is not a leap year, ``Feb 31``, ``Apr 31``)
  stays impossible: the resolver answers None, counts it, and the caller keeps the raw text
  and dates the line from its context (:attr:`YearResolver.context_ts`).

Times are local time (as syslog daemons write them), converted with ``time.mktime``.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable

from agent.events import format_ts

#: how far after the anchor (and after now) a line's time may be: clocks and zones of hosts
#: that send to a central syslog server differ by hours, never by more than a day
SKEW_S = 86_400.0
#: a backwards step larger than this is a year boundary, a smaller one disorder
BACKWARDS_S = 31 * 86_400.0
MONTHS: dict[str, int] = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


def valid_date(year: int, month: int, day: int) -> bool:
    """Whether the day exists in that month of that year (Feb 29 only in leap years)."""
    return 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]


def _local(year: int, month: int, day: int, hh: int, mm: int, ss: int) -> float:
    return time.mktime((year, month, day, hh, mm, min(ss, 59), 0, 0, -1)) + (ss > 59)


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

    def set_anchor(self, mtime: float | None) -> None:
        """The file's mtime: when its last line was written (used until a first line is dated)."""
        self.anchor = mtime

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
        limit = now + SKEW_S
        if self._last is None:
            ref = min(self.anchor, now) if self.anchor is not None else now
            year = time.localtime(ref).tm_year
            # the most recent year in which this date is not after the anchor (Feb 29: that
            # ordering, not a leap year hunt: "Feb 29" in a non-leap context is impossible)
            if _local(year, month, min(d, 28) if month == 2 else min(d, 30), h, mi, s) > ref + SKEW_S:
                year -= 1
        else:
            year, last = self._last
            if valid_date(year, month, d) and _local(year, month, d, h, mi, s) < last - BACKWARDS_S:
                year += 1  # time runs forward: a jump back of months is New Year
            elif not valid_date(year, month, d) and month < time.localtime(last).tm_mon:
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

"""The year of year-less syslog timestamps, decided from the file: its mtime, time running forward,
New Year, leap days, impossible dates, and never a time in the future."""

from __future__ import annotations

import random
import time

import pytest

from agent.events import format_ts, parse_ts
from collectors.syslog.parse import SyslogLineParser
from collectors.syslog.year import SKEW_S, YearResolver


def local(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> float:
    return time.mktime((y, mo, d, h, mi, s, 0, 0, -1))


def ts(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> str:
    return format_ts(local(y, mo, d, h, mi, s))


def read(lines: list[str], now: float, mtime: float | None) -> tuple[list[str | None], list[dict], SyslogLineParser]:
    """Parse a file's lines in order as the collector does (one parser per file, anchored at mtime)."""
    parser = SyslogLineParser(anchor=mtime, now=lambda: now)
    out = [parser.parse(line) for line in lines]
    return [t for t, _ in out], [d for _, d in out], parser


class TestYearFromTheFile:
    def test_file_written_today_runs_into_this_year(self):
        """Lines Nov 25 -> Dec 1 in a file written today (Dec 1) are all this year's."""
        now = local(2026, 12, 1, 12)
        lines = ["Nov 25 08:00:00 web-01 cron[1]: a", "Nov 30 23:59:59 web-01 cron[1]: b",
                 "Dec  1 00:00:01 web-01 cron[1]: c", "Dec  1 11:59:00 web-01 cron[1]: d"]
        stamps, _, _ = read(lines, now, now - 60)
        assert stamps == [ts(2026, 11, 25, 8), ts(2026, 11, 30, 23, 59, 59), ts(2026, 12, 1, 0, 0, 1),
                          ts(2026, 12, 1, 11, 59)]

    def test_file_last_written_last_january_is_last_year(self):
        """A file ending Dec 31 whose mtime is last January belongs to the year before that January."""
        now = local(2026, 12, 1, 12)
        lines = ["Dec 20 10:00:00 old-db sshd[7]: a", "Dec 31 23:00:00 old-db sshd[7]: b"]
        stamps, _, _ = read(lines, now, local(2026, 1, 4, 9))
        assert stamps == [ts(2025, 12, 20, 10), ts(2025, 12, 31, 23)]

    def test_a_file_from_three_years_ago_keeps_its_year(self):
        """The mtime, not the clock, dates an old copied file."""
        now = local(2026, 12, 1, 12)
        stamps, _, _ = read(["May 30 10:00:00 h a: x", "Jun  1 09:00:00 h a: y"], now, local(2023, 6, 1, 10))
        assert stamps == [ts(2023, 5, 30, 10), ts(2023, 6, 1, 9)]

    def test_spanning_new_year(self):
        """Dec 30 -> Jan 2: the backwards jump of months is New Year, the year goes up by one."""
        now = local(2026, 12, 1, 12)
        lines = ["Dec 30 22:00:00 h a: 1", "Dec 31 23:59:59 h a: 2", "Jan  1 00:00:00 h a: 3", "Jan  2 08:00:00 h a: 4"]
        stamps, _, _ = read(lines, now, local(2026, 1, 2, 8, 0, 5))
        assert stamps == [ts(2025, 12, 30, 22), ts(2025, 12, 31, 23, 59, 59), ts(2026, 1, 1), ts(2026, 1, 2, 8)]

    def test_small_backward_steps_keep_the_year(self):
        """Lines a relay delivered late (hours back) are disorder, not a year boundary."""
        now = local(2026, 12, 1, 12)
        lines = ["Dec  1 10:00:00 h a: 1", "Nov 30 23:00:00 h a: 2", "Dec  1 10:00:01 h a: 3"]
        stamps, _, _ = read(lines, now, now)
        assert stamps == [ts(2026, 12, 1, 10), ts(2026, 11, 30, 23), ts(2026, 12, 1, 10, 0, 1)]

    def test_feb_29_in_a_leap_year_context(self):
        """Feb 29 exists in 2028: it is dated as written."""
        now = local(2028, 3, 2, 12)
        stamps, datas, parser = read(["Feb 28 23:00:00 h a: 1", "Feb 29 01:02:03 h a: 2"], now, local(2028, 3, 1))
        assert stamps == [ts(2028, 2, 28, 23), ts(2028, 2, 29, 1, 2, 3)]
        assert "extra" not in datas[1] and parser.impossible_dates == 0

    def test_feb_29_in_a_non_leap_context_stays_impossible(self):
        """Feb 29 in 2026 is not Mar 1: the raw stamp is kept, the line dated from the one before, counted."""
        now = local(2026, 3, 2, 12)
        lines = ["Feb 28 23:00:00 h a: 1", "Feb 29 01:02:03 h a: 2", "Mar  1 00:00:00 h a: 3"]
        stamps, datas, parser = read(lines, now, local(2026, 3, 1))
        assert stamps == [ts(2026, 2, 28, 23), ts(2026, 2, 28, 23), ts(2026, 3, 1)]
        assert datas[1]["extra"] == {"raw_timestamp": "Feb 29 01:02:03"}
        assert (datas[1]["program"], datas[1]["message"]) == ("a", "2")
        assert parser.impossible_dates == 1

    def test_feb_31_is_impossible_in_every_year(self):
        """Feb 31 never becomes Mar 3; the first line of a file with one takes the file's mtime."""
        now = local(2026, 6, 1, 12)
        mtime = local(2026, 5, 1, 8)
        stamps, datas, parser = read(["Feb 31 10:00:00 h a: x", "Apr 31 10:00:00 h a: y"], now, mtime)
        assert stamps == [format_ts(mtime), format_ts(mtime)]
        assert [d["extra"]["raw_timestamp"] for d in datas] == ["Feb 31 10:00:00", "Apr 31 10:00:00"]
        assert parser.impossible_dates == 2

    def test_a_few_days_ahead_is_last_year(self):
        """Dec 5 read on Dec 1 is last December's (the old rule made it five days in the future)."""
        now = local(2026, 12, 1, 12)
        stamps, _, _ = read(["Dec  5 10:00:00 h a: x"], now, None)
        assert stamps == [ts(2025, 12, 5, 10)]
        stamps, _, _ = read(["Dec  2 08:00:00 h a: x"], now, None)  # within the allowed skew
        assert stamps == [ts(2026, 12, 2, 8)]

    def test_mtime_in_the_future_is_capped_at_now(self):
        """A file touched with a future mtime does not pull its lines into the future."""
        now = local(2026, 12, 1, 12)
        stamps, _, _ = read(["Dec 20 10:00:00 h a: x"], now, local(2027, 1, 5))
        assert stamps == [ts(2025, 12, 20, 10)]

    @pytest.mark.parametrize("seed", range(5))
    def test_never_in_the_future(self, seed: int):
        """Whatever a file holds (random stamps, random order, any mtime), no line is dated more than
        the allowed skew after now."""
        rng = random.Random(seed)
        months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        now = local(2026, rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23))
        r = YearResolver(anchor=now + rng.uniform(-5e7, 5e7), now=lambda: now)
        for _ in range(500):
            out = r.resolve(rng.choice(months), f"{rng.randint(1, 31):2d}", f"{rng.randint(0, 23):02d}",
                            f"{rng.randint(0, 59):02d}", f"{rng.randint(0, 60):02d}")
            if out is not None:
                assert parse_ts(out) <= now + SKEW_S + 1


class TestScanAhead:
    def test_a_file_spanning_two_new_years_is_dated_back_from_its_mtime(self):
        """Read from its start, a file spanning two New Years gives its first line the year of its
        last (from the mtime) less two, once the lines ahead were scanned."""
        from collectors.syslog.year import first_year

        now = local(2026, 12, 1, 12)
        lines = ["Mar  1 10:00:00 h a: 1", "Dec 31 10:00:00 h a: 2", "Jun  1 10:00:00 h a: 3",
                 "Dec 31 11:00:00 h a: 4", "Feb  1 10:00:00 h a: 5"]
        months = {m: i for i, m in enumerate(["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                                              "Nov", "Dec"], 1)}
        stamps = [(months[x[:3]], int(x[4:6]), int(x[7:9]), int(x[10:12]), int(x[13:15])) for x in lines]
        mtime = local(2026, 2, 1, 10, 0, 5)
        assert first_year(stamps, mtime, now) == 2024
        parser = SyslogLineParser(now=lambda: now)
        parser.set_anchor(mtime, first_year(stamps, mtime, now))
        got = [parser.parse(line)[0] for line in lines]
        assert got == [ts(2024, 3, 1, 10), ts(2024, 12, 31, 10), ts(2025, 6, 1, 10), ts(2025, 12, 31, 11),
                       ts(2026, 2, 1, 10)]
        assert first_year([], mtime, now) is None

    def test_stamps_in_blocks(self):
        """The scan finds the stamps at line starts (after a PRI too), skipping other lines."""
        from collectors.syslog.year import stamps_in

        blocks = [b"Dec 31 23:59:59 h a: x\r\n<13>Jan  1 00:00:00 h a: y\n", b"garbage Dec 31 10:00:00\nFoo  1 "
                                                                             b"10:00:00 h\n"
                  b"Feb 2 01:02:03 h a: z\n"]
        assert list(stamps_in(blocks)) == [(12, 31, 23, 59, 59), (1, 1, 0, 0, 0), (2, 2, 1, 2, 3)]


class TestBlockSeconds:
    def test_seconds_of_a_block_agree_with_line_by_line(self):
        """The block form (the file collector's fast path) dates each stamp as resolve() does,
        New Year and impossible dates included."""
        now = local(2026, 12, 1, 12)
        stamps = [b"Dec 31 23:59:59", b"Dec 31 23:59:59", b"Jan  1 00:00:00", b"Dec 31 23:59:59", b"Feb 29 10:00:00",
                  b"Jan  1 00:00:00", b"Mar  1 10:00:00"]
        block = YearResolver(anchor=local(2026, 3, 2), now=lambda: now).seconds(stamps)
        one = YearResolver(anchor=local(2026, 3, 2), now=lambda: now)
        each = []
        for s in stamps:
            t = s.decode()
            r = one.resolve(t[:3], t[4:6], t[7:9], t[10:12], t[13:15])
            each.append(r[:-4].encode() if r else None)
        assert block == each
        assert block[0] == ts(2025, 12, 31, 23, 59, 59)[:-4].encode() and block[4] is None


class TestStrayStamps:
    def test_a_forged_late_stamp_does_not_move_the_year_of_the_lines_after_it(self):
        """A line a sender stamped 'Dec 31' in a live log of Dec 1 (a forged or wrong clock) is dated
        last year, and the genuine lines after it keep this year; so does one stamped 'Jan 1'."""
        now = local(2026, 12, 1, 12)
        lines = ["Dec  1 10:00:00 web-01 sshd[1]: a", "Dec 31 23:59:59 web-01 evil: forged",
                 "Dec  1 10:00:01 web-01 sshd[1]: b", "Jan  1 00:00:00 web-01 evil: forged",
                 "Dec  1 10:00:02 web-01 sshd[1]: c"]
        stamps, _, _ = read(lines, now, now)
        assert stamps == [ts(2026, 12, 1, 10), ts(2025, 12, 31, 23, 59, 59), ts(2026, 12, 1, 10, 0, 1),
                          ts(2026, 1, 1), ts(2026, 12, 1, 10, 0, 2)]
        block = [line[:15].encode() for line in lines]
        got = YearResolver(anchor=now, now=lambda: now).seconds(block)
        assert got == [t[:-4].encode() for t in stamps]

    def test_a_late_line_in_an_old_file_keeps_its_year(self):
        """In a file last written in January, a Dec 25 line after Dec 31 is a late line, not a New Year."""
        now = local(2026, 12, 1, 12)
        lines = ["Dec 20 10:00:00 h a: 1", "Dec 31 10:00:00 h a: 2", "Dec 25 10:00:00 h a: 3", "Jan  2 10:00:00 h a: 4"]
        stamps, _, _ = read(lines, now, local(2026, 1, 2, 10, 0, 5))
        assert stamps == [ts(2025, 12, 20, 10), ts(2025, 12, 31, 10), ts(2025, 12, 25, 10), ts(2026, 1, 2, 10)]

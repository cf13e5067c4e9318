"""Syslog line parsing on real-looking lines of each format, and on garbage and hostile input."""

from __future__ import annotations

import time

from agent.schema import validate_data
from collectors.syslog.parse import SyslogLineParser, parse_line, parse_structured_data


def _valid(data: dict) -> dict:
    validate_data("system_log", data)
    return data


class TestSyslogLineParser:
    def test_debian12_high_precision(self):
        """rsyslog's RFC 3339 high-precision line gives host, program, pid, message and UTC ms."""
        ts, d = parse_line("2026-11-26T21:22:36.922364+00:00 web-01 sshd[812]: Accepted publickey for deploy")
        assert ts == "2026-11-26T21:22:36.922Z"
        assert _valid(d) == {"program": "sshd", "level": "info", "pid": 812, "hostname": "web-01",
                             "message": "Accepted publickey for deploy", "facility": None}

    def test_high_precision_with_offset(self):
        """A non-UTC offset is converted to UTC."""
        ts, d = parse_line("2026-11-26T21:22:36.5+09:00 web-01 CRON[77]: (root) CMD (true)")
        assert ts == "2026-11-26T12:22:36.500Z"
        assert (d["program"], d["pid"], d["message"]) == ("CRON", 77, "(root) CMD (true)")

    def test_traditional_timestamp(self):
        """RFC 3164 with 'Mmm dd hh:mm:ss' is read in local time of the current year."""
        ts, d = parse_line("Feb  3 04:05:06 web-01 kernel: [ 12.345] eth0: link up")
        assert ts is not None and ts.endswith("Z")
        expect = time.mktime((time.localtime().tm_year, 2, 3, 4, 5, 6, 0, 0, -1))
        if expect > time.time() + 7 * 86400:
            expect = time.mktime((time.localtime().tm_year - 1, 2, 3, 4, 5, 6, 0, 0, -1))
        assert ts == time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(expect))
        assert (d["program"], d["pid"], d["hostname"], d["message"]) == ("kernel", None, "web-01",
                                                                          "[ 12.345] eth0: link up")

    def test_pri_prefix_gives_facility_and_level(self):
        """A leading <PRI> sets facility and level."""
        _, d = parse_line("<38>Nov 26 21:22:36 web-01 sshd[1]: x")  # auth.info
        assert (d["facility"], d["level"]) == ("auth", "info")
        _, d = parse_line("<11>2026-11-26T21:22:36Z web-01 app: boom")  # user.err
        assert (d["facility"], d["level"], d["program"]) == ("user", "error", "app")

    def test_rfc5424_with_structured_data(self):
        """RFC 5424: structured data (with escapes) and MSGID are kept in extra, BOM stripped."""
        line = ('<165>1 2026-11-26T21:22:36.003Z host.example.com evntslog 8710 ID47 '
                '[exampleSDID@32473 iut="3" eventSource="App\\"lic\\]ation"][x@1 k="v"] \ufeffAn application event')
        ts, d = parse_line(line)
        assert ts == "2026-11-26T21:22:36.003Z"
        assert _valid(d)["program"] == "evntslog"
        assert (d["pid"], d["level"], d["facility"], d["hostname"]) == (8710, "notice", "local4", "host.example.com")
        assert d["message"] == "An application event"
        assert d["extra"] == {"msgid": "ID47", "structured_data": {
            "exampleSDID@32473": {"iut": "3", "eventSource": 'App"lic]ation'}, "x@1": {"k": "v"}}}

    def test_rfc5424_nil_values(self):
        """Nil ('-') fields become unknown/None; a non-numeric PROCID goes to extra."""
        ts, d = parse_line("<13>1 - - - - - -")
        assert ts is None and _valid(d)["program"] == "unknown" and d["hostname"] is None
        _, d = parse_line("<13>1 2026-11-26T21:22:36Z h app worker-3 - - hi")
        assert d["pid"] is None and d["extra"] == {"procid": "worker-3"} and d["message"] == "hi"

    def test_missing_program(self):
        """A line without a TAG keeps the text as message and program 'unknown'."""
        _, d = parse_line("2026-11-26T21:22:36.1+00:00 web-01 just some text here")
        assert (d["program"], d["message"], d["hostname"]) == ("unknown", "just some text here", "web-01")

    def test_empty_line(self):
        """An empty line is a valid event with an empty message."""
        ts, d = parse_line("")
        assert ts is None and _valid(d)["message"] == "" and d["program"] == "unknown"

    def test_garbage_bytes(self):
        """Undecodable bytes (already replaced) and control characters fall back to raw."""
        text = b"\xff\xfe\x00\x1b[31mgarbage\x80\xc3".decode("utf-8", "replace")
        ts, d = parse_line(text)
        assert ts is None and _valid(d)["message"] == text

    def test_hostile_structured_data(self):
        """Unclosed or nested brackets and quotes neither hang nor raise."""
        for line in ["<1>1 - - - - - " + "[" * 100_000, '<1>1 - - - - - [a b="' + "x" * 1_000_000,
                     '<1>1 - - - - - [a b="\\' * 50_000, "<1>1 " + "- " * 200_000]:
            start = time.monotonic()
            ts, d = parse_line(line)
            assert time.monotonic() - start < 2.0
            assert d["message"]

    def test_one_megabyte_line(self):
        """A 1 MB line parses whole (truncation is the collector's job)."""
        body = "y" * 1_000_000
        _, d = parse_line(f"2026-11-26T21:22:36Z web-01 app[5]: {body}")
        assert d["message"] == body and d["pid"] == 5

    def test_line_without_newline_at_eof(self):
        """The parser takes a line without its newline; a trailing CR stays in the message."""
        _, d = parse_line("Nov 26 21:22:36 web-01 app: last line\r")
        assert d["message"] == "last line\r"

    def test_odd_pri_and_pid(self):
        """An out-of-range PRI or a huge/odd PID is not trusted."""
        _, d = parse_line("<999>Nov 26 21:22:36 h a: b")
        assert d["program"] == "unknown" and d["level"] == "info"
        _, d = parse_line("Nov 26 21:22:36 h a[99999999999]: b")
        assert d["program"] == "a" and d["pid"] is None
        _, d = parse_line("Nov 26 21:22:36 h a[]: b")
        assert d["pid"] is None and d["message"] == "b"

    def test_bad_dates_fall_back(self):
        """A timestamp that looks right but is impossible gives ts None, never an error."""
        ts, d = parse_line("Feb 31 25:61:61 h a: b")
        assert ts is None and d["message"]
        ts, d = parse_line("2026-13-45T99:99:99Z h a: b")
        assert ts is None and d["program"] == "a"

    def test_structured_data_parser_alone(self):
        """parse_structured_data returns None for malformed elements."""
        assert parse_structured_data('[a x="1"] rest', 0) == ({"a": {"x": "1"}}, 9)
        assert parse_structured_data('[a x=1]', 0)[0] is None
        assert parse_structured_data("[", 0)[0] is None

    def test_parser_instances_are_independent(self):
        """Each parser keeps its own timestamp caches."""
        a, b = SyslogLineParser(), SyslogLineParser()
        assert a.parse("Nov 26 21:22:36 h x: 1")[0] == b.parse("Nov 26 21:22:36 h x: 1")[0]

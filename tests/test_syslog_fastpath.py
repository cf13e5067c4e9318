"""The syslog-file and journald fast paths (finished JSON, ``emit_prepared``) against the slow one:
the line parser / field mapping, then the pipeline's own chain (enrich, filter, redact, validate)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.config import JournaldConfig, SyslogConfig
from agent.events import stable_id
from agent.pipeline.encode import Prepared
from agent.pipeline.processors import Enrich, Filter, Validate
from agent.pipeline.redact import Redactor
from agent.schema import validate_event
from collectors.journald import TRUNCATION_MARKER, JournaldCollector
from collectors.syslog.bulk import BULK_ISO as _BULK_ISO
from collectors.syslog.bulk import BULK_TRAD as _BULK_TRAD
from collectors.syslog.collector import SyslogFileCollector
from collectors.syslog.parse import SyslogLineParser
from collectors.syslog.tail import fingerprint, line_id
from collectors.syslog.year import first_year, stamps_in
from tests.parts import JOURNAL_REMOTE, EmitRecorder, run_once, write_journal_file
from tests.support import need

MAX_LINE = 300
LINES: list[bytes] = [
    b"2026-11-26T21:22:36.922364+00:00 web-01 sshd[812]: Accepted publickey for deploy from 10.0.0.1 port 5 ssh2",
    b'2026-11-26T21:22:36.9+00:00 web-01 nginx[1]: "GET /a\\\\b HTTP/1.1" 200 "-" tab\there',
    b"2026-11-26T21:22:37Z web-01 app: password=hunter2 token: abc123 ctrl\x01\x1b\x7f end\r",
    b'2026-11-26T21:22:37.123-05:30 h"o\\st pr"og[12x]: odd tag and host',
    b"2026-11-26T21:22:38.5+00:00 web-01 kernel: [1.2] caf\xc3\xa9 utf-8 and bad \xff\xfe bytes",
    b"2026-11-26T21:22:38.5+00:00 web-01 prog\x1cname[3]: a separator in the tag",
    b"2026-13-45T99:22:38.5+00:00 web-01 bad[1]: an impossible date",
    b"2026-11-26T21:22:39+00:00 web-01 long[9]: " + b"x" * 400,
    b"Nov 26 21:22:36 web-01 CRON[99]: (root) CMD (run-parts /etc/cron.hourly)",
    b"Nov  6 01:02:03 web-01 su: (to root) alice on pts/0",
    b"Feb 30 01:02:03 web-01 bad: no such day",
    b"<38>Nov 26 21:22:36 web-01 login[5]: FAILED LOGIN (1) on '/dev/tty1' FOR 'bob', Authentication failure",
    b'<165>1 2026-11-26T21:22:36.003Z web-01 su 123 ID47 [sd@1 k="v\\"q"] structured',
    b"",
    b"   leading spaces and nothing else",
    b"\x00\x00binary garbage\xff",
    b"2026-11-26T21:22:40.000001+00:00 web-01 sudo: alice : TTY=pts/0 ; PWD=/ ; USER=root ; COMMAND=/bin/ls",
    b"2026-11-26T21:22:40.000001+00:00 web-01 app[1]: Authorization: Bearer abcdefghijklmnopqrstuvwxyz",
]


#: lines the bulk parsers take, all of one format per file, with everything a message may hold
BULK_ISO_LINES: list[bytes] = [
    b"2026-11-26T21:22:36.922364+00:00 web-01 sshd[812]: Accepted publickey for deploy from 10.0.0.1",
    b'2026-11-26T21:22:36.9+00:00 web-01 nginx[1]: "GET /a\\\\b HTTP/1.1" 200 "-" tab\there',
    b"2026-11-26T21:22:37Z web-01 app: password=hunter2 token: abc123 ctrl\x01\x1b\x7f\x00 end\r",
    b"2026-11-26T21:22:37.12-05:30 web-01 prog[12x]: odd pid and another zone",
    b"2026-11-26T21:22:38+09:00 web-01 kernel: [1.2] no fraction, no pid",
    b"2026-11-26T21:22:38.5+00:00 web-01 empty[]: empty pid brackets",
    b"2026-11-26T21:22:38.123456+00:00 web-01 nocolon[3] a tag without its colon",
    b"2026-11-26T21:22:38.123456+00:00 web-01 ",
    b"2026-11-26T21:22:40.000001+00:00 web-01 app[1]: Authorization: Bearer abcdefghijklmnopqrstuvwxyz",
    b"2026-11-26T21:22:40.000001+00:00 web-01 app[1234567890]: a pid too long for an int",
    b"2026-11-26T21:22:40.000001+00:00 web-01 app[1]: see https://user:s3cret@example.com/x --token=abc",
]
BULK_TRAD_LINES: list[bytes] = [
    b"Nov 26 21:22:36 web-01 CRON[99]: (root) CMD (run-parts /etc/cron.hourly)",
    b"Nov  6 01:02:03 web-01 kernel: a kernel line",
    b'Dec 31 23:59:59 web-01 app[5]: "quoted" and \\ back\tslash mysql -pS3cret',
    b"Jan  1 00:00:00 web-01 app[5]:",
]


def _chain() -> list[Any]:
    return [Enrich("test"), Filter(), Redactor(), Validate()]


def _through_chain(event: dict[str, Any]) -> dict[str, Any]:
    for proc in _chain():
        event = proc(event)
    return event


def _slow_syslog(path: Path, content: bytes, max_line: int = MAX_LINE) -> list[dict[str, Any] | None]:
    """The events the line parser and the chain make of each line (None: ts from the clock)."""
    st = os.stat(path)
    with open(path, "rb") as f:
        fp, _ = fingerprint(f.fileno())
    parser = SyslogLineParser()  # anchored as the collector anchors each file it reads
    parser.set_anchor(st.st_mtime, first_year(stamps_in([content]), st.st_mtime))
    out: list[dict[str, Any] | None] = []
    off = 0
    for raw in content[:-1].split(b"\n"):
        cut = raw[:max_line]
        ts, data = parser.parse(cut.decode("utf-8", "replace"))
        data["source"] = str(path)
        if len(raw) > max_line:
            data["truncated"] = True
            data["message"] += TRUNCATION_MARKER
        ev = {"id": line_id(st.st_dev, st.st_ino, fp, off), "kind": "system_log", "ts": ts, "data": data}
        off += len(raw) + 1
        out.append(_through_chain(ev) if ts is not None else None)
    return out


def _assert_like_line_parser(events: list[dict[str, Any]], expected: list[dict[str, Any] | None], n: int) -> None:
    """``events`` are the line parser's ``expected`` (None: no usable timestamp, the read time)."""
    assert len(events) == len(expected) == n
    for got, want in zip(events, expected, strict=True):
        if want is None:
            assert got["ts"].endswith("Z")
            continue
        assert got == want, (got, want)


class TestSyslogFastPath:
    async def test_same_events_as_line_parser_and_chain(self, tmp_path: Path) -> None:
        """Every line (bulk-parsed or not) gives the event the line parser plus the chain gives."""
        path = tmp_path / "syslog"
        content = b"\n".join(LINES * 3) + b"\n"
        path.write_bytes(content)
        assert sum(1 for _ in _BULK_ISO.finditer(content)) >= 5  # the bulk parser does take part
        assert sum(1 for _ in _BULK_TRAD.finditer(content)) >= 2
        rec = EmitRecorder()
        cfg = SyslogConfig(enabled=True, paths=[str(path)], start_at="beginning", max_line_bytes=MAX_LINE)
        await run_once(SyslogFileCollector(cfg, rec.context(once=True)))
        expected = _slow_syslog(path, content)
        assert rec.prepared_calls and len(rec.events) == len(expected) == len(LINES) * 3
        for got, want in zip(rec.events, expected, strict=True):
            validate_event(got)
            if want is None:  # no usable timestamp: the read time
                assert got["ts"].endswith("Z")
                continue
            assert got == want, (got, want)
        messages = [e["data"]["message"] for e in rec.events]
        assert not any("hunter2" in m or "abcdefghijklmnop" in m for m in messages)
        assert any("[REDACTED]" in m for m in messages)

    async def test_bulk_blocks_give_the_same_events(self, tmp_path: Path) -> None:
        """Files whose every line the bulk parser takes are built block-wise, in segments, and
        still give exactly the line parser's events; a line that needs the per-line path (too
        long, an impossible date, one for the derivers) sends its block that way instead."""
        variants = {
            "iso": BULK_ISO_LINES * 40,
            "trad": BULK_TRAD_LINES * 60,
            "long": BULK_ISO_LINES * 5 + [b"2026-11-26T21:22:39+00:00 web-01 long[9]: " + b"x" * 400],
            "date": BULK_ISO_LINES * 5 + [b"2026-13-45T99:22:38.5+00:00 web-01 bad[1]: an impossible date"],
            "derive": BULK_ISO_LINES * 5,
            "utf8": BULK_ISO_LINES * 3
            + [
                '2026-11-26T21:22:41.5+09:00 web-01 app[7]: 로그인 성공 user=김철수 café ☃ "q" \\ é'.encode(),
                "2026-11-26T21:22:41.5+09:00 web-01 app[7]: password=비밀번호 token: 토큰\t끝".encode(),
                "2026-11-26T21:22:41.5+09:00 web-01 app[7]: \u2028 line separator \x85 and NEL".encode(),
            ],
            "badutf8": BULK_ISO_LINES * 3 + [b"2026-11-26T21:22:41.5+00:00 web-01 app[7]: bad \xff\xfe bytes"],
            "crlf": [line + b"\r" for line in BULK_ISO_LINES * 5],
            "crlf_trad": [line + b"\r" for line in BULK_TRAD_LINES * 20],
            "tags": [
                b"Dec  1 09:00:00 oldbox syslogd 1.4.1: restart.",
                b"Dec  1 09:00:01 oldbox  -- root[2421]: ROOT",
                b"Dec  1 09:00:02 rhel4 sshd(pam_unix)[1234]: session opened for user alice by (uid=0)",
                b"Dec  1 09:00:03 ws-01 gdm-password][607]: x",
                b"Dec  1 09:00:04 oldbox -- MARK --",
                b"Dec  1 09:00:05 mac-07 launchd[1] (com.example.job[42]): exited",
                b"Dec  1 09:00:06 h (sd-pam)[9]: y",
            ]
            * 20,
        }
        seen: list[str] = []

        def derive(ev: dict[str, Any]) -> list[dict[str, Any]]:
            seen.append(ev["data"]["message"])
            return []

        derive.programs = frozenset({"sshd"})  # type: ignore[attr-defined]
        for name, lines in variants.items():
            path = tmp_path / name
            content = b"\n".join(lines) + b"\n"
            path.write_bytes(content)
            rec = EmitRecorder()
            if name == "iso":  # a byte cap that halves segments
                r = Redactor()
                rec.prepared_settings = Prepared("test", r.redact_text, Filter(), r.changed_lines, 7, 700)
            cfg = SyslogConfig(enabled=True, paths=[str(path)], start_at="beginning", max_line_bytes=MAX_LINE)
            c = SyslogFileCollector(cfg, rec.context(once=True, derivers=[derive] if name == "derive" else None))
            segments: list[int] = []
            bulk = c._bulk

            def spy(*args: Any, _bulk: Any = bulk, _seen: list[int] = segments) -> bool:
                items = args[-1]
                before = len(items)
                done = _bulk(*args)
                _seen.extend(n for _, _, n in items[before:])
                return done

            c._bulk = spy  # type: ignore[method-assign]
            await run_once(c)
            expected = _slow_syslog(path, content)
            assert len(rec.events) == len(expected) == len(lines), name
            for got, want in zip(rec.events, expected, strict=True):
                if want is None:  # the impossible date: the read time
                    assert got["data"]["message"] == "an impossible date" and got["ts"].endswith("Z")
                    continue
                assert got == want, (name, got, want)
            if name in (
                "iso",
                "trad",
                "utf8",
                "crlf",
                "crlf_trad",
                "tags",
            ):  # CRLF files and every tag form in bulk too
                # segments of at most 7 events, halved while over the byte cap
                assert sum(segments) == len(lines), (name, segments)
                assert (max(segments) < 7) if name == "iso" else (max(segments) == 7), (name, segments)
            else:
                assert not segments, name
        assert len(seen) == 5 and all(m.startswith("Accepted publickey") for m in seen)
        messages = [e["data"]["message"] for e in rec.events]
        assert not any("hunter2" in m or "S3cret" in m for m in messages)

    @pytest.mark.parametrize("cache_max", [4096, 3], ids=["caches", "tiny-caches"])
    @pytest.mark.parametrize("reader", ["compiled", "python"])
    async def test_rfc3339_lines_of_every_shape(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                reader: str, cache_max: int) -> None:
        """rsyslog's RFC 3339 lines with every tag form, length limit and message the compiled
        block reader (``_lines.c``) must read as the regexes do, in pieces so that it reads most
        blocks (the first teaches it the headers): the line parser's events, with it and without;
        also with caches so small that asking Python for a second clears them mid-block."""
        import collectors.syslog.bulk as bulk_mod
        import collectors.syslog.collector as syslog_mod
        from collectors.syslog import compiled

        monkeypatch.setattr(bulk_mod, "_CACHE_MAX", cache_max)

        if reader == "python":
            monkeypatch.setenv(compiled.READER_ENV, "python")
        else:
            need(compiled.compiled_block_reader() is not None, "the compiled syslog reader (pip install -e .)")
        monkeypatch.setattr(syslog_mod, "_PIECE_BYTES", 4000)
        stamp = "2026-11-26T21:22:3{}{}+00:00".format
        heads = ["web-01 sshd[1]:", "web-01 prog:", "web-01 prog", "web-01 prog]:", "web-01  -- root[2]:",
                 "web-01 -- MARK --", "web-01 app 1.2.3[4] (sub.sys): ", "web-01 app 1.2[4]:", "web-01 app (x):",
                 "web-01 app[]:", "web-01 app[" + "9" * 32 + "]:", "web-01 app[" + "9" * 33 + "]:",
                 "h" * 256 + " p:", "web-01 " + "p" * 256 + ":", "web-01 " + "p" * 257 + ":",
                 "web-01 app 1" + "v" * 63 + ":", "web-01 app 1" + "v" * 64 + ":", "web-01 app (" + "s" * 256 + "):",
                 "web-01 a:b:", "web-01 :x", "web-01 app[1] (s)x:", "web-01 app[1]:no space", "web-01 pam(x)[3]:",
                 # pids the reader writes as they stand (one entry per program), and those it must not
                 "web-01 app[0]:", "web-01 app[07]:", "web-01 app[123456789]:", "web-01 app[1234567890]:",
                 "web-01 app[1a]:", "web-01 app[-1]:", "web-01 app 1.2[40] (s[1]):", "web-01 -- cron[77]:",
                 "web-01 app[5]]:", "web-01 app[]: [6]", "web-02 app[8]:"]
        messages = ["plain", 'quotes " and \\ back', "tab\tand\x01\x1f\x7f", "password=hunter2 ok",
                    "PWD=/root ; USER=root", "MYSQL_PWD=S3cret", "café ☃ 로그인", "api_key: abc", "", " lead"]
        fracs = ["", ".5", ".12", ".123", ".123456789", ".1234567890"]
        lines = []
        for i in range(4000):  # every (zone, header, stamp) is met in the first blocks, then known
            # a line no block parser reads (ten digits of fraction) sends its piece to the line
            # parser: only early on, so that most pieces are the compiled reader's
            frac = fracs[i % (len(fracs) if i < 300 else len(fracs) - 1)]
            zone = ["+00:00", "Z", "-05:30"][i % 3]
            lines.append(f"{stamp(i % 10, frac)[:-6]}{zone} {heads[i % len(heads)]} "
                         f"{messages[i % len(messages)]} #{i}".encode())
        path = tmp_path / "syslog"
        content = b"\n".join(lines) + b"\n"
        path.write_bytes(content)
        rec = EmitRecorder()
        cfg = SyslogConfig(enabled=True, paths=[str(path)], start_at="beginning", max_line_bytes=1000)
        c = SyslogFileCollector(cfg, rec.context(once=True))
        await run_once(c)
        expected = _slow_syslog(path, content, max_line=1000)
        _assert_like_line_parser(rec.events, expected, len(lines))
        assert (c.lines_compiled > len(lines) / 2) if reader == "compiled" else c.lines_compiled == 0, c.lines_compiled
        assert not any("hunter2" in e["data"]["message"] or "S3cret" in e["data"]["message"] for e in rec.events)

    async def test_many_processes_share_one_header_entry(self, tmp_path: Path) -> None:
        """A header whose pid is a plain number is kept once per program and host, not once per
        process: 3,000 processes of two programs leave a handful of entries in the compiled
        reader's cache (it used to hold one per process, cleared and read again every 4,096), and
        each line still gets its own pid; "[]" is no pid, kept apart from them."""
        from collectors.syslog import compiled

        need(compiled.compiled_block_reader() is not None, "the compiled syslog reader (pip install -e .)")
        lines = [f"2026-11-26T21:22:3{i % 10}.5+00:00 web-01 {'CRON' if i % 2 else 'sshd'}[{1000 + i}]: "
                 f"session {i}".encode() for i in range(3000)]
        lines += [b"2026-11-26T21:22:39+00:00 web-01 CRON[]: no pid", b"2026-11-26T21:22:39+00:00 web-01 CRON[0]: zero"]
        path = tmp_path / "syslog"
        content = b"\n".join(lines) + b"\n"
        path.write_bytes(content)
        rec = EmitRecorder()
        cfg = SyslogConfig(enabled=True, paths=[str(path)], start_at="beginning")
        c = SyslogFileCollector(cfg, rec.context(once=True))
        await run_once(c)
        _assert_like_line_parser(rec.events, _slow_syslog(path, content, max_line=cfg.max_line_bytes), len(lines))
        assert [e["data"]["pid"] for e in rec.events] == [1000 + i for i in range(3000)] + [None, 0]
        assert c.lines_compiled > 2900
        assert len(c._stamps.c_heads) <= 6, list(c._stamps.c_heads)

    async def test_blocks_parsed_in_pieces_give_the_same_events(self, tmp_path: Path, monkeypatch) -> None:
        """A read block is parsed in pieces cut at line ends (a line longer than a piece makes a
        piece of its own): the same events as the line parser, pieces bulk or not."""
        import collectors.syslog.collector as syslog_mod

        monkeypatch.setattr(syslog_mod, "_PIECE_BYTES", 500)
        longer = b"2026-11-26T21:22:39+00:00 web-01 long[9]: " + b"y" * 800  # longer than a piece
        lines = BULK_ISO_LINES * 6 + LINES + [longer] + BULK_ISO_LINES * 3 + [longer]
        path = tmp_path / "syslog"
        content = b"\n".join(lines) + b"\n"
        path.write_bytes(content)
        rec = EmitRecorder()
        cfg = SyslogConfig(enabled=True, paths=[str(path)], start_at="beginning", max_line_bytes=MAX_LINE)
        await run_once(SyslogFileCollector(cfg, rec.context(once=True)))
        expected = _slow_syslog(path, content)
        _assert_like_line_parser(rec.events, expected, len(lines))

    async def test_filter_drops_lines_but_derivers_still_see_them(self, tmp_path: Path) -> None:
        """A level filter that drops every line still lets derivers run; derived events follow."""

        path = tmp_path / "syslog"
        path.write_bytes(b"\n".join(LINES) + b"\n")
        seen: list[str] = []

        def derive(ev: dict[str, Any]) -> list[dict[str, Any]]:
            seen.append(ev["data"]["message"])
            return [
                {
                    "kind": "user_activity",
                    "ts": ev["ts"],
                    "id": stable_id("ua", ev["id"]),
                    "data": {
                        "user": "alice",
                        "action": "login",
                        "result": 200,
                        "ip": None,
                        "details": {"note": "password=x"},
                    },
                }
            ]

        derive.programs = frozenset({"sudo", "su"})  # type: ignore[attr-defined]
        derive.message_prefixes = ()  # type: ignore[attr-defined]
        rec = EmitRecorder()
        rec.prepared_settings = Prepared("test", Redactor().redact_text, Filter(min_level="emerg"))
        cfg = SyslogConfig(enabled=True, paths=[str(path)], start_at="beginning", max_line_bytes=MAX_LINE)
        await run_once(SyslogFileCollector(cfg, rec.context(once=True, derivers=[derive])))
        assert [e["kind"] for e in rec.events] == ["user_activity"] * 3
        assert seen == [
            "(to root) alice on pts/0",
            "structured",
            "alice : TTY=pts/0 ; PWD=/ ; USER=root ; COMMAND=/bin/ls",
        ]
        for e in rec.events:
            validate_event(e)
            assert e["data"]["details"] == {"note": "password=[REDACTED]"} and e["server"] == "test"


class TestJournaldFastPath:
    async def test_json_is_valid_and_a_fixed_point_of_the_chain(self, tmp_path: Path) -> None:
        """Journal entries with hostile values give schema-valid events the chain leaves unchanged."""
        need(os.access(JOURNAL_REMOTE, os.X_OK), "systemd-journal-remote (apt systemd-journal-remote)")
        entries = [
            {"MESSAGE": b'bin\x00\xff\xfe "q" \\ \x01\x1f', "SYSLOG_IDENTIFIER": 'b"\\', "_PID": "7"},
            {
                "MESSAGE": "login with password=hunter2 ok",
                "SYSLOG_IDENTIFIER": "app",
                "PRIORITY": "3",
                "_HOSTNAME": "web-01",
                "_TRANSPORT": "syslog",
                "_SYSTEMD_UNIT": 'a"b.service',
                "SYSLOG_FACILITY": "10",
            },
            {"MESSAGE": "é" * 700, "SYSLOG_IDENTIFIER": b"\xff" * 300, "_PID": "0099"},
            {"MESSAGE": "multi\nline\n", "_COMM": "x", "SYSLOG_PID": "abc", "PRIORITY": "x"},
        ]
        write_journal_file(tmp_path / "j" / "a.journal", entries)
        rec = EmitRecorder()
        cfg = JournaldConfig(directory=str(tmp_path / "j"), start_at="beginning", max_message_bytes=1000)
        await run_once(JournaldCollector(cfg, rec.context(once=True)))
        assert rec.prepared_calls and len(rec.events) == 4
        for ev in rec.events:
            validate_event(ev)
            assert _through_chain(copy.deepcopy(ev)) == ev
        a, b, c, d = (e["data"] for e in rec.events)
        assert a["message"] == 'bin\x00\ufffd\ufffd "q" \\ \x01\x1f' and a["program"] == 'b"\\' and a["pid"] == 7
        assert b["message"] == "login with password=[REDACTED] ok" and b["level"] == "error"
        assert (b["hostname"], b["facility"]) == ("web-01", "authpriv")
        assert b["extra"] == {"unit": 'a"b.service', "transport": "syslog",
                              "boot_id": "0123456789abcdef0123456789abcdef"}
        assert c["truncated"] is True and c["message"].endswith(TRUNCATION_MARKER) and c["pid"] == 99
        assert c["program"] == "\ufffd" * 256
        assert d["message"] == "multi\nline\n" and d["pid"] is None and d["level"] == "info"


class TestSegments:
    def test_runs_of_single_events_become_segments_in_order(self) -> None:
        """Runs of one kind are joined up to the event and byte limits; segments already made,
        other kinds and the order stay as they are."""
        from agent.pipeline.encode import segmented

        def ev(i: int, kind: str = "system_log") -> tuple[str, bytes, int]:
            return (kind, orjson.dumps({"id": f"e{i:03d}", "kind": kind}), 1)

        items = [ev(i) for i in range(10)] + [ev(10, "user_activity")] + [ev(i) for i in range(11, 14)]
        items.append(
            ("system_log", b",".join(orjson.dumps({"id": f"e{i:03d}", "kind": "system_log"}) for i in range(14, 17)), 3)
        )
        items.append(ev(17))
        r = Redactor()
        out = segmented(items, Prepared("s", r.redact_text, Filter(), r.changed_lines, 4, 10_000))
        assert [(k, n) for k, _, n in out] == [
            ("system_log", 4),
            ("system_log", 4),
            ("system_log", 2),
            ("user_activity", 1),
            ("system_log", 3),
            ("system_log", 3),
            ("system_log", 1),
        ]
        ids = [e["id"] for _, blob, _ in out for e in orjson.loads(b"[" + blob + b"]")]
        assert ids == [f"e{i:03d}" for i in range(18)]
        small = segmented(items[:10], Prepared("s", r.redact_text, Filter(), r.changed_lines, 100, 70))
        assert all(len(blob) <= 70 for _, blob, n in small if n > 1) and sum(n for _, _, n in small) == 10


class TestYearsInTheCollector:
    async def test_each_file_dated_from_its_own_mtime_and_bad_dates_counted(self, tmp_path: Path) -> None:
        """Two files read by one collector: each is dated from its own mtime (one last written in
        January, one now); impossible dates keep their text, take the line before's time and are
        counted; a CRLF file loses its CRs."""
        import time as _time

        year = _time.localtime().tm_year
        old = tmp_path / "old.log"
        old.write_bytes(
            b"Dec 20 10:00:00 h a[1]: one\r\nFeb 31 10:00:00 h a[1]: impossible\r\nDec 31 23:00:00 h a[1]: two\r\n"
        )
        jan = _time.mktime((year, 1, 4, 9, 0, 0, 0, 0, -1))
        os.utime(old, (jan, jan))
        new = tmp_path / "new.log"
        stamp = _time.strftime("%b %e %H:%M:%S", _time.localtime(_time.time() - 60)).encode()
        new.write_bytes(stamp + b" h b[2]: fresh\n")
        rec = EmitRecorder()
        cfg = SyslogConfig(enabled=True, paths=[str(old), str(new)], start_at="beginning")
        await run_once(SyslogFileCollector(cfg, rec.context(once=True)))
        by_msg = {e["data"]["message"]: e for e in rec.events}
        assert set(by_msg) == {"one", "impossible", "two", "fresh"}
        assert by_msg["one"]["ts"].startswith(f"{year - 1}-12-20") and by_msg["two"]["ts"].startswith(
            f"{year - 1}-12-31"
        )
        assert by_msg["impossible"]["ts"] == by_msg["one"]["ts"]
        assert by_msg["impossible"]["data"]["extra"] == {"raw_timestamp": "Feb 31 10:00:00"}
        assert by_msg["fresh"]["ts"].startswith(str(year)) or _time.localtime().tm_yday == 1
        assert rec.counts.get("syslog_bad_timestamp") == 1


def test_a_closed_file_leaves_no_parser_behind(tmp_path: Path) -> None:
    """A file's parser (with its deferred year scan) goes with the file: the scan holds the file
    weakly, or the weak-keyed table of parsers would keep every file ever followed."""
    import gc

    from collectors.syslog.tail import TailedFile

    path = tmp_path / "syslog"
    path.write_bytes(b"Nov 26 10:00:00 h app: x\n" * 10)
    c = SyslogFileCollector(SyslogConfig(enabled=True, paths=[str(path)]), EmitRecorder().context(once=True))
    t = TailedFile.open(str(path), 0)
    assert t is not None
    c._parser_of(t, os.fstat(t.fd))
    assert len(c._parsers) == 1
    t.close()
    del t
    gc.collect()
    assert len(c._parsers) == 0

"""The journald fast path (finished JSON built in the reader thread) against the slow one.

The slow path here is the plain mapping of the data contract: every field of an entry read
with ``_get_all`` and no size limit, turned into an event dict field by field and run through
the pipeline's chain. Journals hold what the fast path finds hardest: binary and non-UTF-8
messages, multi-line ones, a 100 KB one (kept whole, and cut at ``max_message_bytes``),
realistic entries of 20-26 fields, and hostile identifiers.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import LEVELS, JournaldConfig
from agent.events import stable_id
from agent.pipeline.encode import TRUNCATION_MARKER, Prepared
from agent.pipeline.processors import Enrich, Filter, Validate
from agent.pipeline.redact import Redactor
from collectors.journald import FACILITIES, JournaldCollector, rows
from tests.parts import JOURNAL_REMOTE, EmitRecorder, run_once, write_journal_file
from tests.support import need

BIG = ("line one of a big message password=hunter2\n" + "é" * 20_000 + "x" * 60_000).encode()
assert len(BIG) > 100_000


def _realistic(i: int) -> dict[str, Any]:
    """An entry with the fields journald records for a unit's syslog line (24 fields)."""
    return {
        "MESSAGE": f"Accepted publickey for deploy from 10.0.0.{i} port {40000 + i} ssh2 seq={i}",
        "PRIORITY": str(i % 8), "SYSLOG_FACILITY": "4", "SYSLOG_IDENTIFIER": "sshd", "SYSLOG_PID": str(800 + i),
        "SYSLOG_TIMESTAMP": "Nov 26 21:22:36 ", "_PID": str(800 + i), "_UID": "0", "_GID": "0", "_COMM": "sshd",
        "_EXE": "/usr/sbin/sshd", "_CMDLINE": "sshd: deploy [priv]", "_CAP_EFFECTIVE": "1ffffffffff",
        "_SELINUX_CONTEXT": "unconfined\n", "_SYSTEMD_CGROUP": "/system.slice/ssh.service",
        "_SYSTEMD_UNIT": "ssh.service", "_SYSTEMD_SLICE": "system.slice",
        "_SYSTEMD_INVOCATION_ID": f"{i:032x}", "_TRANSPORT": "syslog", "_HOSTNAME": "web-01",
        "_MACHINE_ID": "5c2d1f0e8b7a4c3d9e6f1a2b3c4d5e6f", "_RUNTIME_SCOPE": "system",
        "_SOURCE_REALTIME_TIMESTAMP": str(1795728000000000 + i),
    }


ENTRIES: list[dict[str, Any]] = [
    *(_realistic(i) for i in range(12)),
    {"MESSAGE": b"binary\x00\x01\x1f\x7f \xff\xfe\xfd end", "SYSLOG_IDENTIFIER": "bin", "_PID": "7"},
    {"MESSAGE": "multi\nline\r\n\tmessage\nwith token: abc123\n", "SYSLOG_IDENTIFIER": "app", "PRIORITY": "3"},
    {"MESSAGE": BIG, "SYSLOG_IDENTIFIER": "big", "_PID": "9", "_HOSTNAME": "web-01"},
    {"MESSAGE": "caf\xe9 latin-1 and \x80\x81".encode("latin-1"), "_COMM": "latin", "SYSLOG_FACILITY": "23"},
    {"MESSAGE": "mixed \u2028 separators \x85 ☃ 로그인 password=비밀", "SYSLOG_IDENTIFIER": "utf"},
    {"MESSAGE": "", "SYSLOG_IDENTIFIER": b"\xff\xfe" * 200, "_PID": "0099", "PRIORITY": "9"},
    {"SYSLOG_IDENTIFIER": "nomessage", "_PID": "-1", "SYSLOG_FACILITY": "24"},
    {"MESSAGE": "quotes \" and \\ back", "SYSLOG_IDENTIFIER": "q\"u\\o", "_SYSTEMD_UNIT": "a\"b.service",
     "_PID": "99999999999", "PRIORITY": "0", "_UID": "1000"},
    {"MESSAGE": "Authorization: Bearer abcdefghijklmnopqrstuvwxyz", "_COMM": "curl", "SYSLOG_PID": "x1"},
]


def _slow(directory: Path, cfg: JournaldConfig, chain: list[Any]) -> list[dict[str, Any]]:
    """The events the data contract gives for every entry, through ``chain``; dropped ones left out."""
    from systemd import journal

    r = journal._Reader(0, str(directory))
    r.data_threshold = 0  # everything, whatever its size
    out: list[dict[str, Any]] = []
    max_bytes = cfg.max_message_bytes

    def name(value: bytes | None) -> str | None:
        return None if value is None else value.decode("utf-8", "replace")[:256]

    while r._next():
        d = r._get_all()
        pri = int(d["PRIORITY"]) if d.get("PRIORITY") in [str(i).encode() for i in range(8)] else 6
        if pri > LEVELS.index(cfg.min_level):
            continue
        raw = d.get("MESSAGE") or b""
        cut = len(raw) > max_bytes
        message = raw[:max_bytes].decode("utf-8", "replace") + (TRUNCATION_MARKER if cut else "")
        pid: int | None = None
        pid_b = d.get("_PID") or d.get("SYSLOG_PID")
        if pid_b is not None:
            try:
                pid = int(pid_b)
            except ValueError:
                pid = None
            if pid is not None and not 0 <= pid < 1 << 31:
                pid = None
        fac_b = d.get("SYSLOG_FACILITY")
        facility = FACILITIES[int(fac_b)] if fac_b in [str(i).encode() for i in range(24)] else None
        extra = {k: name(d.get(f)) for f, k in (("_SYSTEMD_UNIT", "unit"), ("_TRANSPORT", "transport"),
                                                ("_BOOT_ID", "boot_id"), ("_UID", "uid")) if d.get(f) is not None}
        data: dict[str, Any] = {
            "program": name(d.get("SYSLOG_IDENTIFIER") or d.get("_COMM")) or "unknown", "pid": pid,
            "facility": facility, "hostname": name(d.get("_HOSTNAME")), "source": cfg.directory,
            "extra": extra, "level": LEVELS[pri], "message": message,
        }
        if cut:
            data["truncated"] = True
        sec, usec = divmod(r._get_realtime(), 1_000_000)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{usec // 1000:03d}Z"
        ev: dict[str, Any] = {"id": stable_id("jd", r._get_cursor()), "kind": "system_log", "ts": ts, "data": data}
        for proc in chain:
            ev = proc(ev)
        out.append(ev)
    r.close()
    return out


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    need(os.access(JOURNAL_REMOTE, os.X_OK), "systemd-journal-remote (apt systemd-journal-remote)")
    write_journal_file(tmp_path / "j" / "a.journal", ENTRIES)
    return tmp_path / "j"


CASES = {
    "defaults": ({}, {}),
    "whole": ({"max_message_bytes": 200_000}, {}),
    "small": ({"max_message_bytes": 256, "min_level": "warning"}, {}),
    "custom": ({}, {"patterns": [r"seq=(?P<secret>\d+)", "line"]}),
    "no-builtin": ({}, {"builtin": False}),
}


def _use_reader(monkeypatch: pytest.MonkeyPatch, reader: str) -> None:
    """Make the collector read with ``reader``: ``formatter`` (the compiled reader finishing the
    common entries itself), ``compiled`` (compiled rows, the Python loop) or ``python``."""
    if reader == "python":
        monkeypatch.setenv(rows.ENV, "python")
    else:
        need(rows.compiled() is not None and rows.events() is not None,
             "the compiled journal reader (pip install -e . with gcc, libsystemd-dev)")
        monkeypatch.delenv(rows.ENV, raising=False)


def _prepared(r: Redactor, filt: Filter, reader: str) -> Prepared:
    """The pipeline settings a collector gets; with ``formatter``, as the agent's own chain gives
    them (the redactor's trigger words let the compiled formatter finish entries)."""
    if reader == "formatter":
        return Prepared("test", r.redact_text, filt, r.changed_lines, 5, 300_000, r.changed_texts,
                        r.trigger_words())
    return Prepared("test", r.redact_text, filt, r.changed_lines, 5, 300_000)


class TestJournaldFastPathEqualsSlowPath:
    @pytest.mark.parametrize("reader", ["formatter", "compiled", "python"])
    @pytest.mark.parametrize("case", list(CASES))
    async def test_same_events(self, journal: Path, case: str, reader: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """Each entry gives, on the fast path, the event the plain mapping plus the chain gives,
        with the compiled row reader and with the pure-Python one."""
        _use_reader(monkeypatch, reader)
        cfg_extra, redact = CASES[case]
        cfg = JournaldConfig(directory=str(journal), start_at="beginning", **cfg_extra)
        r = Redactor(**redact)
        filt = Filter(min_level=cfg.min_level)
        rec = EmitRecorder()
        rec.prepared_settings = _prepared(r, filt, reader)
        collector = JournaldCollector(cfg, rec.context(once=True))
        await run_once(collector)
        assert collector.row_reader == ("compiled" if reader == "formatter" else reader)
        if reader != "formatter" or redact.get("patterns"):  # it needs the redactor's trigger words
            assert collector.entries_formatted == 0
        expected = _slow(journal, cfg, [Enrich("test"), filt, r, Validate()])
        assert rec.prepared_calls and len(rec.events) == len(expected) > 0
        for got, want in zip(rec.events, expected, strict=True):
            assert got == want, (case, got["data"].get("program"), want["data"].get("program"))
        big = [e for e in rec.events if e["data"]["program"] == "big"]
        if case == "whole":
            assert big[0]["data"]["message"].endswith("x" * 1000) and "truncated" not in big[0]["data"]
        elif big:
            assert big[0]["data"]["truncated"] is True
        if redact.get("builtin", True):
            assert not any("hunter2" in e["data"]["message"] or "abcdefghijklmnop" in e["data"]["message"]
                           for e in rec.events)


DUPLICATES: list[dict[str, Any]] = [
    {"MESSAGE": ["first", "second"], "SYSLOG_IDENTIFIER": ["one", "two"], "_PID": ["5", "6"], "PRIORITY": "4"},
    {"MESSAGE": "x" * 5000, "SYSLOG_IDENTIFIER": "long", "_EXE": "/usr/bin/long", "_CMDLINE": "long --pass=s"},
]


def _all_rows(directory: Path, read: rows.RowReader, limit: int, max_bytes: int, threshold: int
              ) -> list[tuple[int, list[rows.Row], bool]]:
    """Every chunk ``read`` gives of the journal (its size, rows, and whether it hit the end),
    with the reader left on an unread entry between some chunks (``pending``)."""
    from systemd import journal

    r = journal._Reader(0, str(directory))
    r.data_threshold = threshold
    chunks = []
    pending = False
    try:
        while True:
            got, at_end = read(r, limit, max_bytes, 1000, pending)
            chunks.append((len(got), got, at_end))
            if at_end:
                return chunks
            # every other chunk, step onto the next entry first, as resuming past a gap does
            pending = len(chunks) % 2 == 1 and r._next()
    finally:
        r.close()


class TestCompiledRowReader:
    """The compiled reader gives exactly the Python reader's rows, and refuses what it cannot read."""

    @pytest.mark.parametrize(("limit", "max_bytes", "threshold"), [(2000, 1 << 22, 0), (3, 1 << 22, 65537),
                                                                  (50, 6000, 0), (1, 1, 128)])
    def test_same_rows(self, tmp_path: Path, limit: int, max_bytes: int, threshold: int) -> None:
        """Same rows, same chunk boundaries, same end, on binary, non-UTF-8, 100 KB, duplicated
        and missing fields, with the size threshold cutting values or not."""
        need(os.access(JOURNAL_REMOTE, os.X_OK), "systemd-journal-remote (apt systemd-journal-remote)")
        fast = rows.compiled()
        need(fast is not None, "the compiled journal reader (pip install -e . with gcc, libsystemd-dev)")
        assert fast is not None
        write_journal_file(tmp_path / "j" / "a.journal", [*ENTRIES, *DUPLICATES])
        want = _all_rows(tmp_path / "j", rows.python_rows, limit, max_bytes, threshold)
        got = _all_rows(tmp_path / "j", fast, limit, max_bytes, threshold)
        assert got == want
        flat = [row for _, chunk, _ in got for row in chunk]
        dup = flat[-2]
        assert dup[2 + rows.MESSAGE] == b"first" and dup[2 + rows.FIELDS.index("_PID")] == b"5"
        assert flat[-1][2 + rows.FIELDS.index("_EXE")] == b"/usr/bin/long"
        assert sum(n for n, _, _ in got) == len(ENTRIES) + len(DUPLICATES)

    def test_refuses_other_objects_and_a_closed_reader(self, tmp_path: Path) -> None:
        """Anything but a systemd-python _Reader is a TypeError (not a crash), a closed one a
        ValueError; the collector then reads with the Python reader and says why."""
        from systemd import journal

        fast = rows.compiled()
        need(fast is not None, "the compiled journal reader (pip install -e . with gcc, libsystemd-dev)")
        assert fast is not None
        for thing in (object(), "journal", journal.Reader, 42):
            with pytest.raises(TypeError):
                fast(thing, 10, 100, 10, False)
        (tmp_path / "j").mkdir()
        r = journal._Reader(0, str(tmp_path / "j"))
        r.close()
        with pytest.raises(ValueError):
            fast(r, 10, 100, 10, False)
        name, read, why = rows.choose(object())
        assert (name, read) == ("python", rows.python_rows) and why and "_Reader" in why


def _random_entries(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """Entries with every shape the formatter must finish exactly as Python does, or hand back:
    control characters, quotes, non-ASCII, trigger words, odd pids and levels, missing fields."""
    words = ["plain", "path=/x", '"quoted"', "back\\slash", "tab\there", "nl\nline", "\x01\x1f\x7f", "é",
             "password=s3cret", "api_key: k", "GET /api/v1", "curl/8", "--token t", "Nightly", "☃", "\u2028",
             "Accepted", "session opened for user root", "x" * 300]
    out: list[dict[str, Any]] = []
    plain = ["plain", '"quoted"', "back\\slash", "tab\there", "nl\nline", "\x01\x1f\x7f", "{json: [1]}", ""]
    for i in range(n):
        if rng.random() < 0.5:  # the common entry: a known program, an ASCII message, a plain pid
            out.append({"MESSAGE": " ".join(rng.choice(plain) for _ in range(rng.randrange(0, 5))) + f" #{i}",
                        "PRIORITY": rng.choice("012345677"), "SYSLOG_IDENTIFIER": rng.choice(["app", "we\"b"]),
                        "_PID": str(rng.choice([1, 42, 2**31 - 1, 2**31, 0])), "_SYSTEMD_UNIT": "app.service",
                        "_HOSTNAME": "web-01", "_TRANSPORT": "journal", "SYSLOG_FACILITY": "3"})
            continue
        e: dict[str, Any] = {"MESSAGE": " ".join(rng.choice(words) for _ in range(rng.randrange(0, 6))) + f" #{i}"}
        if rng.random() < 0.9:
            e["PRIORITY"] = rng.choice(["0", "3", "4", "6", "7", "8", "", "06", "x"])
        if rng.random() < 0.9:
            e["SYSLOG_IDENTIFIER"] = rng.choice(["app", "sshd", "sudo", "", "we\"ird", "é-prog", "cron"])
        if rng.random() < 0.5:
            e["_COMM"] = rng.choice(["app", "bash", "x"])
        for f, choices in (("_PID", ["1", "0099", "", " 5", "+3", "2147483648", "12345678901", "1_0", "x"]),
                           ("SYSLOG_PID", ["7", "", "abc"]), ("SYSLOG_FACILITY", ["3", "10", "23", "24", "x"]),
                           ("_SYSTEMD_UNIT", ["a.service", "b.service"]), ("_HOSTNAME", ["web-01", "db"]),
                           ("_TRANSPORT", ["journal", "syslog", "stdout"]), ("_UID", ["0", "1000"]),
                           ("_EXE", ["/usr/bin/app"]), ("_CMDLINE", ["app --password=x"])):
            if rng.random() < 0.6:
                e[f] = rng.choice(choices)
        out.append(e)
    return out


class TestCompiledFormatter:
    """The compiled formatter (``format.c``) against the Python loop, on many random entries."""

    @pytest.mark.parametrize("min_level", ["debug", "warning"])
    async def test_random_journal_same_events(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              min_level: str) -> None:
        need(os.access(JOURNAL_REMOTE, os.X_OK), "systemd-journal-remote (apt systemd-journal-remote)")
        # microseconds apart, so that seconds and milliseconds both roll over
        write_journal_file(tmp_path / "j" / "a.journal", _random_entries(random.Random(7), 6000),
                           start_usec=1795728000_999_000)
        results = {}
        for reader in ("formatter", "python"):
            _use_reader(monkeypatch, reader)
            cfg = JournaldConfig(directory=str(tmp_path / "j"), start_at="beginning", min_level=min_level,
                                 max_message_bytes=1024)
            r = Redactor()
            rec = EmitRecorder()
            rec.prepared_settings = _prepared(r, Filter(min_level="info"), reader)
            collector = JournaldCollector(cfg, rec.context(once=True))
            await run_once(collector)
            results[reader] = (rec.events, collector.entries_formatted)
        (fast, formatted), (slow, _) = results["formatter"], results["python"]
        assert len(fast) == len(slow) > 100
        for got, want in zip(fast, slow, strict=True):
            assert got == want
        # most of these entries are meant for the Python loop (odd, gated, non-ASCII, with secrets)
        # (the first chunk teaches it the fragments: from the second on it finishes the plain ones)
        assert formatted > len(fast) / 6, "the formatter should finish the plain entries"

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=400))
    def test_ids_hash_as_hashlib(self, data: bytes) -> None:
        """The event ids' BLAKE2b (blake2b.h) is hashlib's, across block boundaries."""
        import hashlib

        need(rows.events() is not None, "the compiled journal reader")
        from collectors.journald import _rows  # type: ignore[attr-defined]

        assert _rows.blake2b16(data) == hashlib.blake2b(data, digest_size=16).digest()

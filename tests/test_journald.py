"""The journald collector against real journal files (systemd-journal-remote) and a live journald."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from agent.config import JournaldConfig
from agent.events import stable_id
from agent.schema import validate_data
from collectors.journald import JournaldCollector, cursor_seqnum
from tests.parts import (
    JOURNAL_REMOTE,
    EmitRecorder,
    crash_then_run_again,
    run_once,
    until,
    write_journal_file,
)
from tests.support import need


@pytest.fixture
def journal_tools() -> None:
    need(os.access(JOURNAL_REMOTE, os.X_OK), "systemd-journal-remote (apt systemd-journal-remote)")
    try:
        import systemd.journal  # noqa: F401
    except ImportError:
        need(False, "systemd-python")


def _entries(n: int, start: int = 0, **extra: object) -> list[dict]:
    return [
        {
            "MESSAGE": f"seq={i} hello",
            "SYSLOG_IDENTIFIER": "app",
            "_PID": "4242",
            "PRIORITY": "6",
            "_HOSTNAME": "web-01",
            "_TRANSPORT": "journal",
            "_SYSTEMD_UNIT": "app.service",
            "SYSLOG_FACILITY": "3",
            **extra,
        }
        for i in range(start, start + n)
    ]


def _collector(rec: EmitRecorder, directory: Path, once: bool = True, derivers=None, **cfg) -> JournaldCollector:
    config = JournaldConfig(directory=str(directory), start_at=cfg.pop("start_at", "beginning"), **cfg)
    return JournaldCollector(config, rec.context(once=once, derivers=derivers))


class TestJournaldMapping:
    async def test_fields_mapped(self, tmp_path, journal_tools):
        """program, pid, level, message, ts, facility and extra come from the right fields."""
        write_journal_file(
            tmp_path / "j" / "a.journal",
            [
                {
                    "MESSAGE": "hello",
                    "SYSLOG_IDENTIFIER": "sshd",
                    "_COMM": "sshd-session",
                    "_PID": "812",
                    "PRIORITY": "3",
                    "SYSLOG_FACILITY": "4",
                    "_HOSTNAME": "web-01",
                    "_TRANSPORT": "syslog",
                    "_SYSTEMD_UNIT": "ssh.service",
                    "__REALTIME_TIMESTAMP": "1795728000123456",
                },
                {"MESSAGE": "no ident", "_COMM": "cron", "SYSLOG_PID": "9"},
                {"MESSAGE": "bare"},
            ],
        )
        rec = EmitRecorder()
        await run_once(_collector(rec, tmp_path / "j"))
        a, b, c = rec.events
        assert a["ts"] == "2026-11-26T21:20:00.123Z"
        assert a["data"]["program"] == "sshd" and a["data"]["pid"] == 812 and a["data"]["level"] == "error"
        assert a["data"]["message"] == "hello" and a["data"]["facility"] == "auth"
        assert a["data"]["hostname"] == "web-01"
        assert a["data"]["extra"] == {  # what the fields above do not already say
            "unit": "ssh.service",
            "transport": "syslog",
            "boot_id": "0123456789abcdef0123456789abcdef",
        }
        assert (b["data"]["program"], b["data"]["pid"], b["data"]["level"]) == ("cron", 9, "info")
        assert c["data"]["program"] == "unknown" and c["data"]["pid"] is None
        for e in rec.events:
            validate_data("system_log", e["data"])
            assert e["kind"] == "system_log"

    async def test_ids_derive_from_cursor(self, tmp_path, journal_tools):
        """The id is stable_id('jd', cursor), and the checkpoint is the last cursor."""
        write_journal_file(tmp_path / "j" / "a.journal", _entries(3))
        rec = EmitRecorder()
        await run_once(_collector(rec, tmp_path / "j"))
        from systemd import journal

        r = journal._Reader(0, str(tmp_path / "j"))
        r.seek_head()
        cursors = []
        while r._next():
            cursors.append(r._get_cursor())
        assert [e["id"] for e in rec.events] == [stable_id("jd", c) for c in cursors]
        assert rec.checkpoints[f"journald:{tmp_path / 'j'}"] == cursors[-1]

    async def test_binary_multiline_and_huge_messages(self, tmp_path, journal_tools):
        """Binary messages decode with replacement, multi-line ones stay whole, long ones are cut."""
        write_journal_file(
            tmp_path / "j" / "a.journal",
            [
                {"MESSAGE": b"bin\x00\xff\xfeok", "SYSLOG_IDENTIFIER": "b"},
                {"MESSAGE": "line1\nline2\n\ttab", "SYSLOG_IDENTIFIER": "m"},
                {"MESSAGE": "é" * 2000, "SYSLOG_IDENTIFIER": "big"},
                {"MESSAGE": "x" * 600, "SYSLOG_IDENTIFIER": "fits"},
            ],
        )
        rec = EmitRecorder()
        await run_once(_collector(rec, tmp_path / "j", max_message_bytes=1000))
        b, m, big, fits = (e["data"] for e in rec.events)
        assert b["message"] == "bin\x00\ufffd\ufffdok"
        assert m["message"] == "line1\nline2\n\ttab"
        assert big["truncated"] is True and big["message"].endswith("[truncated]")
        assert len(big["message"].split(" …")[0].encode()) <= 1000
        assert "truncated" not in fits and fits["message"] == "x" * 600
        assert rec.counts["journal_truncated"] == 1

    async def test_hostile_field_values(self, tmp_path, journal_tools):
        """Garbage PRIORITY/PID/FACILITY values and duplicated fields never break the mapping."""
        write_journal_file(
            tmp_path / "j" / "a.journal",
            [
                {
                    "MESSAGE": "a",
                    "PRIORITY": "99",
                    "_PID": "-1",
                    "SYSLOG_FACILITY": "x",
                    "SYSLOG_IDENTIFIER": b"\xff" * 500,
                },
                {"MESSAGE": "b", "PRIORITY": "", "_PID": "99999999999999999999", "SYSLOG_PID": "abc"},
            ],
        )
        rec = EmitRecorder()
        await run_once(_collector(rec, tmp_path / "j"))
        a, b = (e["data"] for e in rec.events)
        assert a["level"] == "info" and a["pid"] is None and a["facility"] is None
        assert len(a["program"]) == 256
        assert b["level"] == "info" and b["pid"] is None
        for d in (a, b):
            validate_data("system_log", d)

    async def test_filters(self, tmp_path, journal_tools):
        """Units/identifiers include, excludes and min_level select entries; the cursor still moves."""
        write_journal_file(
            tmp_path / "j" / "a.journal",
            [
                {"MESSAGE": "1", "SYSLOG_IDENTIFIER": "a", "_SYSTEMD_UNIT": "u1.service", "PRIORITY": "6"},
                {"MESSAGE": "2", "SYSLOG_IDENTIFIER": "b", "_SYSTEMD_UNIT": "u2.service", "PRIORITY": "3"},
                {"MESSAGE": "3", "SYSLOG_IDENTIFIER": "c", "_SYSTEMD_UNIT": "u3.service", "PRIORITY": "2"},
                {"MESSAGE": "4", "SYSLOG_IDENTIFIER": "d", "_SYSTEMD_UNIT": "u1.service", "PRIORITY": "7"},
            ],
        )
        rec = EmitRecorder()
        await run_once(_collector(rec, tmp_path / "j", units=["u1.service"], identifiers=["c"]))
        assert rec.messages() == ["1", "3", "4"]
        rec = EmitRecorder()
        await run_once(_collector(rec, tmp_path / "j", min_level="error", exclude_identifiers=["c"]))
        assert rec.messages() == ["2"]
        rec = EmitRecorder()
        await run_once(_collector(rec, tmp_path / "j", exclude_units=["u1.service"]))
        assert rec.messages() == ["2", "3"]
        assert cursor_seqnum(rec.checkpoints[f"journald:{tmp_path / 'j'}"])[1] == 4

    async def test_derivers_share_the_emit(self, tmp_path, journal_tools):
        """Derived events go out in the same emit (same checkpoint) as their line; a failing deriver
        is counted and does not stop collection."""
        write_journal_file(tmp_path / "j" / "a.journal", _entries(5))

        def derive(ev):
            return [{"kind": "user_activity", "ts": ev["ts"], "id": ev["id"] + "-d", "data": {}}]

        def broken(ev):
            raise RuntimeError("boom")

        rec = EmitRecorder()
        await run_once(_collector(rec, tmp_path / "j", derivers=[derive, broken]))
        for events, cp in rec.calls:
            logs = [e for e in events if e["kind"] == "system_log"]
            assert [e["id"] for e in events if e["kind"] == "user_activity"] == [e["id"] + "-d" for e in logs]
            assert cp is not None
        assert len(rec.messages()) == 5 and rec.counts["deriver_failed"] == 5

    async def test_missing_directory_in_once_mode(self, tmp_path, journal_tools):
        """A journal directory that does not exist is an error, counted, not a crash."""
        rec = EmitRecorder()
        await run_once(_collector(rec, tmp_path / "nope"))
        assert rec.events == [] and rec.counts["journal_open_failed"] == 1


class TestJournaldResume:
    async def test_runs_again_after_a_failed_emit(self, tmp_path, journal_tools):
        """The service runs a crashed collector again (after ``aclose``): it reads on from its
        last committed cursor, with nothing lost or repeated."""
        write_journal_file(tmp_path / "j" / "a.journal", _entries(5))
        rec = EmitRecorder()
        c = _collector(rec, tmp_path / "j")
        await crash_then_run_again(c, rec)
        assert [e["data"]["message"] for e in rec.events] == [f"seq={i} hello" for i in range(5)]

    async def test_saved_cursor_wins_and_nothing_repeats(self, tmp_path, journal_tools):
        """A second run from the saved cursor reads only new entries, even with start_at=end."""
        write_journal_file(tmp_path / "j" / "a.journal", _entries(10))
        rec = EmitRecorder()
        await run_once(_collector(rec, tmp_path / "j"))
        write_journal_file(tmp_path / "j" / "b.journal", _entries(5, 10), start_usec=int(2e15))
        rec2 = EmitRecorder(rec.checkpoints)
        await run_once(_collector(rec2, tmp_path / "j", start_at="end"))
        assert rec2.messages() == [f"seq={i} hello" for i in range(10, 15)]

    async def test_start_at_end_checkpoints_the_end(self, tmp_path, journal_tools):
        """start_at=end emits nothing old but saves the end, so later entries are not skipped."""
        write_journal_file(tmp_path / "j" / "a.journal", _entries(10))
        rec = EmitRecorder()
        await run_once(_collector(rec, tmp_path / "j", start_at="end"))
        assert rec.events == [] and rec.checkpoints
        write_journal_file(tmp_path / "j" / "b.journal", _entries(2, 10), start_usec=int(2e15))
        rec2 = EmitRecorder(rec.checkpoints)
        await run_once(_collector(rec2, tmp_path / "j", start_at="end"))
        assert rec2.messages() == ["seq=10 hello", "seq=11 hello"]

    async def test_vacuumed_cursor_resumes_after_it_with_gap(self, tmp_path, journal_tools):
        """A saved cursor whose file is gone resumes at the oldest later entry and reports the gap."""
        rec = EmitRecorder()
        write_journal_file(tmp_path / "j" / "a.journal", _entries(10))
        await run_once(_collector(rec, tmp_path / "j"))
        (tmp_path / "j" / "a.journal").unlink()
        write_journal_file(tmp_path / "j" / "b.journal", _entries(5, 10), start_usec=int(2e15))
        rec2 = EmitRecorder(rec.checkpoints)
        await run_once(_collector(rec2, tmp_path / "j"))
        assert rec2.messages() == [f"seq={i} hello" for i in range(10, 15)]
        assert rec2.counts["journal_gap"] == 1

    @pytest.mark.parametrize("cursor", ["garbage", "s=;i=;b=", "x" * 5000, "s=zz;i=1;b=0;m=0;t=0;x=0"])
    async def test_bad_saved_cursor(self, tmp_path, journal_tools, cursor):
        """A garbage saved cursor is reported and reading restarts at the oldest entry."""
        write_journal_file(tmp_path / "j" / "a.journal", _entries(3))
        rec = EmitRecorder({f"journald:{tmp_path / 'j'}": cursor})
        await run_once(_collector(rec, tmp_path / "j", start_at="end"))
        assert len(rec.messages()) == 3 and rec.counts["journal_gap"] == 1


class TestJournaldCatchUp:
    @pytest.mark.parametrize(("entries", "calls"), [(120, [120]), (30, [])])
    async def test_the_end_of_a_backlog_is_said_once(self, tmp_path, journal_tools, monkeypatch, entries, calls):
        """Reading to the end after more than a chunk tells the pipeline once (its last events
        then go without waiting for max_wait_ms); entries that fit in one chunk are a trickle,
        and the batch deadline stands."""
        import collectors.journald as jd_mod

        monkeypatch.setattr(jd_mod, "CHUNK_ENTRIES", 50)
        write_journal_file(tmp_path / "j" / "a.journal", _entries(entries))
        rec = EmitRecorder()
        await run_once(_collector(rec, tmp_path / "j"))
        assert len(rec.events) == entries and rec.caught_up_at == calls


class TestJournaldLive:
    async def test_follows_rotation_and_restart(self, tmp_path, journal_tools, jd):
        """Entries written across journalctl --rotate and a journald restart all arrive, once."""
        rec = EmitRecorder()
        c = _collector(rec, jd.journal_dir, once=False, identifiers=["live"])
        task = asyncio.create_task(c.run())
        try:
            jd.logger(*[f"seq={i}" for i in range(0, 50)], tag="live")
            await until(lambda: len(rec.messages()) >= 50, what="first 50")
            jd.rotate()
            jd.logger(*[f"seq={i}" for i in range(50, 100)], tag="live")
            await until(lambda: len(rec.messages()) >= 100, what="after rotate")
            jd.restart()
            jd.logger(*[f"seq={i}" for i in range(100, 150)], tag="live")
            await until(lambda: len(rec.messages()) >= 150, what="after restart")
            await asyncio.sleep(0)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await c.aclose()
        assert rec.messages() == [f"seq={i}" for i in range(150)]
        assert len({e["id"] for e in rec.events}) == 150

    async def test_event_loop_stays_responsive(self, tmp_path, journal_tools, jd):
        """While the reader waits for entries, the event loop keeps running other tasks."""
        rec = EmitRecorder()
        c = _collector(rec, jd.journal_dir, once=False)
        task = asyncio.create_task(c.run())
        try:
            ticks = 0
            for _ in range(20):
                await asyncio.sleep(0.01)
                ticks += 1
            assert ticks == 20
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await c.aclose()

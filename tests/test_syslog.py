"""The syslog-file collector on real files: rotation, truncation, identity, partial and bad lines."""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import time
from pathlib import Path

import orjson

from agent.config import SyslogConfig
from agent.schema import validate_data
from collectors.syslog.collector import SOURCE, SyslogFileCollector
from collectors.syslog.tail import line_id
from tests.parts import EmitRecorder, crash_then_run_again, run_once, until


def _lines(start: int, n: int, tag: str = "app") -> str:
    return "".join(f"2026-11-26T21:22:36.{i % 1000000:06d}+00:00 web-01 {tag}[7]: seq={i}\n"
                   for i in range(start, start + n))


def _append(path: Path, text: str | bytes) -> None:
    with open(path, "ab") as f:
        f.write(text.encode() if isinstance(text, str) else text)


def _collector(rec: EmitRecorder, paths: list[str], once: bool = True, **cfg) -> SyslogFileCollector:
    cfg.setdefault("start_at", "beginning")
    cfg.setdefault("poll_interval_s", 0.02)
    cfg.setdefault("glob_interval_s", 0.05)
    return SyslogFileCollector(SyslogConfig(enabled=True, paths=paths, **cfg), rec.context(once=once))


def _seqs(rec: EmitRecorder) -> list[int]:
    return [int(m.rsplit("seq=", 1)[1]) for m in rec.messages() if "seq=" in m]


class Running:
    """A collector task in the background, cancelled and closed on exit."""

    def __init__(self, collector: SyslogFileCollector) -> None:
        self.c = collector

    async def __aenter__(self) -> SyslogFileCollector:
        self.task = asyncio.create_task(self.c.run())
        return self.c

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.c.aclose()


class TestSyslogCatchUp:
    async def test_the_end_of_a_backlog_is_said_once_and_a_trickle_never(self, tmp_path, monkeypatch):
        """Reading a file's backlog (more than a chunk) to its end tells the pipeline once, so
        its last lines go without waiting for max_wait_ms; lines appended later, a few at a
        time, are a trickle and keep the batch deadline."""
        import collectors.syslog.collector as syslog_mod
        import collectors.syslog.tail as tail_mod

        monkeypatch.setattr(syslog_mod, "CHUNK_LINES", 50)
        monkeypatch.setattr(tail_mod, "READ_BYTES", 2048)  # a chunk is counted in reads of the file
        p = tmp_path / "syslog"
        p.write_text(_lines(0, 120))
        rec = EmitRecorder()
        async with Running(_collector(rec, [str(p)], once=False, max_line_bytes=1024)):
            await until(lambda: len(rec.events) == 120 and rec.caught_up_at, what="the backlog")
            _append(p, _lines(120, 3))
            await until(lambda: len(rec.events) == 123, what="a trickle")
            _append(p, _lines(123, 1))  # read after the trickle's turn of the loop has ended
            await until(lambda: len(rec.events) == 124, what="another")
        assert rec.caught_up_at == [120] and _seqs(rec) == list(range(124))


class TestSyslogFileReading:
    async def test_lines_parsed_with_ids_and_checkpoint(self, tmp_path):
        """Each line is one event with parsed fields, a file-identity id and a JSON checkpoint."""
        p = tmp_path / "syslog"
        p.write_text(_lines(0, 3))
        rec = EmitRecorder()
        await run_once(_collector(rec, [str(p)]))
        assert _seqs(rec) == [0, 1, 2]
        e = rec.events[0]
        validate_data("system_log", e["data"])
        assert (e["data"]["program"], e["data"]["pid"], e["data"]["source"]) == ("app", 7, str(p))
        st = orjson.loads(rec.checkpoints[SOURCE])["files"][0]
        assert st["off"] == p.stat().st_size and st["ino"] == p.stat().st_ino
        assert e["id"] == line_id(st["dev"], st["ino"], st["fp"], 0)

    async def test_runs_again_after_a_failed_emit(self, tmp_path):
        """The service runs a crashed collector again (after ``aclose``): it reads on from its
        last committed checkpoint, with nothing lost or repeated."""
        p = tmp_path / "syslog"
        p.write_text(_lines(0, 5))
        rec = EmitRecorder()
        c = _collector(rec, [str(p)])
        await crash_then_run_again(c, rec)
        assert _seqs(rec) == [0, 1, 2, 3, 4]

    async def test_resume_from_checkpoint(self, tmp_path):
        """A restart continues at the saved offset: nothing repeated, nothing skipped."""
        p = tmp_path / "syslog"
        p.write_text(_lines(0, 5))
        rec = EmitRecorder()
        await run_once(_collector(rec, [str(p)]))
        _append(p, _lines(5, 5))
        rec2 = EmitRecorder(rec.checkpoints)
        await run_once(_collector(rec2, [str(p)], start_at="end"))
        assert _seqs(rec2) == [5, 6, 7, 8, 9]

    async def test_start_at_end_and_new_files_from_start(self, tmp_path):
        """start_at=end skips what exists at first start; files appearing later are read whole."""
        (tmp_path / "a.log").write_text(_lines(0, 5))
        rec = EmitRecorder()
        async with Running(_collector(rec, [str(tmp_path / "*.log")], once=False, start_at="end")):
            await until(lambda: rec.checkpoints, what="first checkpoint")
            _append(tmp_path / "a.log", _lines(5, 2))
            (tmp_path / "b.log").write_text(_lines(100, 3))
            (tmp_path / "c.log.gz").write_bytes(gzip.compress(_lines(200, 3).encode()))
            await until(lambda: len(rec.messages()) >= 5, what="new lines")
        assert sorted(_seqs(rec)) == [5, 6, 100, 101, 102]

    async def test_over_long_line_truncated(self, tmp_path):
        """A line over max_line_bytes is cut with a marker and counted; its neighbours are whole."""
        p = tmp_path / "syslog"
        p.write_bytes(_lines(0, 1).encode() + b"x" * 3_000_000 + b"\n" + _lines(1, 1).encode())
        rec = EmitRecorder()
        await run_once(_collector(rec, [str(p)], max_line_bytes=1000))
        assert len(rec.events) == 3
        mid = rec.events[1]["data"]
        assert mid["truncated"] is True and mid["message"].endswith("[truncated]")
        assert len(mid["message"]) < 1100
        assert _seqs(rec) == [0, 1] and rec.counts["syslog_truncated"] == 1

    async def test_invalid_utf8_and_empty_lines(self, tmp_path):
        """Invalid UTF-8 is replaced and empty lines are kept as empty messages."""
        p = tmp_path / "syslog"
        p.write_bytes(b"bad \xff\xfe\xc3 bytes\n\n\x00\x1b\n")
        rec = EmitRecorder()
        await run_once(_collector(rec, [str(p)]))
        assert rec.messages() == ["bad \ufffd\ufffd\ufffd bytes", "", "\x00\x1b"]
        for e in rec.events:
            validate_data("system_log", e["data"])

    async def test_partial_line_waits_for_newline(self, tmp_path):
        """A last line without newline is held until completed (the writer is still active)."""
        p, marker = tmp_path / "a.log", tmp_path / "b.log"
        p.write_text("")
        marker.write_text("")
        rec = EmitRecorder()
        async with Running(_collector(rec, [str(p), str(marker)], once=False, partial_line_timeout_s=60)):
            _append(p, "first half ")
            _append(marker, "marker\n")
            await until(lambda: "marker" in rec.messages(), what="marker line")
            assert "first half " not in rec.messages()
            _append(p, "second half\n")
            await until(lambda: "first half second half" in rec.messages(), what="completed line")
        assert rec.messages().count("first half second half") == 1

    async def test_partial_line_emitted_after_timeout(self, tmp_path):
        """A partial last line of a file quiet for partial_line_timeout_s is emitted once."""
        p = tmp_path / "a.log"
        p.write_text("no newline at eof")
        old = time.time() - 10
        os.utime(p, (old, old))
        rec = EmitRecorder()
        async with Running(_collector(rec, [str(p)], once=False, partial_line_timeout_s=1)):
            await until(lambda: rec.messages(), what="partial line")
            await asyncio.sleep(0.1)
        assert rec.messages() == ["no newline at eof"]

    async def test_bad_checkpoint(self, tmp_path):
        """A garbage checkpoint is reported and the files are read as on a first start."""
        p = tmp_path / "syslog"
        p.write_text(_lines(0, 2))
        for bad in ["{", "[]", '{"files": [{"path": 1}]}', "x" * 100_000]:
            rec = EmitRecorder({SOURCE: bad})
            await run_once(_collector(rec, [str(p)]))
            assert _seqs(rec) == [0, 1] and rec.counts["syslog_gap"] == 1


class TestSyslogRotation:
    async def test_rename_rotation_reads_old_file_to_end(self, tmp_path):
        """After a rename the old file is read to its end (even lines written after the rename),
        then the new file from its start."""
        p = tmp_path / "syslog"
        p.write_text(_lines(0, 10))
        rec = EmitRecorder()
        async with Running(_collector(rec, [str(p)], once=False, partial_line_timeout_s=0.3)) as c:
            await until(lambda: len(rec.events) >= 10, what="first lines")
            os.rename(p, tmp_path / "syslog.1")
            _append(tmp_path / "syslog.1", _lines(10, 5))  # the writer has not reopened yet
            p.write_text(_lines(15, 5))
            await until(lambda: len(rec.events) >= 20, what="all lines")
            await until(lambda: not c.rotated, what="old file closed")
        assert sorted(_seqs(rec)) == list(range(20))
        assert _seqs(rec)[:15] == list(range(15))

    async def test_copytruncate_reads_the_copy_first(self, tmp_path):
        """Lines not yet read when a copytruncate happened are read from the copy, then the file from 0."""
        p = tmp_path / "syslog"
        p.write_text(_lines(0, 10))
        rec = EmitRecorder()
        await run_once(_collector(rec, [str(p)]))
        _append(p, _lines(10, 5))  # not read before the rotation
        shutil.copyfile(p, tmp_path / "syslog.1")
        os.truncate(p, 0)
        _append(p, _lines(15, 3))
        rec2 = EmitRecorder(rec.checkpoints)
        await run_once(_collector(rec2, [str(p)]))
        assert _seqs(rec2) == list(range(10, 18))

    async def test_copytruncate_while_running(self, tmp_path):
        """A file cut while followed (even after it grew past the old offset) restarts at 0."""
        p = tmp_path / "syslog"
        p.write_text(_lines(0, 10))
        rec = EmitRecorder()
        async with Running(_collector(rec, [str(p)], once=False)):
            await until(lambda: len(rec.events) >= 10, what="first lines")
            shutil.copyfile(p, tmp_path / "syslog.1")
            with open(p, "r+b") as f:
                f.truncate(0)
            _append(p, _lines(10, 30))  # longer than before: only the fingerprint tells
            await until(lambda: len(rec.events) >= 40, what="lines after truncation")
            await asyncio.sleep(0.1)
        assert _seqs(rec) == list(range(40))

    async def test_delete_and_recreate(self, tmp_path):
        """A deleted file is finished from the open descriptor; the re-created one is read from 0."""
        p = tmp_path / "syslog"
        p.write_text(_lines(0, 5))
        rec = EmitRecorder()
        async with Running(_collector(rec, [str(p)], once=False, partial_line_timeout_s=0.3)):
            await until(lambda: len(rec.events) >= 5, what="first lines")
            with open(p, "ab") as old:
                p.unlink()
                old.write(_lines(5, 3).encode())
            p.write_text(_lines(8, 4))
            await until(lambda: len(rec.events) >= 12, what="all lines")
            await asyncio.sleep(0.1)
        assert sorted(_seqs(rec)) == list(range(12))

    async def test_renamed_while_stopped(self, tmp_path):
        """A file renamed while the agent was stopped is found by inode and finished."""
        p = tmp_path / "syslog"
        p.write_text(_lines(0, 5))
        rec = EmitRecorder()
        await run_once(_collector(rec, [str(p)]))
        _append(p, _lines(5, 3))
        os.rename(p, tmp_path / "syslog.1")
        p.write_text(_lines(8, 2))
        rec2 = EmitRecorder(rec.checkpoints)
        await run_once(_collector(rec2, [str(p)]))
        assert _seqs(rec2) == list(range(5, 10))

    async def test_inode_reuse_caught_by_fingerprint(self, tmp_path):
        """A different file at the same path and inode (other first bytes) is read from 0."""
        p = tmp_path / "syslog"
        p.write_text(_lines(0, 5))
        rec = EmitRecorder()
        await run_once(_collector(rec, [str(p)]))
        with open(p, "r+b") as f:  # same inode, new content longer than the old offset
            f.write(_lines(1000, 10).encode())
        rec2 = EmitRecorder(rec.checkpoints)
        await run_once(_collector(rec2, [str(p)]))
        assert _seqs(rec2) == list(range(1000, 1010)) and rec2.counts["syslog_gap"] == 1

    async def test_hostile_paths(self, tmp_path):
        """Directories, FIFOs, unreadable and missing paths are skipped without error."""
        (tmp_path / "dir.log").mkdir()
        os.mkfifo(tmp_path / "fifo.log")
        (tmp_path / "ok.log").write_text(_lines(0, 1))
        rec = EmitRecorder()
        await run_once(_collector(rec, [str(tmp_path / "*.log"), str(tmp_path / "missing")]))
        assert _seqs(rec) == [0]

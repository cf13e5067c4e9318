"""The spool by concern: basics, acknowledgements, invariants (atomic checkpoints, cap), dead letters."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3

import orjson
import pytest

from agent.errors import SpoolFull
from agent.events import PRIORITY_AUDIT, PRIORITY_BULK
from agent.spool import NewBatch, Spool
from agent.typing import Checkpoint


def batch(name: str, prio: int = PRIORITY_BULK, size: int = 1000, kind: str = "system_log") -> NewBatch:
    body = orjson.dumps([{"x": "y" * (size - 20)}])
    return NewBatch(name, prio, 1, {kind: 1}, body)


class TestSpoolBasics:
    def test_append_pending_ack(self, tmp_path):
        """Batches come back in order and are gone once acknowledged."""
        s = Spool(tmp_path, 1 << 20)
        s.append([batch("b-00000001"), batch("b-00000002")])
        got = s.pending(10)
        assert [b.batch_id for b in got] == ["b-00000001", "b-00000002"]
        assert s.ack(got[0].seq) and not s.ack(got[0].seq)
        assert [b.batch_id for b in s.pending(10)] == ["b-00000002"]
        assert s.stats().batches == 1

    def test_survives_reopen(self, tmp_path):
        """Pending batches, checkpoints and byte counts survive closing and reopening."""
        s = Spool(tmp_path, 1 << 20)
        s.append([batch("b-00000001")], [Checkpoint("src", "42")])
        n = s.bytes
        s.close()
        s2 = Spool(tmp_path, 1 << 20)
        assert s2.bytes == n and s2.checkpoints() == {"src": "42"}
        assert len(s2.pending(10)) == 1

    def test_file_mode_and_wal(self, tmp_path):
        """The spool is private (0600) and in WAL mode."""
        s = Spool(tmp_path, 1 << 20)
        assert oct(os.stat(s.path).st_mode & 0o777) == oct(0o600)
        assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _crash_writer(path: str, n: int) -> None:
    s = Spool(path, 1 << 30)
    for i in range(n):
        s.append([batch(f"b-{i:08d}", size=5000)], [Checkpoint("src", str(i))])


class TestSpoolInvariants:
    def test_checkpoint_and_batch_commit_together_across_sigkill(self, tmp_path):
        """SIGKILL during a stream of appends: the checkpoint always names the last batch that exists."""
        ctx = multiprocessing.get_context("fork")
        for _ in range(3):
            p = ctx.Process(target=_crash_writer, args=(str(tmp_path), 100_000))
            p.start()
            # wait until it is writing, then kill it at an arbitrary point
            db_path = tmp_path / "spool.db"
            while not db_path.exists():
                pass
            while True:
                try:
                    c = sqlite3.connect(db_path)
                    n = c.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
                    c.close()
                except sqlite3.OperationalError:
                    continue
                if n > 50:
                    break
            os.kill(p.pid, signal.SIGKILL)
            p.join()
            s = Spool(tmp_path, 1 << 30)
            cp = int(s.checkpoints()["src"])
            last = max(int(b.batch_id[2:]) for b in s.pending(1_000_000))
            assert cp == last, "checkpoint and batches diverged"
            s.close()

    def test_bulk_never_evicts(self, tmp_path):
        """A bulk batch that does not fit raises SpoolFull and writes nothing."""
        s = Spool(tmp_path, 65536)
        s.append([batch(f"b-{i:08d}", size=20000) for i in range(3)])
        with pytest.raises(SpoolFull):
            s.append([batch("b-99999999", size=20000)], [Checkpoint("src", "1")])
        assert s.checkpoints() == {} and s.stats().batches == 3

    def test_audit_evicts_oldest_bulk(self, tmp_path):
        """An audit batch evicts the oldest bulk batches, just enough of them."""
        s = Spool(tmp_path, 65536)
        s.append([batch(f"b-{i:08d}", size=20000) for i in range(3)])
        ev = s.append([batch("a-00000001", PRIORITY_AUDIT, 20000, "command")])
        assert [e.batch_id for e in ev] == ["b-00000000"]
        assert [b.batch_id for b in s.pending(10)] == ["b-00000001", "b-00000002", "a-00000001"]
        assert s.bytes <= 65536

    def test_audit_never_evicts_audit(self, tmp_path):
        """When only audit data is left, more audit data gets SpoolFull."""
        s = Spool(tmp_path, 65536)
        s.append([batch(f"a-{i:08d}", PRIORITY_AUDIT, 20000, "command") for i in range(3)])
        with pytest.raises(SpoolFull):
            s.append([batch("a-99999999", PRIORITY_AUDIT, 20000, "command")])


class TestDeadLetters:
    def test_dead_letter_and_requeue(self, tmp_path):
        """A refused batch moves to dead letters with its reason and comes back on requeue."""
        s = Spool(tmp_path, 1 << 20)
        s.append([batch("b-00000001", PRIORITY_AUDIT, kind="command")])
        seq = s.pending(1)[0].seq
        assert s.dead_letter(seq, "HTTP 400: bad field", 400)
        assert s.stats().batches == 0 and s.bytes == 0
        d = s.dead_letters()
        assert d[0]["reason"] == "HTTP 400: bad field" and d[0]["status"] == 400
        assert s.requeue_dead() == 1
        again = s.pending(1)
        assert again[0].batch_id == "b-00000001" and again[0].priority == PRIORITY_AUDIT
        assert s.stats().dead_letters == 0

    def test_requeue_from_another_process_then_resync(self, tmp_path):
        """A requeue by another connection is counted once the running spool resyncs."""
        s = Spool(tmp_path, 1 << 20)
        s.append([batch("b-00000001")])
        s.dead_letter(s.pending(1)[0].seq, "x")
        other = Spool(tmp_path, 1 << 20)
        other.requeue_dead()
        s.resync()
        assert s.bytes == other.bytes > 0


class TestPackedBodies:
    def test_bodies_spooled_deflated_and_read_back(self, tmp_path):
        """A packed batch takes a fraction of the bytes (the cap counts those) and its JSON, its
        codec, length and CRC survive acknowledgement's neighbours, dead letters and requeue."""
        events = [{"id": f"e{i}", "message": f"Accepted publickey for deploy port {i}"} for i in range(500)]
        raw = orjson.dumps(events)
        s = Spool(tmp_path, 1 << 20)
        s.append([NewBatch("b-packed-1", PRIORITY_AUDIT, 500, {"command": 500}, raw).packed(1)])
        assert s.bytes < len(raw) / 4
        (got,) = s.pending(10)
        assert got.codec == "deflate" and got.raw_bytes == len(raw) and got.json() == raw
        assert s.dead_letter(got.seq, "refused")
        assert s.requeue_dead() == 1
        (again,) = s.pending(10)
        assert (again.codec, again.body, again.raw_bytes, again.crc) == (got.codec, got.body, got.raw_bytes, got.crc)

    def test_a_schema_1_spool_is_migrated_and_its_batches_kept(self, tmp_path):
        """A spool written before bodies were packed opens with its rows intact, read as JSON."""
        db = sqlite3.connect(tmp_path / Spool.FILENAME)
        db.executescript("""
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            INSERT INTO meta VALUES ('schema_version', '1');
            CREATE TABLE batches (seq INTEGER PRIMARY KEY AUTOINCREMENT, batch_id TEXT NOT NULL UNIQUE,
                priority INTEGER NOT NULL, created REAL NOT NULL, n_events INTEGER NOT NULL,
                bytes INTEGER NOT NULL, kinds TEXT NOT NULL, body BLOB NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT);
            CREATE TABLE dead_letters (seq INTEGER PRIMARY KEY AUTOINCREMENT, batch_id TEXT NOT NULL,
                created REAL NOT NULL, dead_at REAL NOT NULL, n_events INTEGER NOT NULL, bytes INTEGER NOT NULL,
                kinds TEXT NOT NULL, body BLOB NOT NULL, status INTEGER, reason TEXT NOT NULL);
            INSERT INTO batches (batch_id, priority, created, n_events, bytes, kinds, body)
                VALUES ('old-batch-1', 1, 0, 1, 12, '{"command": 1}', CAST('[{"id":"a"}]' AS BLOB));
        """)
        db.close()
        s = Spool(tmp_path, 1 << 20)
        (got,) = s.pending(10)
        assert (got.batch_id, got.codec, got.json()) == ("old-batch-1", "json", b'[{"id":"a"}]')
        assert s.meta("schema_version") == "2" and s.bytes == 12
        s.close()

    def test_a_newer_spool_is_refused(self, tmp_path):
        """An older agent does not read bodies it cannot know the form of."""
        s = Spool(tmp_path, 1 << 20)
        s.set_meta("schema_version", "99")
        s.close()
        with pytest.raises(RuntimeError, match="newer"):
            Spool(tmp_path, 1 << 20)

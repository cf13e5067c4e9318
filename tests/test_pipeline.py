"""The processor chain and the batcher, on a real SQLite spool."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from agent.config import parse_config
from agent.errors import SpoolFull
from agent.events import make_event, stable_id
from agent.pipeline.batcher import WRITE_AHEAD, Batcher
from agent.pipeline.processors import DropEvent, Enrich, Filter, build_chain
from agent.spool import Spool
from agent.typing import Checkpoint


def log_event(i: int, level: str = "info", msg: str = "hello") -> dict:
    return make_event("system_log", {"program": "p", "level": level, "pid": 1, "message": msg}, id=stable_id("t", i))


def run(coro):
    return asyncio.run(coro)


class TestProcessors:
    def test_enrich_sets_server_and_keeps_ids(self):
        """Enrich adds the server; a source's id is kept, a missing one is made."""
        e = Enrich("web-01")
        a = e(log_event(1))
        b = e(make_event("system_log", {"program": "p", "level": "info", "message": "m"}))
        assert a["server"] == "web-01" and a["id"] == stable_id("t", 1)
        assert b["id"].startswith("ev-")

    def test_filter(self):
        """Filter drops configured kinds and levels below the minimum."""
        f = Filter(["metrics"], "warning")
        with pytest.raises(DropEvent):
            f(make_event("metrics", {"cpu": {}, "memory": {}}))
        with pytest.raises(DropEvent):
            f(log_event(1, "info"))
        assert f(log_event(1, "error"))["data"]["level"] == "error"


class TestBatcher:
    def _batcher(self, tmp_path, **over):
        cfg = parse_config({"server": "s", "state_dir": str(tmp_path), **over})
        spool = Spool(tmp_path, cfg.spool.max_bytes)
        ex = ThreadPoolExecutor(1)
        seen: list[tuple[str, str, str]] = []
        b = Batcher(spool, ex, build_chain(cfg), max_events=cfg.batch.max_events, max_bytes=cfg.batch.max_bytes,
                    max_wait_ms=cfg.batch.max_wait_ms, on_event=lambda *a: seen.extend([a[:3]] * a[3]))
        return b, spool, ex, seen

    def test_batch_and_checkpoint_in_one_flush(self, tmp_path):
        """Events emitted with a checkpoint land in one batch row with the checkpoint."""
        async def main():
            b, spool, ex, _ = self._batcher(tmp_path)
            await b.emit([log_event(i) for i in range(10)], Checkpoint("jd", "cursor-10"))
            await b.flush()
            assert spool.checkpoints() == {"jd": "cursor-10"}
            rows = spool.pending(10)
            assert len(rows) == 1 and rows[0].n_events == 10 and rows[0].kinds == {"system_log": 10}
            await b.close()
            ex.shutdown()
        run(main())

    def test_caught_up_writes_the_lane_without_waiting_for_max_wait(self, tmp_path):
        """A source at the end of its backlog: the events it buffered are spooled with their
        checkpoint at once, though max_wait_ms is ten minutes; a lane with nothing buffered is
        left alone, and a flush already scheduled is not scheduled twice."""
        async def main():
            b, spool, ex, _ = self._batcher(tmp_path, batch={"max_events": 100, "max_wait_ms": 600_000})
            b.caught_up()  # nothing buffered: nothing to write
            assert not b.pull.flush_scheduled
            await b.emit([log_event(i) for i in range(250)], Checkpoint("jd", "cursor-250"))
            assert 0 < b.pull.nevents < 250 and spool.checkpoints() == {}  # full batches went behind
            b.caught_up()
            b.caught_up()
            async with asyncio.timeout(30):  # the timer would take ten minutes
                while b.pull.nevents or spool.checkpoints() != {"jd": "cursor-250"}:
                    await asyncio.sleep(0.01)
            assert sum(r.n_events for r in spool.pending(10)) == 250
            await b.close()
            ex.shutdown()
        run(main())

    def test_max_events_splits_batches(self, tmp_path):
        """batch.max_events bounds the events per batch."""
        async def main():
            b, spool, ex, _ = self._batcher(tmp_path, batch={"max_events": 7})
            await b.emit([log_event(i) for i in range(20)], None)
            await b.flush()
            assert [r.n_events for r in spool.pending(10)] == [7, 7, 6]
            await b.close()
            ex.shutdown()
        run(main())

    def test_collector_buffers_ahead_while_a_write_is_in_progress(self, tmp_path):
        """While the spool thread is busy the pull lane takes up to WRITE_AHEAD more full batches
        without making the collector wait; they are then written in order, checkpoint last."""
        async def main():
            b, spool, ex, _ = self._batcher(tmp_path, batch={"max_events": 10})
            busy = threading.Event()
            ex.submit(busy.wait)  # the spool thread is held up
            # one batch taken by the held-up write, then all but the last event of WRITE_AHEAD more
            n = 10 * (WRITE_AHEAD + 1) - 5
            try:
                async with asyncio.timeout(30):  # a wait for the held-up thread would never end
                    for i in range(0, n, 5):
                        await b.emit([log_event(j) for j in range(i, i + 5)], Checkpoint("f", str(i + 5)))
                assert spool.pending(100) == [] and b.pull.nevents == n - 10
            finally:
                busy.set()
            await b.flush()
            rows = spool.pending(100)
            assert [r.n_events for r in rows] == [10] * WRITE_AHEAD + [5]
            ids = [e["id"] for r in rows for e in orjson.loads(r.json())]
            assert ids == [stable_id("t", i) for i in range(n)] and spool.checkpoints() == {"f": str(n)}
            await b.close()
            ex.shutdown()
        run(main())

    def test_write_ahead_falls_back_to_single_batches_when_the_spool_is_full(self, tmp_path):
        """Batches written together that do not fit are written one at a time: the spool fills
        to its last batch, and the rest follow as room is made."""
        async def main():
            b, spool, ex, _ = self._batcher(tmp_path, batch={"max_events": 10})
            size = len(orjson.dumps([{**log_event(i), "server": "s"} for i in range(10)]))
            spool.max_bytes = 4 * size  # room for four batches
            loop = asyncio.get_running_loop()
            busy = threading.Event()
            ex.submit(busy.wait)
            n = 10 * (WRITE_AHEAD + 3)
            emitting = asyncio.ensure_future(b.emit([log_event(i) for i in range(n)], Checkpoint("f", str(n))))
            try:
                async with asyncio.timeout(30):
                    while b.pull.nevents < 10 * WRITE_AHEAD:  # buffered up to the write-ahead limit
                        await asyncio.sleep(0.01)
            finally:
                busy.set()
            shipped: list[str] = []
            async with asyncio.timeout(30):
                # one batch spooled, then four that do not fit beside it: one at a time, until full
                while len(await loop.run_in_executor(ex, spool.pending, 10)) < 4:
                    await asyncio.sleep(0.01)
                while len(shipped) < n:
                    rows = await loop.run_in_executor(ex, spool.pending, 1)
                    if not rows:
                        await asyncio.sleep(0.01)
                        continue
                    shipped += [e["id"] for e in orjson.loads(rows[0].json())]
                    await loop.run_in_executor(ex, spool.ack, rows[0].seq)
                    b.space_freed()
                await emitting
                await b.flush()
            assert shipped == [stable_id("t", i) for i in range(n)] and spool.checkpoints() == {"f": str(n)}
            await b.close()
            ex.shutdown()
        run(main())

    def test_invalid_collector_event_dead_lettered_neighbours_kept(self, tmp_path):
        """A collector's invalid event goes to dead letters with the reason; its neighbours are spooled."""
        async def main():
            b, spool, ex, seen = self._batcher(tmp_path)
            bad = make_event("system_log", {"program": "p", "level": "LOUD", "message": "m"}, id=stable_id("t", 99))
            await b.emit([log_event(1), bad, log_event(2)], Checkpoint("f", "3"))
            await b.flush()
            assert sum(r.n_events for r in spool.pending(10)) == 2
            dead = spool.dead_letters()
            assert len(dead) == 1 and "level" in dead[0]["reason"]
            assert ("system_log", "dead_lettered", "collector") in seen
            await b.close()
            ex.shutdown()
        run(main())

    def test_filtered_events_still_move_checkpoint(self, tmp_path):
        """When every event is filtered out, the checkpoint still commits (no re-reading forever)."""
        async def main():
            b, spool, ex, seen = self._batcher(tmp_path, filter={"min_level": "error"})
            await b.emit([log_event(i, "debug") for i in range(5)], Checkpoint("jd", "c5"))
            await b.flush()
            assert spool.checkpoints() == {"jd": "c5"} and spool.pending(10) == []
            assert seen.count(("system_log", "dropped", "level")) == 5
            await b.close()
            ex.shutdown()
        run(main())

    def test_push_busy_when_full(self, tmp_path):
        """A pushed event that cannot be spooled resolves its future with SpoolFull."""
        async def main():
            b, spool, ex, _ = self._batcher(tmp_path, spool={"max_bytes": 65536}, batch={"max_events": 20})
            futs = []
            for i in range(200):
                r = b.submit(log_event(i, msg=os.urandom(500).hex()))  # spooled deflated: no repeats
                assert not isinstance(r, str)
                futs.append(r[1])
                await asyncio.sleep(0)  # let scheduled flushes run, as the hook's reader does
            results = await asyncio.gather(*futs, return_exceptions=True)
            assert any(isinstance(x, SpoolFull) for x in results)
            assert any(x is None for x in results)
            await b.close()
            ex.shutdown()
        run(main())

    def test_redaction_applied_before_spool(self, tmp_path):
        """Secrets never reach the spool file."""
        async def main():
            b, spool, ex, _ = self._batcher(tmp_path)
            await b.emit([log_event(1, msg="mysql -pTopSecret1 db")], None)
            await b.flush()
            await b.close()
            ex.shutdown()
            return b"".join(r.json() for r in spool.pending(10))
        stored = run(main())
        raw = (tmp_path / "spool.db").read_bytes() + (tmp_path / "spool.db-wal").read_bytes()
        assert b"TopSecret1" not in raw and b"TopSecret1" not in stored and b"[REDACTED]" in stored


class TestPreparedPath:
    def _batcher(self, tmp_path):
        cfg = parse_config({"server": "web-01", "state_dir": str(tmp_path), "filter": {"min_level": "info"}})
        spool = Spool(tmp_path, cfg.spool.max_bytes)
        ex = ThreadPoolExecutor(1)
        b = Batcher(spool, ex, build_chain(cfg), max_events=1000, max_bytes=1 << 20, max_wait_ms=5)
        return b, spool, ex

    def test_prepared_settings(self, tmp_path):
        """prepared() hands collectors the server, the redaction and the filter of the config."""
        b, spool, ex = self._batcher(tmp_path)
        p = b.prepared()
        assert p.server == "web-01"
        assert p.redact("mysql -pS3cret") == "mysql -p[REDACTED]"
        assert p.accepts("system_log", "info") and not p.accepts("system_log", "debug")
        ex.shutdown()

    def test_finished_events_spooled_with_checkpoint(self, tmp_path):
        """Finished events are spooled as they are, with the checkpoint."""
        async def main():
            b, spool, ex = self._batcher(tmp_path)
            ev = {**log_event(1), "server": "web-01"}
            await b.emit_prepared([("system_log", orjson.dumps(ev), 1)], Checkpoint("f", "1"))
            await b.flush()
            rows = spool.pending(10)
            assert orjson.loads(rows[0].json()) == [ev] and spool.checkpoints() == {"f": "1"}
            await b.close()
            ex.shutdown()
        run(main())

    def test_a_bad_first_event_checks_them_all(self, tmp_path):
        """When the sampled event is invalid every event is checked; bad ones are dead-lettered."""
        async def main():
            b, spool, ex = self._batcher(tmp_path)
            bad = {**log_event(1, level="LOUD"), "server": "web-01"}
            good = {**log_event(2), "server": "web-01"}
            await b.emit_prepared([("system_log", orjson.dumps(bad), 1), ("system_log", b"{not json", 1),
                                   ("system_log", orjson.dumps(good), 1)], None)
            await b.flush()
            assert [e["id"] for r in spool.pending(10) for e in orjson.loads(r.json())] == [good["id"]]
            assert len(spool.dead_letters()) == 2
            await b.close()
            ex.shutdown()
        run(main())

"""Invariant 3: a full spool evicts bulk kinds before audit kinds, counts it, then answers busy."""

from __future__ import annotations

import json
import os
import sqlite3

from agent.hookclient import HookClient


def _pad(n: int = 300) -> str:
    """Text that does not compress (batches are spooled deflated)."""
    return os.urandom(n // 2).hex()


def _log(i: int) -> dict:
    return {"kind": "system_log", "data": {"program": "app", "level": "info", "pid": 1, "message": _pad() + str(i)}}


def _metric(i: int) -> dict:
    return {"kind": "metrics", "data": {"cpu": {"percent": 1.0, "i": i}, "memory": {"pad": _pad()}}}


def _audit(i: int) -> dict:
    return {
        "kind": "user_activity",
        "data": {"user": f"u{i}", "action": "login", "result": 200, "details": {"pad": _pad()}},
    }


class TestSpoolCap:
    def test_bulk_evicted_first_then_busy(self, agent_factory, receiver):
        """With the receiver away: bulk kinds fill the cap, audit events evict them, then pushes get busy."""
        receiver.stop()
        agent = agent_factory(receiver, spool={"max_bytes": 65536}, batch={"max_events": 20, "max_wait_ms": 10})
        agent.start()
        with HookClient(agent.socket) as c:
            bulk = c.request_many([_log(i) if i % 2 else _metric(i) for i in range(400)], window=20)
            audit = c.request_many([_audit(i) for i in range(400)], window=20)
        bulk_ok = [a for a in bulk if a["status"] == "ok"]
        assert bulk_ok and any(a["status"] == "busy" for a in bulk), "bulk kinds should fill the spool, then get busy"
        audit_ok = [a["id"] for a in audit if a["status"] == "ok"]
        audit_busy = [a for a in audit if a["status"] == "busy"]
        assert len(audit_ok) > len(bulk_ok) / 2, "audit events should have taken the room of bulk ones"
        assert audit_busy, "once only audit data remains, pushes must get busy"
        assert all("spool full" in a["reason"] for a in audit_busy)
        # all bulk data was evicted; all of it counted
        evicted = agent.metric("alpacon_agent_events_total", outcome="evicted")
        assert evicted == len(bulk_ok)
        assert agent.metric("alpacon_agent_events_total", outcome="evicted", kind="system_log") > 0
        assert agent.metric("alpacon_agent_events_total", outcome="evicted", kind="metrics") > 0
        assert "evicted a bulk batch" in agent.log_path.read_text()
        db = sqlite3.connect(agent.spool_path)
        kinds = [json.loads(k) for (k,) in db.execute("SELECT kinds FROM batches")]
        db.close()
        assert kinds and all(set(k) == {"user_activity"} for k in kinds)
        # every audit event answered ok is delivered once the backend is back
        receiver.start()
        agent.wait_drained(60)
        assert set(receiver.ids("user_activity")) == set(audit_ok)
        assert receiver.ids("system_log") == [] and receiver.ids("metrics") == []

    def test_pull_sources_pause_instead_of_losing(self, tmp_path):
        """A collector's emit waits while the spool is full and completes once room is made."""
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        from agent.events import make_event, stable_id
        from agent.pipeline.batcher import Batcher
        from agent.spool import Spool
        from agent.typing import Checkpoint

        async def main() -> None:
            spool = Spool(tmp_path, max_bytes=65536)
            ex = ThreadPoolExecutor(1)
            b = Batcher(spool, ex, [], max_events=50, max_bytes=1 << 20, max_wait_ms=5)
            evs = [
                make_event("system_log", {"program": "p", "level": "info", "message": _pad(500)}, id=stable_id("t", i))
                for i in range(400)
            ]
            for e in evs:
                e["server"] = "s"
            task = asyncio.ensure_future(b.emit(evs, Checkpoint("src", "400")))
            await asyncio.sleep(0.3)
            assert not task.done(), "emit should wait while the spool is full"
            assert spool.checkpoints() == {}, "no checkpoint may pass events that are not spooled"

            async def emit_then_flush() -> None:
                await task
                await b.flush()

            done = asyncio.ensure_future(emit_then_flush())
            while not done.done():  # play the shipper: acknowledge what is spooled, make room
                for batch in spool.pending(100):
                    spool.ack(batch.seq)
                b.space_freed()
                await asyncio.sleep(0.01)
            await done
            assert spool.checkpoints() == {"src": "400"}
            await b.close()
            ex.shutdown()

        asyncio.run(main())

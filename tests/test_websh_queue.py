"""The recorder's durable queue and its delivery thread, against a real Unix-socket hook server."""

from __future__ import annotations

import os
import socketserver
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from collectors.websh.queue import Deliverer, DurableQueue, flush_queue
from tests.support import wait_until


class HookServer:
    """A real hook API server on a Unix socket: answers each line with ``answer(msg)``, keeps all."""

    def __init__(self, path: Path, answer: Callable[[dict[str, Any]], str] | None = None) -> None:
        self.path = path
        self.answer = answer or (lambda msg: "ok")
        self.received: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._lock = threading.Lock()

    def start(self) -> HookServer:
        if self.path.exists():
            self.path.unlink()
        owner = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    msg = orjson.loads(line)
                    status = owner.answer(msg)
                    with owner._lock:
                        owner.raw.append(line)
                        if status == "ok":
                            owner.received.append(msg)
                    reply = {"status": status, "id": msg.get("id"), "ref": msg.get("ref")}
                    if status != "ok":
                        reply["reason"] = f"test server says {status}"
                    self.wfile.write(orjson.dumps(reply) + b"\n")

        server = socketserver.ThreadingUnixStreamServer(str(self.path), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.path.exists():
            self.path.unlink()

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m["data"] for m in self.received if m["kind"] == kind]

    def ids(self) -> list[str]:
        with self._lock:
            return [m["id"] for m in self.received]


@pytest.fixture
def hook_server(tmp_path: Path) -> Iterator[HookServer]:
    s = HookServer(tmp_path / "hook.sock").start()
    yield s
    s.stop()


def _msg(i: int, kind: str = "websh_command", size: int = 10) -> dict[str, Any]:
    return {"op": "emit", "kind": kind, "id": f"ws-{i}", "data": {"seq": i, "command": "x" * size}}


class TestDurableQueue:
    def test_put_peek_delete_in_order(self, tmp_path: Path) -> None:
        """Messages come back oldest first and are gone once deleted."""
        q = DurableQueue(tmp_path / "q.db")
        q.put([_msg(i) for i in range(5)])
        rows = q.peek(3)
        assert [m["id"] for _, m in rows] == ["ws-0", "ws-1", "ws-2"]
        q.delete([s for s, _ in rows])
        assert [m["id"] for _, m in q.peek()] == ["ws-3", "ws-4"]

    def test_same_id_stored_once(self, tmp_path: Path) -> None:
        """A message queued twice under one id is kept once."""
        q = DurableQueue(tmp_path / "q.db")
        q.put([_msg(1), _msg(1)])
        q.put([_msg(1)])
        assert len(q) == 1

    def test_survives_reopen(self, tmp_path: Path) -> None:
        """What was queued is still there for the next recorder."""
        q = DurableQueue(tmp_path / "q.db")
        q.put([_msg(7)])
        q.close()
        assert [m["id"] for _, m in DurableQueue(tmp_path / "q.db").peek()] == ["ws-7"]

    def test_file_is_private(self, tmp_path: Path) -> None:
        """The queue file is readable by its owner only."""
        DurableQueue(tmp_path / "q.db")
        assert (tmp_path / "q.db").stat().st_mode & 0o077 == 0

    def test_cap_evicts_commands_before_sessions(self, tmp_path: Path) -> None:
        """Over the byte cap, the oldest commands go first and session records stay; counted."""
        q = DurableQueue(tmp_path / "q.db", max_bytes=4000)
        q.put([_msg(0, "websh_session", 100)])
        for i in range(1, 40):
            q.put([_msg(i, size=200)])
        ids = [m["id"] for _, m in q.peek(1000)]
        assert "ws-0" in ids and "ws-39" in ids and "ws-1" not in ids
        assert q.counter("evicted") > 0
        assert sum(len(orjson.dumps(m)) for _, m in q.peek(1000)) <= 4000

    def test_dead_table_is_bounded(self, tmp_path: Path) -> None:
        """Refused messages kept for inspection stay under the byte cap too (newest kept; counted)."""
        q = DurableQueue(tmp_path / "q.db", max_bytes=4000)
        for i in range(200):
            q.put([_msg(i, size=200)])
            q.bury(q.peek(1)[0][0], "refused")
        dead = q._db.execute("SELECT id, length(body) FROM dead").fetchall()
        assert sum(n for _, n in dead) <= 4000
        assert "ws-199" in {i for i, _ in dead}
        assert q.counter("dead") == 200 and q.counter("dead_evicted") == 200 - len(dead)

    def test_garbage_file_is_an_error_not_a_crash_of_the_session(self, tmp_path: Path) -> None:
        """A queue file that is not SQLite makes the deliverer keep records in memory."""
        bad = tmp_path / "q.db"
        bad.write_bytes(os.urandom(4096))
        with pytest.raises(sqlite3.DatabaseError):
            DurableQueue(bad)
        d = Deliverer(bad, str(tmp_path / "none.sock"))
        d.start()
        d.submit(_msg(1))
        d.stop(0.2)
        assert d.queue_error and "q.db" in d.queue_error and d.left == 1


class TestDeliverer:
    def test_delivers_and_empties_the_queue(self, tmp_path: Path, hook_server: HookServer) -> None:
        """Submitted messages reach the agent in order and leave the queue."""
        d = Deliverer(tmp_path / "q.db", str(hook_server.path))
        d.start()
        for i in range(300):
            d.submit(_msg(i))
        d.stop(10)
        assert hook_server.ids() == [f"ws-{i}" for i in range(300)]
        assert d.left == 0 and len(DurableQueue(tmp_path / "q.db")) == 0

    def test_agent_down_then_back(self, tmp_path: Path) -> None:
        """With no agent, messages wait; once it is up they all arrive, once each."""
        server = HookServer(tmp_path / "hook.sock")
        d = Deliverer(tmp_path / "q.db", str(server.path), backoff_initial_s=0.05, backoff_max_s=0.2)
        d.start()
        for i in range(5):
            d.submit(_msg(i))
        wait_until(lambda: d.failures >= 2, 10, what="delivery failures while down")
        server.start()
        try:
            wait_until(lambda: len(server.ids()) == 5, 10, what="delivery after restart")
            d.stop(2)
            assert server.ids() == [f"ws-{i}" for i in range(5)]
        finally:
            server.stop()

    def test_busy_is_retried(self, tmp_path: Path) -> None:
        """A busy answer is retried until the agent takes the message."""
        calls = {"n": 0}

        def answer(msg: dict[str, Any]) -> str:
            calls["n"] += 1
            return "busy" if calls["n"] <= 3 else "ok"

        server = HookServer(tmp_path / "hook.sock", answer).start()
        try:
            d = Deliverer(tmp_path / "q.db", str(server.path), backoff_initial_s=0.02, backoff_max_s=0.05)
            d.start()
            d.submit(_msg(1))
            wait_until(lambda: server.ids() == ["ws-1"], 10, what="delivery after busy answers")
            d.stop(1)
            assert d.failures >= 3 and d.left == 0
        finally:
            server.stop()

    def test_invalid_goes_to_dead_table(self, tmp_path: Path) -> None:
        """A message the agent refuses as invalid is parked with the reason, not retried forever."""
        server = HookServer(tmp_path / "hook.sock", lambda m: "invalid" if m["id"] == "ws-1" else "ok").start()
        try:
            d = Deliverer(tmp_path / "q.db", str(server.path))
            d.start()
            for i in range(3):
                d.submit(_msg(i))
            d.stop(5)
            assert server.ids() == ["ws-0", "ws-2"]
            q = DurableQueue(tmp_path / "q.db")
            assert len(q) == 0 and q.counter("dead") == 1
        finally:
            server.stop()

    def test_stop_is_bounded_when_agent_is_down(self, tmp_path: Path) -> None:
        """Stopping with the agent down returns within the flush timeout, leaving the queue."""
        import time

        d = Deliverer(tmp_path / "q.db", str(tmp_path / "nobody.sock"), backoff_initial_s=0.05)
        d.start()
        d.submit(_msg(1))
        t0 = time.monotonic()
        d.stop(0.5)
        assert time.monotonic() - t0 < 3
        assert d.left == 1

    def test_flush_queue_delivers_leftovers(self, tmp_path: Path, hook_server: HookServer) -> None:
        """What an earlier run left queued is delivered by flush_queue."""
        q = DurableQueue(tmp_path / "q.db")
        q.put([_msg(1), _msg(2)])
        q.close()
        assert flush_queue(tmp_path / "q.db", str(hook_server.path), 5) == 0
        assert hook_server.ids() == ["ws-1", "ws-2"]

    def test_agent_that_hangs_up_mid_answer(self, tmp_path: Path) -> None:
        """A connection closed without answers counts as a failure; nothing is lost."""
        path = tmp_path / "hang.sock"

        class Hangup(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.rfile.readline()

        srv = socketserver.ThreadingUnixStreamServer(str(path), Hangup)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            d = Deliverer(tmp_path / "q.db", str(path), backoff_initial_s=0.02)
            d.start()
            d.submit(_msg(1))
            wait_until(lambda: d.failures >= 1, 10, what="a failure")
            d.stop(0.2)
            assert d.left == 1
        finally:
            srv.shutdown()
            srv.server_close()

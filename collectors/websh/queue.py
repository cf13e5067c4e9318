"""The recorder's small durable queue: hook messages wait here until the agent has taken them.

:class:`DurableQueue` is a SQLite file (WAL) bounded in bytes; when full, the oldest command
records go first (session open/close records are kept), and each eviction is counted.
:class:`Deliverer` is the background thread that owns the queue: it stores what the recorder
hands it (never blocking the terminal), sends the queued messages to the agent's hook socket,
deletes what the agent answered ``ok``, parks what it refused as ``invalid`` in a dead table
with the reason, and retries everything else with exponential backoff and jitter.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from tenacity import RetryCallState, wait_random_exponential

from agent.errors import DeliveryRefused, HookClientError
from agent.hookclient import HookClient

DEFAULT_MAX_BYTES = 32 * 1024 * 1024
SEND_BATCH = 200

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS dead (
    id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class DurableQueue:
    """Hook messages (``{"op": "emit", "id": …}``) in a SQLite file, oldest first."""

    def __init__(self, path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
        self._db = sqlite3.connect(str(path), timeout=10.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def put(self, messages: list[dict[str, Any]]) -> None:
        """Store messages (a message already queued under its id is stored once)."""
        rows = []
        for msg in messages:
            body = orjson.dumps(msg)
            rows.append((msg["id"], msg.get("kind", ""), len(body), body))
        with self._tx():
            self._db.executemany("INSERT OR IGNORE INTO outbox (id, kind, size, body) VALUES (?,?,?,?)", rows)
            self._enforce_cap()

    def _enforce_cap(self) -> None:
        total = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0]
        if total <= self.max_bytes:
            return
        evicted = 0
        for kind in ("websh_command", None):  # commands first; session records only as a last resort
            where = "WHERE kind = 'websh_command'" if kind else ""
            for seq, size in self._db.execute(f"SELECT seq, size FROM outbox {where} ORDER BY seq").fetchall():
                if total <= self.max_bytes:
                    break
                self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
                total -= size
                evicted += 1
        self._bump("evicted", evicted)

    def _bump(self, name: str, n: int) -> None:
        if n:
            self._db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (name, n),
            )

    def peek(self, limit: int = SEND_BATCH) -> list[tuple[int, dict[str, Any]]]:
        """The oldest ``limit`` messages with their row numbers."""
        cur = self._db.execute("SELECT seq, body FROM outbox ORDER BY seq LIMIT ?", (limit,))
        return [(seq, orjson.loads(body)) for seq, body in cur.fetchall()]

    def delete(self, seqs: list[int]) -> None:
        """Forget delivered messages."""
        if seqs:
            with self._tx():
                self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

    def bury(self, seq: int, reason: str) -> None:
        """Move a message the agent refused for good to the dead table, with the reason."""
        with self._tx():
            row = self._db.execute("SELECT id, body FROM outbox WHERE seq = ?", (seq,)).fetchone()
            if row is not None:
                self._db.execute("INSERT OR REPLACE INTO dead (id, reason, body) VALUES (?,?,?)", (row[0], reason, row[1]))
                self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
                self._bump("dead", 1)
                self._cap_dead()

    def _cap_dead(self) -> None:
        """Refused messages are kept for inspection within the same byte cap, newest first."""
        kept, drop = 0, []
        for rowid, size in self._db.execute("SELECT rowid, length(body) FROM dead ORDER BY rowid DESC"):
            kept += size
            if kept > self.max_bytes:
                drop.append((rowid,))
        if drop:
            self._db.executemany("DELETE FROM dead WHERE rowid = ?", drop)
            self._bump("dead_evicted", len(drop))

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _tx(self) -> _Tx:
        return _Tx(self._db)


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


class Deliverer(threading.Thread):
    """Owns a :class:`DurableQueue`: stores submitted messages and delivers them to the agent."""

    def __init__(
        self,
        queue_path: str | os.PathLike[str],
        socket_path: str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
        timeout_s: float = 5.0,
    ) -> None:
        super().__init__(name="websh-delivery", daemon=True)
        self.queue_path = queue_path
        self.socket_path = socket_path
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._wait = wait_random_exponential(multiplier=backoff_initial_s, max=backoff_max_s)
        self._inbox: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop_at: float | None = None
        self._client: HookClient | None = None
        self.failures = 0
        self.delivered = 0
        self.error: str | None = None
        self.queue_error: str | None = None
        self.left = 0

    def submit(self, msg: dict[str, Any]) -> None:
        """Hand a message over; returns at once."""
        self._inbox.put(msg)
        self._wake.set()

    def stop(self, flush_timeout_s: float) -> None:
        """Store everything submitted, try to deliver for up to ``flush_timeout_s``, then end."""
        self._stop_at = time.monotonic() + flush_timeout_s
        self._wake.set()
        self.join()

    def run(self) -> None:
        try:
            q = DurableQueue(self.queue_path, self.max_bytes)
        except (OSError, sqlite3.Error) as exc:
            # never let a queue problem reach the user's terminal: keep records in memory
            self.queue_error = f"queue {self.queue_path}: {exc}"
            q = DurableQueue(":memory:", self.max_bytes)
        attempt = 0
        try:
            while True:
                self._store(q)
                failed = False
                more = False
                try:
                    more = self._deliver(q)
                    attempt = 0
                except DeliveryRefused as exc:
                    self.error = str(exc)
                    self.failures += 1
                    attempt += 1
                    failed = True
                    self._disconnect()
                if self._stop_at is not None:
                    self._store(q)
                    if (not failed and not len(q)) or time.monotonic() >= self._stop_at:
                        break
                if failed:
                    self._sleep(q, self._backoff(attempt))
                elif not more:
                    self._wake.wait(timeout=5.0)
                    self._wake.clear()
        finally:
            self._store(q)
            self.left = len(q)
            self._disconnect()
            q.close()

    def _backoff(self, attempt: int) -> float:
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]  # the wait reads attempt_number only
        state.attempt_number = attempt
        delay = float(self._wait(state))
        if self._stop_at is not None:
            delay = min(delay, max(0.0, self._stop_at - time.monotonic()))
        return delay

    def _sleep(self, q: DurableQueue, seconds: float) -> None:
        """Wait out a backoff, storing whatever is submitted meanwhile; a stop cuts it short."""
        deadline = time.monotonic() + seconds
        while self._stop_at is None or time.monotonic() < self._stop_at:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._wake.wait(timeout=left):
                self._wake.clear()
                self._store(q)
                return  # something new (or a stop): try the agent again now

    def _store(self, q: DurableQueue) -> None:
        batch: list[dict[str, Any]] = []
        while True:
            try:
                batch.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        if batch:
            q.put(batch)

    def _disconnect(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _deliver(self, q: DurableQueue) -> bool:
        """Send one batch; True when more may be waiting."""
        rows = q.peek(SEND_BATCH)
        if not rows:
            return False
        if self._client is None:
            try:
                self._client = HookClient(self.socket_path, timeout=self.timeout_s).connect()
            except HookClientError as exc:
                raise DeliveryRefused(str(exc)) from exc
        try:
            answers = self._client.request_many([msg for _, msg in rows])
        except (HookClientError, OSError, ValueError) as exc:
            raise DeliveryRefused(f"hook socket: {exc}") from exc
        done: list[int] = []
        refused: str | None = None
        for (seq, _), answer in zip(rows, answers, strict=False):
            status = answer.get("status")
            if status == "ok":
                done.append(seq)
            elif status == "invalid":
                q.bury(seq, str(answer.get("reason", "invalid")))
            else:
                refused = f"agent answered {status}: {answer.get('reason', '')}"
                break
        q.delete(done)
        self.delivered += len(done)
        if refused is not None:
            raise DeliveryRefused(refused)
        return len(rows) == SEND_BATCH


def flush_queue(queue_path: str | os.PathLike[str], socket_path: str, timeout_s: float) -> int:
    """Deliver what an earlier recorder left queued; the number of messages still queued."""
    d = Deliverer(queue_path, socket_path)
    d.start()
    d.stop(timeout_s)
    return d.left

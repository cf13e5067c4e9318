"""The durable spool: SQLite in WAL mode holding batches, source checkpoints and dead letters.

A batch row and the checkpoints of the sources whose events it holds commit in one
transaction (invariant 1). The spool keeps a byte cap (invariant 3): bulk batches
(system_log, metrics) are evicted, oldest first, to make room for audit batches; when no
room can be made, :class:`~agent.errors.SpoolFull` is raised and nothing is written.

All methods are synchronous and must be called from one thread (the service runs them on
a single-thread executor); the byte total is tracked in memory.

At start the file is checked (agent.spool_recovery): a corrupt spool is moved aside, what can
be read of it is copied into a fresh one, and ``Spool.recovery`` says what happened.

``synchronous`` says what a commit promises. ``normal``: it survives a crash of the agent
(kill -9, OOM); a power loss or kernel crash may take the last seconds of commits back (the
file stays consistent, pull sources re-read from their committed positions, but a producer's
``ok`` may be lost). ``full``: additionally every commit answered to a producer (:meth:`durable`)
is on disk before the answer — a group-committed fsync (agent.spool_sync) — so ``ok`` survives
power loss too.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable
from concurrent.futures import Future
from contextlib import closing
from pathlib import Path
from typing import Any

from agent import spool_recovery
from agent.errors import SpoolFull
from agent.events import PRIORITY_AUDIT, PRIORITY_BULK
from agent.spool_sync import WalSync
from agent.spool_types import Eviction, NewBatch, SpoolBatch, SpoolStats
from agent.typing import Checkpoint

__all__ = ["Eviction", "NewBatch", "Spool", "SpoolBatch", "SpoolStats"]


SCHEMA_VERSION = 2
#: columns added since schema 1 (to both body tables, by ``_migrate``, also in a new file): a
#: body's stored form (agent.wire.Packed)
_BODY_COLUMNS = (("codec", "TEXT NOT NULL DEFAULT 'json'"), ("raw_bytes", "INTEGER NOT NULL DEFAULT 0"),
                 ("crc", "INTEGER NOT NULL DEFAULT 0"))

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id TEXT NOT NULL UNIQUE,
    priority INTEGER NOT NULL,
    created REAL NOT NULL,
    n_events INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    kinds TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS batches_priority ON batches (priority, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
    source TEXT PRIMARY KEY,
    position TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id TEXT NOT NULL,
    created REAL NOT NULL,
    dead_at REAL NOT NULL,
    n_events INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    kinds TEXT NOT NULL,
    body BLOB NOT NULL,
    status INTEGER,
    reason TEXT NOT NULL
);
"""


_PENDING_COLS = "batch_id, priority, created, n_events, kinds, body, attempts, codec, raw_bytes, crc"


def _pending_batch(r: tuple[Any, ...]) -> SpoolBatch:
    if not (isinstance(r[1], str) and isinstance(r[8], str) and isinstance(r[6], bytes)):
        raise TypeError(f"batch {r[0]}: a column has the wrong type")
    return SpoolBatch(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7], r[8], r[9], r[10])


class Spool:
    """The SQLite spool under the state directory (``spool.db``)."""

    FILENAME = "spool.db"

    def __init__(self, state_dir: str | os.PathLike[str], max_bytes: int, synchronous: str = "normal",
                 recover: bool = True) -> None:
        self.path = Path(state_dir) / self.FILENAME
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.max_bytes = max_bytes
        #: bulk batches evicted so far: a reader that saw this figure change since it read a batch
        #: asks :meth:`exists` before sending it (the batch may be gone)
        self.evictions = 0
        #: what the start-up check found and salvaged (None: the spool was sound)
        self.recovery: dict[str, Any] | None = None
        problem = None
        try:
            self._open()
            problem = spool_recovery.check(self._db)
        except sqlite3.DatabaseError as exc:  # not a database, or too damaged to open
            if not spool_recovery.is_corruption(exc):
                raise  # locked, I/O error, disk full …: not the file's fault
            problem = f"{type(exc).__name__}: {exc}"
        if problem is not None and not recover:  # only the agent itself moves a spool aside
            self._db.close()
            raise RuntimeError(f"{self.path} is damaged ({problem}); the agent moves it aside at its next start")
        if problem is not None:
            self._recover(problem)
        self._sync = WalSync(self.path) if synchronous == "full" else None
        if self._sync is not None:
            self._sync.barrier()

    def _open(self) -> None:
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        os.chmod(self.path, 0o600)
        # larger pages: a batch body spans fewer overflow pages, so insert and delete touch less
        # (takes effect only when the file is new)
        self._db.execute("PRAGMA page_size=16384")
        self._db.execute("PRAGMA journal_mode=WAL")
        # commits are made durable, when asked, by an fsync of their own (durable())
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        # 512 KiB of page cache, not 2 MiB: bodies are written once and read once
        self._db.execute("PRAGMA cache_size=-512")
        self._db.executescript(_DDL)
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: spool schema {row[0]} is newer than this agent ({SCHEMA_VERSION})")
        self._migrate()
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        self.resync()

    def _recover(self, problem: str) -> None:
        """Move the corrupt file aside, open a fresh one and copy into it what can be read."""
        if getattr(self, "_db", None) is not None:
            self._db.close()
        moved = spool_recovery.move_aside(self.path)
        found = spool_recovery.salvage(moved, problem)
        self._open()
        self.recovery = spool_recovery.restore(self._db, found)
        self.resync()

    def _migrate(self) -> None:
        """Bring the tables as _DDL makes them (schema 1) up to date; rows keep their meaning."""
        for table in ("batches", "dead_letters"):
            have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            for name, decl in _BODY_COLUMNS:
                if name not in have:  # schema 1: bodies stored as JSON
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")

    # -- bookkeeping -------------------------------------------------------------------
    @property
    def bytes(self) -> int:
        """Bytes of batch bodies held (the figure the cap applies to)."""
        return sum(self._bytes.values())

    def resync(self) -> None:
        """Recount the bytes held from the table (another process may have requeued dead letters)."""
        self._bytes = {PRIORITY_BULK: 0, PRIORITY_AUDIT: 0}
        for prio, total in self._db.execute("SELECT priority, COALESCE(SUM(bytes), 0) FROM batches GROUP BY priority"):
            self._bytes[prio] = self._bytes.get(prio, 0) + int(total)

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
        self._db.close()
        if self._sync is not None:
            self._sync.release()  # the descriptor whose close would drop SQLite's locks goes last

    def durable(self) -> Future[None]:
        """Done once every commit made so far survives power loss (at once with ``synchronous:
        normal``, which does not promise that); failed with the OSError when the disk refused."""
        if self._sync is None:
            done: Future[None] = Future()
            done.set_result(None)
            return done
        return self._sync.request()

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def checkpoints(self) -> dict[str, str]:
        """Every source's committed position."""
        return dict(self._db.execute("SELECT source, position FROM checkpoints"))

    # -- writing -----------------------------------------------------------------------
    def fits(self, n_bytes: int, priority: int) -> bool:
        """Whether ``n_bytes`` of ``priority`` could be written now (counting evictable bulk)."""
        free = self.max_bytes - self.bytes
        if priority == PRIORITY_AUDIT:
            free += self._bytes.get(PRIORITY_BULK, 0)
        return n_bytes <= free

    def append(self, batches: Iterable[NewBatch], checkpoints: Iterable[Checkpoint] = ()) -> list[Eviction]:
        """Write batches and checkpoints in one transaction; return the bulk batches evicted for room.

        Raises :class:`SpoolFull` (writing nothing) when they cannot fit: bulk data never
        evicts other data; audit data evicts bulk batches, oldest first.
        """
        batches = list(batches)
        checkpoints = list(checkpoints)
        new_bytes = sum(len(b.body) for b in batches)
        audit_bytes = sum(len(b.body) for b in batches if b.priority == PRIORITY_AUDIT)
        bulk_bytes = new_bytes - audit_bytes
        free = self.max_bytes - self.bytes
        if new_bytes > free:
            # only audit data may make room, and only by evicting bulk batches
            if bulk_bytes > free or new_bytes > free + self._bytes.get(PRIORITY_BULK, 0):
                raise SpoolFull(
                    f"spool at {self.bytes} of {self.max_bytes} bytes; {new_bytes} more do not fit"
                )
        now = time.time()
        evicted: list[Eviction] = []
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            need = new_bytes - free
            if need > 0:
                freed = 0
                victims = []
                for seq, batch_id, n, kinds, size in db.execute(
                    "SELECT seq, batch_id, n_events, kinds, bytes FROM batches WHERE priority=? ORDER BY seq",
                    (PRIORITY_BULK,),
                ):
                    victims.append(seq)
                    evicted.append(Eviction(batch_id, n, json.loads(kinds)))
                    freed += size
                    if freed >= need:
                        break
                db.executemany("DELETE FROM batches WHERE seq=?", [(s,) for s in victims])
            else:
                freed = 0
            db.executemany(
                "INSERT INTO batches (batch_id, priority, created, n_events, bytes, kinds, body, codec, raw_bytes, crc)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (b.batch_id, b.priority, now, b.n_events, len(b.body), json.dumps(b.kinds), b.body,
                     b.codec, b.raw_bytes, b.crc)
                    for b in batches
                ],
            )
            if checkpoints:
                db.executemany(
                    "INSERT INTO checkpoints (source, position, updated) VALUES (?, ?, ?)"
                    " ON CONFLICT(source) DO UPDATE SET position=excluded.position, updated=excluded.updated",
                    [(c.source, c.position, now) for c in checkpoints],
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite may have rolled back itself (disk full, I/O error)
                db.execute("ROLLBACK")
            raise
        self._bytes[PRIORITY_BULK] = self._bytes.get(PRIORITY_BULK, 0) - freed
        self.evictions += len(evicted)
        for b in batches:
            self._bytes[b.priority] = self._bytes.get(b.priority, 0) + len(b.body)
        return evicted

    # -- reading and acknowledging -------------------------------------------------------
    def pending(self, limit: int, after_seq: int = 0) -> list[SpoolBatch]:
        """Up to ``limit`` batches after ``after_seq``, oldest first. A row that cannot be read (its
        text damaged on disk) is set aside among the dead letters, loudly, not raised: one bad row
        must not stop shipping the others."""
        query = (f"SELECT seq, {_PENDING_COLS} FROM batches WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit))
        try:
            return [_pending_batch(r) for r in self._db.execute(*query).fetchall()]
        except (sqlite3.OperationalError, ValueError, TypeError):
            pass  # read them one by one, below
        out = []
        for (seq,) in self._db.execute("SELECT seq FROM batches WHERE seq > ? ORDER BY seq LIMIT ?",
                                       (after_seq, limit)).fetchall():
            try:
                out.append(_pending_batch(self._db.execute(f"SELECT seq, {_PENDING_COLS} FROM batches WHERE seq=?",
                                                           (seq,)).fetchone()))
            except (sqlite3.OperationalError, ValueError, TypeError) as exc:
                prio, size = spool_recovery.set_aside(self._db, seq, f"unreadable spool row: {exc}")
                self._bytes[prio] = self._bytes.get(prio, 0) - size
        return out

    def ack(self, seq: int) -> bool:
        """Delete a shipped batch; False when it was gone already (evicted meanwhile)."""
        row = self._db.execute("DELETE FROM batches WHERE seq=? RETURNING priority, bytes", (seq,)).fetchone()
        if row is None:
            return False
        self._bytes[row[0]] -= row[1]
        return True

    def exists(self, seq: int) -> bool:
        """Whether a batch is still spooled (it may have been evicted while being retried)."""
        return self._db.execute("SELECT 1 FROM batches WHERE seq=?", (seq,)).fetchone() is not None

    def note_attempt(self, seq: int, error: str) -> None:
        self._db.execute("UPDATE batches SET attempts = attempts + 1, last_error=? WHERE seq=?", (error[:1000], seq))

    def dead_letter(self, seq: int, reason: str, status: int | None = None) -> bool:
        """Move a batch to the dead-letter table with the reason it was refused."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT batch_id, created, n_events, bytes, kinds, body, priority, codec, raw_bytes, crc"
                " FROM batches WHERE seq=?", (seq,)
            ).fetchone()
            if row is None:
                db.execute("ROLLBACK")
                return False
            db.execute(
                "INSERT INTO dead_letters (batch_id, created, dead_at, n_events, bytes, kinds, body, status, reason,"
                " codec, raw_bytes, crc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row[0], row[1], time.time(), row[2], row[3], row[4], row[5], status, reason[:4000],
                 row[7], row[8], row[9]),
            )
            db.execute("DELETE FROM batches WHERE seq=?", (seq,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite may have rolled back itself (disk full, I/O error)
                db.execute("ROLLBACK")
            raise
        self._bytes[row[6]] -= row[3]
        return True

    def add_dead_letter(self, batch: NewBatch, reason: str, status: int | None = None) -> None:
        """Record data that was refused before it reached the batch table (an invalid event)."""
        now = time.time()
        self._db.execute(
            "INSERT INTO dead_letters (batch_id, created, dead_at, n_events, bytes, kinds, body, status, reason,"
            " codec, raw_bytes, crc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (batch.batch_id, now, now, batch.n_events, len(batch.body), json.dumps(batch.kinds), batch.body,
             status, reason[:4000], batch.codec, batch.raw_bytes, batch.crc),
        )

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT seq, batch_id, dead_at, n_events, bytes, kinds, status, reason FROM dead_letters"
            " ORDER BY seq LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            {"seq": r[0], "batch_id": r[1], "dead_at": r[2], "n_events": r[3], "bytes": r[4],
             "kinds": json.loads(r[5]), "status": r[6], "reason": r[7]}
            for r in rows
        ]

    def requeue_dead(self) -> int:
        """Move every dead letter back into the batch table (at the end); returns how many.

        Requeued batches bypass the cap: they were already counted against it once, and an
        operator asked for them explicitly.
        """
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute(
                "SELECT seq, batch_id, n_events, bytes, kinds, body, codec, raw_bytes, crc FROM dead_letters"
                " ORDER BY seq"
            ).fetchall()
            now = time.time()
            for seq, batch_id, n, size, kinds, body, codec, raw_bytes, crc in rows:
                k = json.loads(kinds)
                prio = PRIORITY_AUDIT if any(kind not in ("system_log", "metrics") for kind in k) else PRIORITY_BULK
                db.execute(
                    "INSERT INTO batches (batch_id, priority, created, n_events, bytes, kinds, body, codec, raw_bytes,"
                    " crc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT(batch_id) DO NOTHING",
                    (batch_id, prio, now, n, size, kinds, body, codec, raw_bytes, crc),
                )
                db.execute("DELETE FROM dead_letters WHERE seq=?", (seq,))
                self._bytes[prio] = self._bytes.get(prio, 0) + size
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite may have rolled back itself (disk full, I/O error)
                db.execute("ROLLBACK")
            raise
        return len(rows)

    def stats(self) -> SpoolStats:
        return SpoolStats.of(self._db, self.max_bytes)

    @staticmethod
    def read_stats(path: str | os.PathLike[str], max_bytes: int) -> tuple[list[str], SpoolStats]:
        """A spool file opened read-only (the agent may be running): ``PRAGMA quick_check``'s rows and its counts."""
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
            return [str(r[0]) for r in db.execute("PRAGMA quick_check")], SpoolStats.of(db, max_bytes)

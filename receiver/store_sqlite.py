"""The embedded store: one SQLite file (WAL), events unique by id, one transaction per batch.

All access goes through one worker thread that owns the connection, so the event loop never
waits on SQLite and the connection is never shared between threads. Each accepted batch is one
transaction (``INSERT OR IGNORE`` on the unique ``id``), which makes replays harmless: an event
id is stored once however often it arrives. The ``groups`` table records the first arrival of
each merged record (Websh session, command) so merged views page over it by index.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from receiver.errors import StoreError
from receiver.store import MERGED_KINDS, GroupRef, Query, StoreResult, event_rows, row_to_event

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    server      TEXT NOT NULL,
    ts          TEXT NOT NULL,
    key         TEXT,
    received_at REAL NOT NULL,
    batch_id    TEXT NOT NULL,
    data        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_kind_key ON events (kind, key);
CREATE INDEX IF NOT EXISTS events_kind_seq ON events (kind, seq);
CREATE TABLE IF NOT EXISTS batches (
    n               INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id        TEXT NOT NULL,
    idempotency_key TEXT,
    agent_id        TEXT NOT NULL,
    server          TEXT NOT NULL,
    received_at     REAL NOT NULL,
    events          INTEGER NOT NULL,
    stored          INTEGER NOT NULL,
    duplicates      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_batch_id ON batches (batch_id);
CREATE TABLE IF NOT EXISTS groups (
    kind      TEXT NOT NULL,
    key       TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    server    TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX IF NOT EXISTS groups_kind_first ON groups (kind, first_seq);
CREATE INDEX IF NOT EXISTS groups_kind_server_first ON groups (kind, server, first_seq);
"""

#: a store written before ``groups`` existed gets it filled from its events once
_BACKFILL_GROUPS = f"""
INSERT OR IGNORE INTO groups (kind, key, first_seq, server)
SELECT kind, key, min(seq), server FROM events
WHERE kind IN ({", ".join(f"'{k}'" for k in MERGED_KINDS)}) AND key IS NOT NULL GROUP BY kind, key
"""

_COLUMNS = "seq, id, kind, server, ts, received_at, batch_id, data"


def select_sql(q: Query) -> tuple[str, list[Any]]:
    """The SQL and arguments of a row query (a function of its own so tests can EXPLAIN it)."""
    where: list[str] = []
    args: list[Any] = []
    if q.kinds:
        where.append(f"kind IN ({', '.join('?' * len(q.kinds))})")
        args.extend(q.kinds)
    if q.server is not None:
        where.append("server = ?")
        args.append(q.server)
    if q.since is not None:
        where.append("ts >= ?")
        args.append(q.since)
    if q.until is not None:
        where.append("ts < ?")
        args.append(q.until)
    if q.after is not None:
        where.append("seq > ?")
        args.append(q.after)
    if q.keys is not None:
        where.append(f"key IN ({', '.join('?' * len(q.keys))})" if q.keys else "0")
        args.extend(q.keys)
    for field, value in q.data_eq:
        where.append("json_extract(data, ?) = ?")
        args.extend((f"$.{field}", value))
    for field, value in q.data_like:
        where.append("instr(json_extract(data, ?), ?) > 0")
        args.extend((f"$.{field}", value))
    sql = f"SELECT {_COLUMNS} FROM events"
    if q.keys is not None and q.kinds:
        # a merged record's events: without this SQLite may walk (kind, seq) for the ORDER BY and
        # read every event of the kind to find a page's few keys
        sql += " INDEXED BY events_kind_key"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY seq"
    if q.limit is not None:
        sql += " LIMIT ?"
        args.append(q.limit)
    return sql, args


class SQLiteStore:
    """SQLite (WAL) store of received events; every method runs on the store's own thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.rows_read = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="receiver-store")
        self._conn: sqlite3.Connection | None = None

    def key_text(self, key: str) -> str:
        """A group key as stored: SQLite keeps any text as it is."""
        return key

    # -- thread plumbing -------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None, "store is not open"
        return self._conn

    def _open(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            fresh_groups = not conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'groups'"
            ).fetchone()
            conn.executescript(_SCHEMA)
            if fresh_groups:
                conn.execute(_BACKFILL_GROUPS)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def open(self) -> None:
        """Create the schema (if new) and open the connection."""
        await self._run(self._open)

    async def close(self) -> None:
        """Close the connection and stop the store's thread."""
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    # -- writes ------------------------------------------------------------------------------

    def _store_batch(self, batch: dict[str, Any], idempotency_key: str | None) -> StoreResult:
        db = self._db()
        now = time.time()
        batch_id = batch["batch_id"]
        rows = event_rows(batch)
        groups = {(r.kind, r.key): r.server for r in rows if r.key is not None and r.kind in MERGED_KINDS}
        db.execute("BEGIN IMMEDIATE")
        try:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO events (id, kind, server, ts, key, received_at, batch_id, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.id, r.kind, r.server, r.ts, r.key, now, batch_id, r.data) for r in rows],
            )
            stored = db.total_changes - before
            if groups:
                db.executemany(
                    "INSERT OR IGNORE INTO groups (kind, key, first_seq, server)"
                    " SELECT ?, ?, min(seq), ? FROM events WHERE kind = ? AND key = ? HAVING count(*) > 0",
                    [(kind, key, server, kind, key) for (kind, key), server in groups.items()],
                )
            agent = batch["agent"]
            db.execute(
                "INSERT INTO batches (batch_id, idempotency_key, agent_id, server, received_at,"
                " events, stored, duplicates) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (batch_id, idempotency_key, agent["id"], agent["server"], now, len(rows), stored,
                 len(rows) - stored),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return StoreResult(stored=stored, duplicates=len(rows) - stored)

    async def store_batch(self, batch: dict[str, Any], idempotency_key: str | None) -> StoreResult:
        """Store a validated batch in one transaction; events already present count as duplicates."""
        return await self._run(self._store_batch, batch, idempotency_key)

    # -- reads -------------------------------------------------------------------------------

    def _select(self, q: Query) -> list[dict[str, Any]]:
        sql, args = select_sql(q)
        out = [row_to_event(r) for r in self._db().execute(sql, args)]
        self.rows_read += len(out)
        return out

    async def select(self, q: Query) -> list[dict[str, Any]]:
        """Events matching ``q`` in arrival order (receive sequence)."""
        return await self._run(self._select, q)

    def _ids(self, kinds: Sequence[str], after: int | None, limit: int) -> list[tuple[int, str]]:
        where: list[str] = ["seq > ?"]
        args: list[Any] = [after or 0]
        if kinds:
            where.append(f"kind IN ({', '.join('?' * len(kinds))})")
            args.extend(kinds)
        sql = f"SELECT seq, id FROM events WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
        out = [(r[0], r[1]) for r in self._db().execute(sql, [*args, limit])]
        self.rows_read += len(out)
        return out

    async def ids(self, kinds: Sequence[str], after: int | None, limit: int) -> list[tuple[int, str]]:
        """(seq, id) of stored events (optionally of some kinds) after ``after``, arrival order."""
        return await self._run(self._ids, kinds, after, limit)

    def _groups(self, kind: str, server: str | None, after: int | None, limit: int) -> list[GroupRef]:
        sql = "SELECT key, first_seq FROM groups WHERE kind = ? AND first_seq > ?"
        args: list[Any] = [kind, after or 0]
        if server is not None:
            sql += " AND server = ?"
            args.append(server)
        rows = self._db().execute(sql + " ORDER BY first_seq LIMIT ?", [*args, limit]).fetchall()
        return [GroupRef(key, first) for key, first in rows]

    async def groups(self, kind: str, server: str | None, after: int | None, limit: int) -> list[GroupRef]:
        """The next ``limit`` merged records of ``kind`` by first arrival, after ``after``."""
        return await self._run(self._groups, kind, server, after, limit)

    def _counts(self) -> dict[str, Any]:
        db = self._db()
        by_kind = dict(db.execute("SELECT kind, count(*) FROM events GROUP BY kind").fetchall())
        n, distinct, dups = db.execute(
            "SELECT count(*), count(DISTINCT batch_id), coalesce(sum(duplicates), 0) FROM batches"
        ).fetchone()
        return {
            "stored_by_kind": by_kind,
            "stored": sum(by_kind.values()),
            "batches_accepted": n,
            "batches_distinct": distinct,
            "duplicates": dups,
            "rows_read": self.rows_read,
        }

    async def counts(self) -> dict[str, Any]:
        """Stored events per kind, batches accepted (and distinct batch ids), duplicates seen."""
        return await self._run(self._counts)

    def _batches(self, limit: int) -> list[dict[str, Any]]:
        cur = self._db().execute(
            "SELECT n, batch_id, idempotency_key, agent_id, server, received_at, events, stored,"
            " duplicates FROM batches ORDER BY n DESC LIMIT ?",
            (limit,),
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur][::-1]

    async def batches(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The latest batch receipts (oldest first), with their Idempotency-Key."""
        return await self._run(self._batches, limit)

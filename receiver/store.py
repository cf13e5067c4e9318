"""The receiver's SQLite store: events unique by id, batch receipts, and the queries behind the views.

All access goes through one worker thread that owns the connection, so the event loop never
waits on SQLite and the connection is never shared between threads. Each accepted batch is one
transaction (``INSERT OR IGNORE`` on the unique ``id``), which makes replays harmless: an event
id is stored once however often it arrives.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

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
"""

#: the data field that groups a kind's events into one merged record (sessions, commands)
GROUP_KEYS: dict[str, str] = {
    "websh_session": "session_id",
    "websh_command": "session_id",
    "command": "command_id",
    "websh_recording": "session_id",
}

_COLUMNS = "seq, id, kind, server, ts, received_at, batch_id, data"


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What one batch did to the store."""

    stored: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class Query:
    """Filters of a row query; ``data_eq`` compares ``data.<field>`` with a value."""

    kinds: Sequence[str] = ()
    server: str | None = None
    since: str | None = None
    until: str | None = None
    after: int | None = None
    #: only events received before this sequence number (paging newest first)
    before: int | None = None
    #: newest first
    descending: bool = False
    limit: int | None = None
    keys: Sequence[str] | None = None
    data_eq: Sequence[tuple[str, Any]] = ()
    data_like: Sequence[tuple[str, str]] = ()


def row_to_event(row: Sequence[Any]) -> dict[str, Any]:
    """An event as stored: the wire envelope plus ``seq``, ``received_at`` and ``batch_id``."""
    seq, id_, kind, server, ts, received_at, batch_id, data = row
    return {
        "seq": seq,
        "id": id_,
        "kind": kind,
        "server": server,
        "ts": ts,
        "received_at": received_at,
        "batch_id": batch_id,
        "data": orjson.loads(data),
    }


class EventStore:
    """SQLite (WAL) store of received events; every method runs on the store's own thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="receiver-store")
        self._conn: sqlite3.Connection | None = None

    # -- thread plumbing -------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None, "store is not open"
        return self._conn

    def _open(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
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
        rows = []
        for ev in batch["events"]:
            data = ev["data"]
            group = GROUP_KEYS.get(ev["kind"])
            rows.append(
                (
                    ev["id"],
                    ev["kind"],
                    ev["server"],
                    ev["ts"],
                    data.get(group) if group else None,
                    now,
                    batch_id,
                    orjson.dumps(data).decode(),
                )
            )
        db.execute("BEGIN IMMEDIATE")
        try:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO events (id, kind, server, ts, key, received_at, batch_id, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            stored = db.total_changes - before
            agent = batch["agent"]
            db.execute(
                "INSERT INTO batches (batch_id, idempotency_key, agent_id, server, received_at,"
                " events, stored, duplicates) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    batch_id,
                    idempotency_key,
                    agent["id"],
                    agent["server"],
                    now,
                    len(rows),
                    stored,
                    len(rows) - stored,
                ),
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

    def _select(self, q: Query, order: str = "seq") -> list[dict[str, Any]]:
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
        if q.before is not None:
            where.append("seq < ?")
            args.append(q.before)
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
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order}" + (" DESC" if q.descending else "")
        if q.limit is not None:
            sql += " LIMIT ?"
            args.append(q.limit)
        return [row_to_event(r) for r in self._db().execute(sql, args)]

    async def select(self, q: Query) -> list[dict[str, Any]]:
        """Events matching ``q`` in arrival order (receive sequence)."""
        return await self._run(self._select, q)

    def _activity_summary(self, q: Query, top: int) -> dict[str, Any]:
        where = ["kind = 'user_activity'"]
        args: list[Any] = []
        for col, op, value in (("server", "=", q.server), ("ts", ">=", q.since), ("ts", "<", q.until)):
            if value is not None:
                where.append(f"{col} {op} ?")
                args.append(value)
        for field, value in q.data_eq:
            where.append("json_extract(data, ?) = ?")
            args.extend((f"$.{field}", value))
        cond = " AND ".join(where)
        db = self._db()
        hours = db.execute(
            "SELECT substr(ts, 1, 13) || ':00:00.000Z' AS hour, json_extract(data, '$.action'),"
            f" json_extract(data, '$.result'), count(*) FROM events WHERE {cond}"
            " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            args,
        ).fetchall()

        def top_of(field: str) -> list[tuple[Any, int]]:
            return db.execute(
                f"SELECT json_extract(data, '$.{field}'), count(*) FROM events WHERE {cond}"
                " GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?",
                [*args, top],
            ).fetchall()

        return {
            "hours": [{"hour": h, "action": a, "result": r, "count": n} for h, a, r, n in hours],
            "users": [{"user": u, "count": n} for u, n in top_of("user")],
            "ips": [{"ip": ip, "count": n} for ip, n in top_of("ip")],
        }

    async def activity_summary(self, q: Query, top: int = 10) -> dict[str, Any]:
        """User activity counted per hour by action and result, and the top users and IPs."""
        return await self._run(self._activity_summary, q, top)

    def _ids(self, kinds: Iterable[str]) -> list[str]:
        kinds = list(kinds)
        sql = "SELECT id FROM events"
        if kinds:
            sql += f" WHERE kind IN ({', '.join('?' * len(kinds))})"
        return [r[0] for r in self._db().execute(sql + " ORDER BY seq", kinds)]

    async def ids(self, kinds: Iterable[str] = ()) -> list[str]:
        """Every stored event id (optionally of some kinds) in arrival order."""
        return await self._run(self._ids, kinds)

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

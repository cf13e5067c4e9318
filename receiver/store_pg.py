"""The scale-out store: PostgreSQL through asyncpg, shared by any number of receiver processes.

Events live in a table partitioned by the UTC day of their ``ts`` (declarative range
partitions, created on first use, dropped whole by the retention sweep). An event's ``ts`` is
fixed when the agent creates it, so the primary key ``(day, id)`` makes an id unique: a replay
lands in the same partition and ``INSERT … ON CONFLICT DO NOTHING`` skips it, whichever
receiver it reaches. A batch is one transaction, committed before the receiver answers; the
receive sequence ``seq`` comes from one database sequence, so arrival order spans processes.

Indexes follow the views: ``(seq)`` for raw pages and ids, ``(kind, seq)`` and
``(kind, server, seq)`` for each view in arrival order, ``(kind, ts)`` for time windows,
``(kind, key)`` for a merged record's events, and a GIN ``jsonb_path_ops`` index on ``data`` for
the kind-specific equality filters (``data @> {"status": "failed"}``). ``groups`` holds each
merged record's first arrival. Text PostgreSQL cannot hold (NUL): ``data`` keeps the original
JSON in ``raw`` whenever the indexed ``jsonb`` copy had to differ, so views return it exactly; in
a server name or a group key a NUL is stored as U+FFFD.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random

from receiver.errors import StoreError
from receiver.pg_sql import (
    INSERT_EVENTS,
    SCHEMA,
    UPSERT_GROUPS,
    partition_name,
    pg_text,
    select_sql,
    without_nul,
)
from receiver.store import GroupRef, Query, StoreResult, event_rows, first_arrivals, row_to_event

log = structlog.get_logger("receiver")

#: one lock id for schema and partition DDL, so concurrent receivers never race on it
_DDL_LOCK = 0x616C7061
RETENTION_SWEEP_S = 3600.0

#: the errors a concurrent writer can cause that a retry of the whole transaction resolves
_RETRYABLE = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)



class PostgresStore:
    """Events, batch receipts and merged-record index in PostgreSQL; safe to share between processes."""

    def __init__(self, url: str, *, retention_days: int | None = None, pool_size: int = 4) -> None:
        if retention_days is not None and retention_days < 1:
            raise StoreError(f"retention: {retention_days} days; it must be at least 1")
        self.url = url
        self.retention_days = retention_days
        self.rows_read = 0
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._days: set[date] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def key_text(self, key: str) -> str:
        """A group key as stored (NUL, which PostgreSQL text cannot hold, as U+FFFD)."""
        return key.replace("\x00", "\ufffd")

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "store is not open"
        return self._pool

    @contextlib.asynccontextmanager
    async def _errors(self) -> Any:
        try:
            yield
        except StoreError:
            raise
        except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    async def open(self) -> None:
        """Connect, create the schema under an advisory lock, sweep retention once."""
        async with self._errors():
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=self._pool_size, timeout=10, command_timeout=120
            )
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _DDL_LOCK)
                await conn.execute(SCHEMA)
            if self.retention_days is not None:
                await self.sweep_retention()
                self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def close(self) -> None:
        """Stop the retention sweep and close the pool."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # -- partitions and retention ------------------------------------------------------------

    async def _ensure_partitions(self, days: set[date]) -> None:
        missing = days - self._days
        if not missing:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _DDL_LOCK)
            for day in sorted(missing):
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF events"
                    f" FOR VALUES FROM ('{day.isoformat()}') TO ('{(day + timedelta(days=1)).isoformat()}')"
                )
        self._days |= missing

    async def partitions(self) -> list[date]:
        """The days that have a partition, oldest first."""
        async with self._errors():
            rows = await self.pool.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'events'::regclass"
            )
        return sorted(datetime.strptime(r[0][len("events_p"):], "%Y%m%d").date() for r in rows)

    async def sweep_retention(self, today: date | None = None) -> list[date]:
        """Drop every day partition older than the retention (and their groups and receipts)."""
        if self.retention_days is None:
            return []
        cutoff = (today or datetime.now(UTC).date()) - timedelta(days=self.retention_days)
        dropped = [d for d in await self.partitions() if d < cutoff]
        async with self._errors(), self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _DDL_LOCK)
            for day in dropped:
                await conn.execute(f"DROP TABLE IF EXISTS {partition_name(day)}")
            await conn.execute("DELETE FROM groups WHERE day < $1", cutoff)
            cutoff_epoch = datetime(cutoff.year, cutoff.month, cutoff.day, tzinfo=UTC).timestamp()
            await conn.execute("DELETE FROM batches WHERE received_at < $1", cutoff_epoch)
        self._days -= set(dropped)
        if dropped:
            log.info("retention", dropped=[d.isoformat() for d in dropped], keep_days=self.retention_days)
        return dropped

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(RETENTION_SWEEP_S)
            try:
                await self.sweep_retention()
            except StoreError as exc:
                log.error("retention sweep failed", error=str(exc))

    # -- writes ------------------------------------------------------------------------------

    async def store_batch(self, batch: dict[str, Any], idempotency_key: str | None) -> StoreResult:
        """Store a validated batch in one committed transaction; known ids count as duplicates."""
        rows = event_rows(batch)
        days = {date.fromisoformat(r.day) for r in rows}
        async with self._errors():
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type((*_RETRYABLE, asyncpg.exceptions.CheckViolationError)),
                stop=stop_after_attempt(5), wait=wait_random(0.005, 0.05), reraise=True,
            ):
                with attempt:
                    await self._ensure_partitions(days)
                    try:
                        return await self._store(batch, rows, idempotency_key)
                    except asyncpg.exceptions.CheckViolationError:
                        self._days.clear()  # a partition was dropped under us: recreate it
                        raise
        raise AssertionError("unreachable")

    async def _store(self, batch: dict[str, Any], rows: Sequence[Any], idempotency_key: str | None) -> StoreResult:
        now = time.time()
        datas, raws = [], []
        for r in rows:
            if "\\u0000" in r.data:  # jsonb cannot hold NUL: index a cleaned copy, keep the original
                datas.append(orjson.dumps(without_nul(orjson.loads(r.data))).decode())
                raws.append(r.data)
            else:
                datas.append(r.data)
                raws.append(None)
        async with self.pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetch(
                INSERT_EVENTS,
                [r.day for r in rows], [r.id for r in rows], [r.kind for r in rows],
                [pg_text(r.server) for r in rows], [r.ts for r in rows], [pg_text(r.key) for r in rows],
                datas, raws, now, batch["batch_id"],
            )
            seq_of = {rec["id"]: rec["seq"] for rec in inserted}
            fresh = [(r, seq_of[r.id]) for r in rows if r.id in seq_of]
            seq_of.clear()
            firsts = first_arrivals([r for r, _ in fresh], [s for _, s in fresh])
            if firsts:
                ordered = sorted(firsts.items())  # one lock order for every writer: no deadlock
                await conn.execute(
                    UPSERT_GROUPS,
                    [k[0] for k, _ in ordered], [pg_text(k[1]) for k, _ in ordered],
                    [v[0] for _, v in ordered], [pg_text(v[1]) for _, v in ordered],
                    [date.fromisoformat(v[2]) for _, v in ordered],
                )
            agent = batch["agent"]
            stored = len(inserted)
            await conn.execute(
                "INSERT INTO batches (batch_id, idempotency_key, agent_id, server, received_at, events, stored,"
                " duplicates) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                batch["batch_id"], pg_text(idempotency_key), pg_text(agent["id"]), pg_text(agent["server"]),
                now, len(rows), stored, len(rows) - stored,
            )
        return StoreResult(stored=stored, duplicates=len(rows) - stored)

    # -- reads -------------------------------------------------------------------------------

    async def select(self, q: Query) -> list[dict[str, Any]]:
        """Events matching ``q`` in arrival order (receive sequence)."""
        sql, args = select_sql(q)
        async with self._errors():
            rows = await self.pool.fetch(sql, *args)
        self.rows_read += len(rows)
        return [row_to_event(r) for r in rows]

    async def ids(self, kinds: Sequence[str], after: int | None, limit: int) -> list[tuple[int, str]]:
        """(seq, id) of stored events (optionally of some kinds) after ``after``, arrival order."""
        sql = "SELECT seq, id FROM events WHERE seq > $1"
        args: list[Any] = [after or 0]
        if kinds:
            sql += " AND kind = ANY($3::text[])"
            args.append(limit)
            args.append(list(kinds))
        else:
            args.append(limit)
        async with self._errors():
            rows = await self.pool.fetch(sql + " ORDER BY seq LIMIT $2", *args)
        self.rows_read += len(rows)
        return [(r[0], r[1]) for r in rows]

    async def groups(self, kind: str, server: str | None, after: int | None, limit: int) -> list[GroupRef]:
        """The next ``limit`` merged records of ``kind`` by first arrival, after ``after``."""
        sql = "SELECT key, first_seq FROM groups WHERE kind = $1 AND first_seq > $2"
        args: list[Any] = [kind, after or 0, limit]
        if server is not None:
            sql += " AND server = $4"
            args.append(pg_text(server))
        async with self._errors():
            rows = await self.pool.fetch(sql + " ORDER BY first_seq LIMIT $3", *args)
        return [GroupRef(r[0], r[1]) for r in rows]

    async def counts(self) -> dict[str, Any]:
        """Stored events per kind, batches accepted (and distinct batch ids), duplicates seen."""
        async with self._errors(), self.pool.acquire() as conn:
            by_kind = {r[0]: r[1] for r in await conn.fetch("SELECT kind, count(*) FROM events GROUP BY kind")}
            n, distinct, dups = await conn.fetchrow(
                "SELECT count(*), count(DISTINCT batch_id), coalesce(sum(duplicates), 0) FROM batches"
            )
        return {
            "stored_by_kind": by_kind,
            "stored": sum(by_kind.values()),
            "batches_accepted": n,
            "batches_distinct": distinct,
            "duplicates": int(dups),
            "rows_read": self.rows_read,
        }

    async def batches(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The latest batch receipts (oldest first), with their Idempotency-Key."""
        async with self._errors():
            rows = await self.pool.fetch(
                "SELECT n, batch_id, idempotency_key, agent_id, server, received_at, events, stored,"
                " duplicates FROM batches ORDER BY n DESC LIMIT $1",
                limit,
            )
        return [dict(r) for r in rows][::-1]

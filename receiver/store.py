"""The receiver's store interface: what every backend (SQLite, PostgreSQL) offers the handlers and views.

A store keeps events unique by ``id`` (a replay is stored once and counted as duplicates), one
transaction per batch committed before the answer, batch receipts, and the first arrival of
each merged record (a Websh session, a command) so that merged views page over records in the
database instead of reading every event of their kind. :func:`receiver.backends.open_store` picks
the backend from the ``--db`` value: ``postgresql://…`` or a SQLite path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from agent.events import parse_ts
from receiver.errors import StoreError

__all__ = [
    "GROUP_KEYS",
    "EventStore",
    "GroupRef",
    "Query",
    "StoreError",
    "StoreResult",
    "EventRow",
    "event_day",
    "event_rows",
    "first_arrivals",
    "is_postgres_url",
    "row_to_event",
]

#: the data field that groups a kind's events into one merged record (sessions, commands)
GROUP_KEYS: dict[str, str] = {
    "websh_session": "session_id",
    "websh_command": "session_id",
    "command": "command_id",
}
#: the kinds whose records are merged views (``websh_command`` joins its session instead)
MERGED_KINDS = ("websh_session", "command")

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


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
    limit: int | None = None
    keys: Sequence[str] | None = None
    data_eq: Sequence[tuple[str, Any]] = ()
    data_like: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True, slots=True)
class GroupRef:
    """A merged record's key and the receive sequence of its first event."""

    key: str
    first_seq: int


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
        "data": orjson.loads(data) if isinstance(data, str | bytes) else data,
    }


def event_day(ts: str) -> str:
    """The UTC day (``YYYY-MM-DD``) of a wire timestamp: the partition an event lives in."""
    if len(ts) >= 10 and ts.endswith("Z"):
        return ts[:10]
    return datetime.fromtimestamp(parse_ts(ts), UTC).strftime("%Y-%m-%d")


def is_postgres_url(db: str) -> bool:
    """Whether ``--db`` names a PostgreSQL database rather than a SQLite file."""
    return db.startswith(POSTGRES_SCHEMES)


class EventStore(Protocol):
    """What the handlers and views need from a backend; every method is a coroutine."""

    #: event rows read from the database so far (the views' cost, for tests and stats)
    rows_read: int

    def key_text(self, key: str) -> str:
        """A group key as this backend stores it (and as :meth:`groups` returns it)."""

    async def open(self) -> None:
        """Create the schema (if new) and connect."""

    async def close(self) -> None:
        """Disconnect and release the backend's resources."""

    async def store_batch(self, batch: dict[str, Any], idempotency_key: str | None) -> StoreResult:
        """Store a validated batch in one committed transaction; known ids count as duplicates."""

    async def select(self, q: Query) -> list[dict[str, Any]]:
        """Events matching ``q`` in arrival order (receive sequence)."""

    async def ids(self, kinds: Sequence[str], after: int | None, limit: int) -> list[tuple[int, str]]:
        """(seq, id) of stored events (optionally of some kinds) after ``after``, arrival order."""

    async def groups(self, kind: str, server: str | None, after: int | None, limit: int) -> list[GroupRef]:
        """The next ``limit`` merged records of ``kind`` by first arrival, after ``after``."""

    async def counts(self) -> dict[str, Any]:
        """Stored events per kind, batches accepted (and distinct batch ids), duplicates seen."""

    async def batches(self, limit: int) -> list[dict[str, Any]]:
        """The latest batch receipts (oldest first), with their Idempotency-Key."""


@dataclass(frozen=True, slots=True)
class EventRow:
    """One event as a backend writes it: the envelope, its group key, its day and the data as JSON."""

    id: str
    kind: str
    server: str
    ts: str
    key: str | None
    day: str
    data: str


def event_rows(batch: dict[str, Any]) -> list[EventRow]:
    """The rows of a validated batch, in batch order."""
    rows = []
    for ev in batch["events"]:
        data = ev["data"]
        group = GROUP_KEYS.get(ev["kind"])
        key = data.get(group) if group else None
        rows.append(
            EventRow(ev["id"], ev["kind"], ev["server"], ev["ts"], key if isinstance(key, str) else None,
                     event_day(ev["ts"]), orjson.dumps(data).decode())
        )
    return rows


def first_arrivals(rows: Sequence[EventRow], seqs: Sequence[int]) -> dict[tuple[str, str], tuple[int, str, str]]:
    """(kind, key) -> (first seq, server, day) of the merged records the newly stored rows belong to."""
    out: dict[tuple[str, str], tuple[int, str, str]] = {}
    for row, seq in zip(rows, seqs, strict=True):
        if row.key is None or row.kind not in MERGED_KINDS:
            continue
        k = (row.kind, row.key)
        if k not in out or seq < out[k][0]:
            out[k] = (seq, row.server, row.day)
    return out

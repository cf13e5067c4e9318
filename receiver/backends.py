"""Picks the store backend from the ``--db`` value: PostgreSQL for a URL, SQLite for a path."""

from __future__ import annotations

from receiver.errors import StoreError
from receiver.store import EventStore, is_postgres_url
from receiver.store_pg import PostgresStore
from receiver.store_sqlite import SQLiteStore


def open_store(db: str, *, retention_days: int | None = None) -> EventStore:
    """The backend for ``db`` (not yet opened): ``postgresql://…`` or a SQLite file / ``:memory:``."""
    if is_postgres_url(db):
        return PostgresStore(db, retention_days=retention_days)
    if retention_days is not None:
        raise StoreError("--retention-days needs a PostgreSQL --db (a SQLite store keeps everything)")
    return SQLiteStore(db)

"""PostgreSQL store's SQL: the schema, the batch statements, the row query and text helpers.

Kept apart from :mod:`receiver.store_pg` (the connection, transactions, partitions and
retention) so the statements can be read, and EXPLAINed by tests, on their own.
"""

from __future__ import annotations

from datetime import date
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from receiver.store import Query

SCHEMA = """
CREATE SEQUENCE IF NOT EXISTS events_seq;
CREATE TABLE IF NOT EXISTS events (
    day         date NOT NULL,
    id          text NOT NULL,
    seq         bigint NOT NULL,
    kind        text NOT NULL,
    server      text NOT NULL,
    ts          text NOT NULL,
    key         text,
    received_at double precision NOT NULL,
    batch_id    text NOT NULL,
    data        jsonb NOT NULL,
    raw         text,
    PRIMARY KEY (day, id)
) PARTITION BY RANGE (day);
CREATE INDEX IF NOT EXISTS events_seq_i ON events (seq);
CREATE INDEX IF NOT EXISTS events_kind_seq_i ON events (kind, seq);
CREATE INDEX IF NOT EXISTS events_kind_server_seq_i ON events (kind, server, seq);
CREATE INDEX IF NOT EXISTS events_kind_ts_i ON events (kind, ts);
CREATE INDEX IF NOT EXISTS events_kind_key_i ON events (kind, key) WHERE key IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_data_i ON events USING gin (data jsonb_path_ops);
CREATE TABLE IF NOT EXISTS batches (
    n               bigserial PRIMARY KEY,
    batch_id        text NOT NULL,
    idempotency_key text,
    agent_id        text NOT NULL,
    server          text NOT NULL,
    received_at     double precision NOT NULL,
    events          integer NOT NULL,
    stored          integer NOT NULL,
    duplicates      integer NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_batch_id_i ON batches (batch_id);
CREATE INDEX IF NOT EXISTS batches_received_i ON batches (received_at);
CREATE TABLE IF NOT EXISTS groups (
    kind      text NOT NULL,
    key       text NOT NULL,
    first_seq bigint NOT NULL,
    server    text NOT NULL,
    day       date NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX IF NOT EXISTS groups_kind_first_i ON groups (kind, first_seq);
CREATE INDEX IF NOT EXISTS groups_kind_server_first_i ON groups (kind, server, first_seq);
CREATE INDEX IF NOT EXISTS groups_day_i ON groups (day);
"""

INSERT_EVENTS = """
INSERT INTO events (day, id, seq, kind, server, ts, key, received_at, batch_id, data, raw)
SELECT u.day::date, u.id, nextval('events_seq'), u.kind, u.server, u.ts, u.key, $9, $10, u.data::jsonb, u.raw
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
     WITH ORDINALITY AS u(day, id, kind, server, ts, key, data, raw, ord)
ORDER BY u.ord
ON CONFLICT DO NOTHING
RETURNING id, seq
"""

UPSERT_GROUPS = """
INSERT INTO groups (kind, key, first_seq, server, day)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::date[])
ON CONFLICT (kind, key) DO UPDATE SET first_seq = EXCLUDED.first_seq, server = EXCLUDED.server, day = EXCLUDED.day
WHERE EXCLUDED.first_seq < groups.first_seq
"""

COLUMNS = "seq, id, kind, server, ts, received_at, batch_id, coalesce(raw, data::text)"

def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def pg_text(text: str | None) -> str | None:
    """Text PostgreSQL can store: NUL is not allowed in ``text``, so it becomes U+FFFD."""
    return text.replace("\x00", "\ufffd") if text is not None and "\x00" in text else text


def without_nul(value: Any) -> Any:
    """``value`` (parsed JSON) with NUL replaced by U+FFFD in every string, keys included."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    return value


def partition_name(day: date) -> str:
    return f"events_p{day:%Y%m%d}"


def select_sql(q: Query) -> tuple[str, list[Any]]:
    """The SQL and arguments of a row query (a function of its own so tests can EXPLAIN it)."""
    where: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if q.kinds:
        where.append(f"kind = ANY({arg(list(q.kinds))}::text[])")
    if q.server is not None:
        where.append(f"server = {arg(pg_text(q.server))}")
    if q.since is not None:
        where.append(f"ts >= {arg(q.since)}")
    if q.until is not None:
        where.append(f"ts < {arg(q.until)}")
    if q.after is not None:
        where.append(f"seq > {arg(q.after)}")
    if q.keys is not None:
        where.append(f"key = ANY({arg([pg_text(k) for k in q.keys])}::text[])")
    if q.data_eq:
        where.append(f"data @> {arg(orjson.dumps(dict(q.data_eq)).decode())}::jsonb")
    for field, value in q.data_like:
        where.append(f"strpos(data ->> {arg(field)}, {arg(pg_text(value))}) > 0")
    sql = f"SELECT {COLUMNS} FROM events"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY seq"
    if q.limit is not None:
        sql += f" LIMIT {arg(q.limit)}"
    return sql, args

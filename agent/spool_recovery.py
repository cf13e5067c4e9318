"""A corrupt spool at start: found, kept aside, read for what survives, and replaced.

:func:`check` runs ``PRAGMA quick_check`` (every page and b-tree of the file, its free list and
overflow chains). When the file is not a database or the check finds damage, :func:`move_aside`
renames it (and its ``-wal`` and ``-shm``) to ``spool.db.corrupt-<UTC time>``, where it is kept
for whoever wants to look, and :func:`salvage` reads from it every batch, dead letter, checkpoint
and meta row that can still be read whole — a batch body must decode and, when deflated, match
its CRC — for the fresh spool to take in. Reading stops at nothing: each table is walked by its
keys from both ends, each row read alone, so one bad page costs the rows on it, not the rest.

Checkpoints are kept only when every batch and every checkpoint was read: if anything of the
batches was lost, a checkpoint could point past events that are gone, so the sources are sent
back to the oldest data they still have (``Salvage.resume_from_oldest``). Duplicates are
harmless (events carry stable ids); losses are not.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import structlog

from agent.spool_sync import fsync_path
from agent.wire import CODEC_DEFLATE, CODEC_JSON, PREFIX_CRC, unpack

log = structlog.get_logger("spool")

_BATCH_COLS = "batch_id, priority, created, n_events, bytes, kinds, body, attempts, codec, raw_bytes, crc"
_DEAD_COLS = "batch_id, created, dead_at, n_events, bytes, kinds, body, status, reason, codec, raw_bytes, crc"


@dataclass
class Salvage:
    """What could be read from a corrupt spool."""

    moved_to: str
    problem: str
    at: float = field(default_factory=time.time)
    #: batch rows as ``_BATCH_COLS`` tuples, dead letters as ``_DEAD_COLS`` tuples
    batches: list[tuple[Any, ...]] = field(default_factory=list)
    dead_letters: list[tuple[Any, ...]] = field(default_factory=list)
    checkpoints: list[tuple[str, str, float]] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    #: batches seen but unreadable; None when the table could not be walked whole (unknown)
    batches_lost: int | None = 0
    checkpoints_whole: bool = True

    @property
    def resume_from_oldest(self) -> bool:
        """Whether the sources must go back to their oldest data (see the module's doc)."""
        return not self.checkpoints_whole or self.batches_lost != 0

    def summary(self) -> dict[str, Any]:
        """The figures for the log, the spool's meta and ``doctor``."""
        return {"at": self.at, "moved_to": self.moved_to, "problem": self.problem[:500],
                "batches": len(self.batches), "events": sum(int(b[3]) for b in self.batches),
                "batches_lost": self.batches_lost, "dead_letters": len(self.dead_letters),
                "checkpoints": 0 if self.resume_from_oldest else len(self.checkpoints),
                "checkpoints_read": len(self.checkpoints), "resume_from_oldest": self.resume_from_oldest}


def check(db: sqlite3.Connection) -> str | None:
    """None when the spool is sound, else what is wrong: the first lines of ``quick_check`` (every
    page, b-tree, free list and overflow chain), or a row whose text or kinds cannot be read
    (damage inside a page that keeps its structure)."""
    rows = db.execute("PRAGMA quick_check(20)").fetchall()
    if rows != [("ok",)]:
        return "; ".join(str(r[0]) for r in rows[:5])
    try:
        for table, cols in (("batches", "batch_id, kinds, codec"), ("dead_letters", "batch_id, kinds, reason")):
            for row in db.execute(f"SELECT {cols} FROM {table}"):
                if not isinstance(orjson.loads(row[1]), dict) or not all(isinstance(v, str) for v in row):
                    return f"{table}: a row's columns have the wrong types"
        db.execute("SELECT source, position FROM checkpoints").fetchall()
        db.execute("SELECT key, value FROM meta").fetchall()
    except sqlite3.OperationalError as exc:
        if "decode" not in str(exc):
            raise  # locked, I/O error …: not damage
        return f"a row cannot be read: {exc}"
    except orjson.JSONDecodeError as exc:
        return f"a row cannot be read: {exc}"
    return None


def set_aside(db: sqlite3.Connection, seq: int, reason: str) -> tuple[int, int]:
    """Move a batch row that cannot be read into the dead letters as it is (its body untouched,
    under the id ``unreadable-<seq>``), logged; its priority and size, for the byte count."""
    prio, size = db.execute("SELECT priority, bytes FROM batches WHERE seq=?", (seq,)).fetchone()
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(
            "INSERT INTO dead_letters (batch_id, created, dead_at, n_events, bytes, kinds, body, status, reason,"
            " codec, raw_bytes, crc) SELECT 'unreadable-' || seq, created, ?, n_events, bytes, '{}', body, NULL, ?,"
            " CAST(codec AS BLOB), raw_bytes, crc FROM batches WHERE seq=?", (time.time(), reason[:4000], seq))
        db.execute("DELETE FROM batches WHERE seq=?", (seq,))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    log.error("a spooled batch cannot be read; set aside among the dead letters", seq=seq, reason=reason[:300])
    return int(prio), int(size)


def move_aside(path: Path) -> Path:
    """Rename the spool and its WAL files to ``<name>.corrupt-<UTC time>[-n]``; the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    for suffix in ("-wal", "-shm", ""):  # the WAL first: the file must never be found without it
        src = Path(f"{path}{suffix}")
        if src.exists():
            os.replace(src, f"{target}{suffix}")
    with contextlib.suppress(OSError):
        fsync_path(path.parent)
    return target


def _open(path: Path) -> sqlite3.Connection | None:
    for uri in (f"file:{path}?mode=ro", f"file:{path}"):
        try:
            db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5)
            # lets SQLite read a file shorter than its header says (a truncated spool) instead of
            # refusing it whole; nothing is written through this connection
            db.execute("PRAGMA writable_schema=ON")
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.Error:
            with contextlib.suppress(Exception):
                db.close()
    return None


def _keys(db: sqlite3.Connection, table: str, key: str) -> tuple[list[Any], bool]:
    """The table's keys, walked from both ends; whether the walk saw all of them."""
    seen: dict[Any, None] = {}
    whole = True
    for order in ("ASC", "DESC"):
        try:
            for (k,) in db.execute(f"SELECT {key} FROM {table} ORDER BY {key} {order}"):
                seen[k] = None
            break  # one whole walk is enough
        except sqlite3.Error:
            whole = False
    return list(seen), whole


#: what _rows yields last when the walk of the keys did not reach every row
UNREACHED = ("unreached",)


def _rows(db: sqlite3.Connection, table: str, key: str, cols: str) -> Iterator[tuple[Any, ...] | None]:
    """Each row by its key (None for a row that cannot be read; UNREACHED when some could not be
    found at all: how many is unknown)."""
    keys, whole = _keys(db, table, key)
    for k in keys:
        try:
            row = db.execute(f"SELECT {cols} FROM {table} WHERE {key}=?", (k,)).fetchone()
        except sqlite3.Error:
            row = None
        yield row
    if not whole:
        yield UNREACHED


def _batch_row_ok(row: tuple[Any, ...]) -> bool:
    """Whether a batch row's columns have the types the batch table needs (``_BATCH_COLS``)."""
    batch_id, priority, created, n_events, size, kinds, body, attempts, codec, raw_bytes, crc = row
    ints = (priority, n_events, size, attempts, raw_bytes, crc)
    if not (isinstance(batch_id, str) and isinstance(codec, str) and isinstance(body, bytes)
            and isinstance(created, int | float) and all(isinstance(v, int) for v in ints)):
        return False
    try:
        return isinstance(orjson.loads(kinds), dict)
    except (orjson.JSONDecodeError, TypeError):
        return False


def _dead_row_ok(row: tuple[Any, ...]) -> bool:
    """The same for a dead letter (``_DEAD_COLS``)."""
    batch_id, created, dead_at, n_events, size, kinds, body, status, reason, codec, raw_bytes, crc = row
    return (_batch_row_ok((batch_id, 0, created, n_events, size, kinds, body, 0, codec, raw_bytes, crc))
            and isinstance(dead_at, int | float) and (status is None or isinstance(status, int))
            and isinstance(reason, str))


def body_intact(codec: str, body: bytes, n_events: int, raw_bytes: int, crc: int) -> bool:
    """Whether a spooled body decodes to a JSON array of ``n_events`` (matching its CRC when deflated)."""
    try:
        raw = unpack(codec, bytes(body))
        if codec == CODEC_DEFLATE and (len(raw) != raw_bytes or zlib.crc32(raw, PREFIX_CRC) != crc):
            return False
        if codec not in (CODEC_JSON, CODEC_DEFLATE):
            return False
        events = orjson.loads(raw)
        return isinstance(events, list) and len(events) == n_events
    except (ValueError, zlib.error, TypeError):
        return False


def salvage(moved: Path, problem: str) -> Salvage:
    """Everything that can still be read whole from the spool moved aside to ``moved``."""
    out = Salvage(str(moved), problem)
    db = _open(moved)
    if db is None:  # not a database at all: nothing to read
        out.batches_lost = None
        out.checkpoints_whole = False
        return out
    try:
        lost = 0
        unreached = False
        for row in _rows(db, "batches", "seq", _BATCH_COLS):
            if row is UNREACHED:
                unreached = True
            elif row is not None and _batch_row_ok(row) and body_intact(row[8], row[6], row[3], row[9], row[10]):
                out.batches.append(row)
            else:
                lost += 1
        out.batches_lost = None if unreached else lost
        for row in _rows(db, "dead_letters", "seq", _DEAD_COLS):
            if (row is not None and row is not UNREACHED and _dead_row_ok(row)
                    and body_intact(row[9], row[6], row[3], row[10], row[11])):
                out.dead_letters.append(row)
        for row in _rows(db, "checkpoints", "rowid", "source, position, updated"):
            if row is None or row is UNREACHED or not (
                    isinstance(row[0], str) and isinstance(row[1], str) and isinstance(row[2], int | float)):
                out.checkpoints_whole = False
            else:
                out.checkpoints.append((row[0], row[1], float(row[2])))
        for row in _rows(db, "meta", "rowid", "key, value"):
            if (row is not None and row is not UNREACHED and isinstance(row[0], str) and isinstance(row[1], str)
                    and row[0] != "schema_version"):
                out.meta[row[0]] = row[1]
    finally:
        db.close()
    return out


def restore(db: sqlite3.Connection, found: Salvage) -> dict[str, Any]:
    """Write what was salvaged into the fresh spool ``db`` (one transaction), record the recovery in
    its meta (``recoveries``, ``last_recovery``, ``resume_from_oldest``), log it; the summary."""
    summary = found.summary()
    recoveries = int(found.meta.get("recoveries", "0")) if found.meta.get("recoveries", "").isdigit() else 0
    recoveries += 1
    meta = {**found.meta, "recoveries": str(recoveries), "last_recovery": orjson.dumps(summary).decode()}
    if found.resume_from_oldest:
        meta["resume_from_oldest"] = "1"
    db.execute("BEGIN IMMEDIATE")
    try:
        db.executemany(f"INSERT OR IGNORE INTO batches ({_BATCH_COLS}) VALUES ({', '.join('?' * 11)})",
                       found.batches)
        db.executemany(f"INSERT INTO dead_letters ({_DEAD_COLS}) VALUES ({', '.join('?' * 12)})", found.dead_letters)
        if not found.resume_from_oldest:
            db.executemany("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)", found.checkpoints)
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(meta.items()))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    log.error("the spool was corrupt: moved aside, a fresh one started with what could be read",
              problem=summary["problem"], moved_to=summary["moved_to"], batches_salvaged=summary["batches"],
              events_salvaged=summary["events"], batches_lost=summary["batches_lost"],
              checkpoints_kept=summary["checkpoints"], resume_from_oldest=summary["resume_from_oldest"],
              recoveries=recoveries)
    return summary


def is_corruption(exc: BaseException) -> bool:
    """Whether an error says the spool file is damaged (SQLite's CORRUPT or NOTADB), which only the
    start-up check can mend: the agent exits so that it is started afresh."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return isinstance(exc, sqlite3.DatabaseError) and name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))


def resume_from_oldest(cfg: Any) -> Any:
    """After a recovery that could not keep the checkpoints: the config with every source that
    would start at its end (``start_at: end``) starting at the oldest data it still has instead,
    so that nothing written meanwhile is skipped (the backend dedups what is sent again). A source
    that has a checkpoint again is not affected: its position always wins over ``start_at``."""
    sections = {}
    for name, section in cfg.collectors:
        if getattr(section, "start_at", None) == "end":
            sections[name] = section.model_copy(update={"start_at": "beginning"})
            log.warning("the spool lost the sources' positions: reading from the oldest data", collector=name)
    return cfg.model_copy(update={"collectors": cfg.collectors.model_copy(update=sections)}) if sections else cfg

"""The commands collector's records: one per command, kept in ``commands.db`` while not finished.

Scheduled and running commands are rows of ``<state_dir>/commands.db`` (SQLite, WAL): scheduled
ones survive a restart, and one that was running when the agent died is reported ``failed`` on
the next start. :func:`command_data` is the ``command`` event data of one status change.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    command_id   TEXT PRIMARY KEY,
    state        TEXT NOT NULL,           -- scheduled | running
    line         TEXT NOT NULL,
    user         TEXT NOT NULL,
    operator     TEXT,
    timeout_s    REAL NOT NULL,
    kill         INTEGER NOT NULL,
    due          REAL,                    -- epoch seconds a scheduled command runs at
    scheduled_at TEXT,
    started_at   TEXT,
    pid          INTEGER
)
"""


@dataclass
class CommandRecord:
    """One command the daemon runs; also one row of ``commands.db`` while not finished."""

    command_id: str
    line: str
    user: str
    operator: str | None
    timeout_s: float
    kill: bool
    due: float | None = None
    scheduled_at: str | None = None
    started_at: str | None = None
    pid: int | None = None
    state: str = "scheduled"
    extra: dict[str, Any] = field(default_factory=dict)


class CommandStore:
    """Scheduled and running commands in SQLite (``<state_dir>/commands.db``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(SCHEMA)

    def put(self, r: CommandRecord) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO commands VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (r.command_id, r.state, r.line, r.user, r.operator, r.timeout_s, int(r.kill), r.due,
             r.scheduled_at, r.started_at, r.pid),
        )

    def delete(self, command_id: str) -> None:
        self.db.execute("DELETE FROM commands WHERE command_id = ?", (command_id,))

    def all(self) -> list[CommandRecord]:
        rows = self.db.execute(
            "SELECT command_id, line, user, operator, timeout_s, kill, due, scheduled_at, started_at,"
            " pid, state FROM commands ORDER BY due, command_id"
        ).fetchall()
        return [CommandRecord(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], r[7], r[8], r[9], r[10]) for r in rows]

    def close(self) -> None:
        self.db.close()


def command_data(r: CommandRecord, status: str, shell: str = "system", **fields: Any) -> dict[str, Any]:
    """The ``command`` event data of one status change."""
    data: dict[str, Any] = {
        "command_id": r.command_id,
        "shell": shell,
        "line": r.line,
        "status": status,
        "operator": r.operator,
        "user": r.user,
        "scheduled_at": r.scheduled_at,
        "started_at": r.started_at,
    }
    data.update(fields)
    return {k: v for k, v in data.items() if v is not None}

"""Journal entries as rows of the fields the collector uses: one tuple per entry.

A row is ``(cursor, realtime_usec, *values)``, the values in :data:`FIELDS` order, each the
field's raw bytes or None; a field an entry gives twice keeps its first value. The compiled
reader (``_rows.c``, built with the package where a C compiler and libsystemd's headers are at
hand) reads a whole chunk in one call, with the GIL released for the libsystemd work; the pure
Python reader here gives the same rows through ``_get_all`` and is used where the compiled one
is missing, or refuses the reader object. ``tests/test_journald_fastpath.py`` holds both to the
same events.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from collectors.derivers.provenance import SENDER_FIELDS

#: the fields a row carries, in order: what an event and the derivers' sender record need
FIELDS: tuple[str, ...] = (
    "PRIORITY", "SYSLOG_IDENTIFIER", "_COMM", "SYSLOG_FACILITY", "_SYSTEMD_UNIT", "_HOSTNAME",
    "_TRANSPORT", "_BOOT_ID", "_UID", "_PID", "SYSLOG_PID", "MESSAGE",
    *(f for f, _ in SENDER_FIELDS if f not in {"_UID", "_PID", "_COMM", "_SYSTEMD_UNIT", "_TRANSPORT"}),
)
FIELDS_B = tuple(f.encode() for f in FIELDS)
MESSAGE = FIELDS.index("MESSAGE")
#: ``ALPACON_JOURNAL_READER=python`` makes the collector use the pure-Python reader
ENV = "ALPACON_JOURNAL_READER"

Row = tuple[Any, ...]
#: ``(reader, fields, spec, max_entries, max_bytes, pending, frags)
#: -> (events, hits, slow, at_end, cursor, n)`` (format.c says what each is)
EventReader = Callable[..., tuple[list[Any], list[Any], list[Any], bool, str | None, int]]
#: ``(reader, max_entries, max_bytes, message_cap, pending) -> (rows, at_end)``
RowReader = Callable[[Any, int, int, int, bool], tuple[list[Row], bool]]


def python_rows(r: Any, max_entries: int, max_bytes: int, message_cap: int, pending: bool) -> tuple[list[Row], bool]:
    """Up to ``max_entries`` rows (or until the messages, each counted up to ``message_cap``,
    reach ``max_bytes``), and whether the end of the journal was reached; ``pending``: the
    reader already sits on an unread entry."""
    nxt, get_all, get_cursor, get_rt = r._next, r._get_all, r._get_cursor, r._get_realtime
    rows: list[Row] = []
    nbytes = 0
    names = FIELDS
    while len(rows) < max_entries and nbytes < max_bytes:
        if pending:
            pending = False
        elif not nxt():
            return rows, True
        d = get_all()
        values = [d.get(f) for f in names]
        if list in map(type, values):  # a field given twice: its first value
            values = [v[0] if type(v) is list else v for v in values]
        message = values[MESSAGE]
        if message is not None:
            nbytes += min(len(message), message_cap)
        rows.append((get_cursor(), get_rt(), *values))
    return rows, False


def compiled() -> RowReader | None:
    """The compiled reader, or None when it was not built here."""
    try:
        from collectors.journald import _rows  # type: ignore[attr-defined]
    except ImportError:
        return None
    read = _rows.read_rows

    def compiled_rows(r: Any, max_entries: int, max_bytes: int, message_cap: int,
                      pending: bool) -> tuple[list[Row], bool]:
        rows, at_end = read(r, FIELDS_B, MESSAGE, max_entries, max_bytes, message_cap, pending)
        return rows, bool(at_end)

    return compiled_rows


def events() -> EventReader | None:
    """The compiled formatter (``format.c``'s ``read_events``), or None when it was not built.

    It reads like :func:`compiled` and finishes the common entries as event JSON; the others
    come back as ``(row, key)`` for the collector's Python loop, which gives the same events
    (its fields must start as :data:`FIELDS` does)."""
    try:
        from collectors.journald import _rows  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _rows.read_events


def choose(reader: Any) -> tuple[str, RowReader, str | None]:
    """``(name, reader, why)``: the compiled reader when it is built and accepts ``reader``, else
    Python's, with why (None when the compiled one was not asked for or not built)."""
    if os.environ.get(ENV) == "python":
        return "python", python_rows, None
    fast = compiled()
    if fast is None:
        return "python", python_rows, None
    try:
        fast(reader, 0, 0, 0, False)  # checks the reader object's type and layout; reads nothing
    except TypeError as exc:
        return "python", python_rows, str(exc)
    return "compiled", fast, None

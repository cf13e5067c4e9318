"""Event kinds, timestamps and deterministic event ids: the vocabulary every part shares."""

from __future__ import annotations

import functools
import hashlib
import os
import time
from datetime import UTC, datetime
from typing import Any

from agent.typing import Event

#: All kinds of the wire protocol, in the order DESIGN.md lists them.
KINDS: tuple[str, ...] = (
    "system_log",
    "websh_session",
    "websh_command",
    "webftp_transfer",
    "command",
    "user_activity",
    "metrics",
    "websh_recording",
)
#: Kinds that are audit records: never evicted while bulk data can go instead.
AUDIT_KINDS: frozenset[str] = frozenset(
    {"websh_session", "websh_command", "webftp_transfer", "command", "user_activity", "websh_recording"}
)
#: Kinds that are evicted first when the spool is full.
BULK_KINDS: frozenset[str] = frozenset({"system_log", "metrics"})

#: Spool priority of a batch: bulk batches are evicted before audit ones.
PRIORITY_BULK = 0
PRIORITY_AUDIT = 1


def priority_of(kind: str) -> int:
    """The eviction class of a kind: audit kinds outlive bulk ones."""
    return PRIORITY_AUDIT if kind in AUDIT_KINDS else PRIORITY_BULK


def format_ts(value: float | datetime | None = None) -> str:
    """RFC 3339 UTC with milliseconds (``2026-11-26T20:00:00.123Z``) from epoch seconds or a datetime."""
    if value is None:
        value = time.time()
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.timestamp()
    ms = int(round(value * 1000))
    secs, millis = divmod(ms, 1000)
    return _second(secs) + f".{millis:03d}Z"


@functools.lru_cache(maxsize=4096)
def _second(secs: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))


def format_ts_us(usec: int) -> str:
    """RFC 3339 UTC with milliseconds from epoch microseconds (journald's realtime clock)."""
    secs, rest = divmod(usec, 1_000_000)
    return _second(secs) + f".{rest // 1000:03d}Z"


def parse_ts(text: str) -> float:
    """Epoch seconds from an RFC 3339 timestamp (any offset); raises ValueError on garbage."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def stable_id(namespace: str, *parts: Any) -> str:
    """A deterministic event id: the same source position always gives the same id.

    ``namespace`` names the kind of source (``jd`` for journald, ``f`` for files …),
    ``parts`` its position (cursor; device, inode, fingerprint and offset …).
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(namespace.encode())
    for p in parts:
        h.update(b"\x1f")
        h.update(str(p).encode("utf-8", "surrogateescape"))
    return f"{namespace}-{h.hexdigest()}"


def new_id(prefix: str = "ev") -> str:
    """A fresh random id for pushed events; assigned once and persisted before any answer."""
    return f"{prefix}-{os.urandom(16).hex()}"


def make_event(kind: str, data: dict[str, Any], *, ts: str | None = None, id: str | None = None) -> Event:
    """An event as collectors emit it; the pipeline adds ``server`` and, if missing, ``id``."""
    ev: Event = {"kind": kind, "ts": ts or format_ts(), "data": data}
    if id is not None:
        ev["id"] = id
    return ev


def settings_change_event(agent_id: str, result: int, details: dict[str, Any]) -> Event:
    """The agent's own reload as user activity of kind ``settings_change`` (result 200 or 500)."""
    data = {"user": "root", "ip": None, "action": "settings_change", "result": result,
            "details": {"service": "alpacon-agent", "what": "reload", **details}}
    ev = make_event("user_activity", data)
    ev["id"] = stable_id("settings", agent_id, ev["ts"], result)
    return ev

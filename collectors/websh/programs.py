"""A program of a session, as the exec trail knows it: argv, uid, cwd, start, end and exit status."""

from __future__ import annotations

import pwd
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.events import format_ts

MAX_ARGV_BYTES = 8192
#: words beyond this are dropped (the marker says how many there were)
MAX_ARGV_WORDS = 1024


@dataclass(slots=True)
class Program:
    """One exec in the session's tree: what ran, as whom, where, for how long, with what result."""

    pid: int
    ppid: int
    start_ns: int
    started_at: float
    argv: list[str] | None = None
    exe: str | None = None
    cwd: str | None = None
    uid: int | None = None
    euid: int | None = None
    end_ns: int | None = None
    exit_status: int | None = None
    argv_from: str | None = None
    truncated: bool = False
    claimed: bool = field(default=False)

    @property
    def ended(self) -> bool:
        return self.end_ns is not None

    @property
    def duration_ms(self) -> int | None:
        if self.end_ns is None:
            return None
        return max(0, (self.end_ns - self.start_ns) // 1_000_000)

    def text(self) -> str:
        """The argv as one command line (the words joined by spaces)."""
        if self.argv is None:
            return self.exe or ""
        return " ".join(self.argv)

    def to_data(self, redact: Callable[[str], str]) -> dict[str, Any]:
        """The program as it appears in a record (argv redacted like every command)."""
        data: dict[str, Any] = {
            "argv": [redact(a) for a in self.argv] if self.argv is not None else None,
            "pid": self.pid,
            "started_at": format_ts(self.started_at),
            "ppid": self.ppid,
            "uid": self.uid,
            "user": user_name(self.uid),
            "euid": self.euid,
            "cwd": self.cwd,
            "exit_code": self.exit_status,
            "duration_ms": self.duration_ms,
        }
        if self.truncated:
            data["truncated"] = True
        return data


_NAMES: dict[int, str | None] = {}


def user_name(uid: int | None) -> str | None:
    """The login name of ``uid`` (cached), or None."""
    if uid is None or uid < 0:
        return None
    if uid not in _NAMES:
        try:
            _NAMES[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            _NAMES[uid] = None
    return _NAMES[uid]


def text_of(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def argv_of(raw: list[bytes]) -> tuple[list[str], bool]:
    """An argv as text, bounded in bytes and words; and whether it was cut."""
    out: list[str] = []
    total = 0
    for n, a in enumerate(raw):
        if n >= MAX_ARGV_WORDS:
            out.append(f"…[truncated: argv of {len(raw)} words]")
            return out, True
        if total + len(a) > MAX_ARGV_BYTES:
            out.append(text_of(a[: max(0, MAX_ARGV_BYTES - total)]) + f"…[truncated: argv of {len(raw)} words]")
            return out, True
        total += len(a)
        out.append(text_of(a))
    return out, False

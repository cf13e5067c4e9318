"""Turns shell marks and typed lines into command records: one record per command, in order.

Marks (from the shell hooks, see ``collectors/websh/shell``):

- ``S;<base64 of TEXT NUL CWD>`` (bash: TEXT is ``history 1``) / ``T;…`` (zsh: TEXT as typed):
  a command starts;
- ``D;<exit status>[;<next history number>]``: a prompt is about to be drawn (after a command,
  an empty Enter, Ctrl-C …); it ends the open command, if any;
- ``C``: a continuation prompt (PS2): the shell waits for more lines of the same command.

Lines typed at the PTY fill in where the hooks are silent: a ``D`` with no ``S`` after a
non-empty line means PS0/preexec is gone; lines with no mark at all for a while mean both hooks
are gone; lines typed to a nested shell are recorded as they are. Those records say
``source: "input"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from collectors.websh.marks import Mark

MAX_COMMAND_BYTES = 65_536
#: with no mark at all this long after a line typed at the integrated shell, the hooks are gone
HOOKS_LOST_AFTER_S = 2.0

_HISTORY_LINE = re.compile(r"\A\s*(\d+)[* ] (.*)\Z", re.S)


@dataclass(slots=True)
class CommandRecord:
    """One command of the session, as delivered in ``websh_command``."""

    seq: int
    command: str
    started_at: float
    duration_ms: int | None
    exit_code: int | None
    cwd: str | None
    source: str
    truncated: bool = False


@dataclass(slots=True)
class _Open:
    command: str
    started_at: float
    cwd: str | None
    source: str
    truncated: bool


@dataclass(slots=True)
class _Pending:
    text: str
    at: float
    cwd: str | None
    truncated: bool
    marks_seen: int = field(default=0)


def cap_command(text: str, limit: int = MAX_COMMAND_BYTES) -> tuple[str, bool]:
    """``text`` cut to ``limit`` UTF-8 bytes with a visible marker, and whether it was cut."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text, False
    head = raw[:limit].decode("utf-8", "ignore")
    return f"{head}…[truncated: {len(raw)} bytes]", True


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


class CommandTracker:
    """Builds :class:`CommandRecord` objects and hands each, when complete, to ``emit``."""

    def __init__(
        self,
        emit: Callable[[CommandRecord], None],
        *,
        integrated: bool = True,
        max_command_bytes: int = MAX_COMMAND_BYTES,
        hooks_lost_after_s: float = HOOKS_LOST_AFTER_S,
    ) -> None:
        self._emit = emit
        self.integrated = integrated
        self.max_command_bytes = max_command_bytes
        self.hooks_lost_after_s = hooks_lost_after_s
        self.count = 0
        self._open: _Open | None = None
        self._pending: list[_Pending] = []
        self._marks = 0
        self._next_hist: int | None = None
        self._last_hist: int | None = None

    # -- marks -----------------------------------------------------------------------------

    def mark(self, m: Mark, now: float) -> None:
        """Apply one mark from the shell hooks."""
        self._marks += 1
        self.integrated = True
        if m.type in ("S", "T"):
            self._start(m, now)
        elif m.type == "D":
            self._done(m, now)
        # "C" (continuation) only proves the hooks are alive

    def _start(self, m: Mark, now: float) -> None:
        if self._open is not None:  # the previous command never reported back
            self._finish(None, now)
        lines, self._pending = self._pending, []
        payload = m.b64(0)
        text: str | None = None
        cwd: str | None = None
        truncated = m.overflow
        if payload is not None:
            raw_text, _, raw_cwd = payload.partition(b"\0")
            cwd = _decode(raw_cwd) or None
            decoded = _decode(raw_text)
            if m.type == "T":
                text = decoded if decoded else None
            else:
                text = self._from_history(decoded)
        source = "shell"
        if text is None:
            typed = [p for p in lines if p.text.strip()]
            text = "\n".join(p.text for p in typed)
            truncated = truncated or any(p.truncated for p in typed)
            source = "input"
            if cwd is None and typed:
                cwd = typed[0].cwd
        self._open = _Open(text, now, cwd, source, truncated)

    def _from_history(self, line: str) -> str | None:
        m = _HISTORY_LINE.match(line)
        if m is None:
            return None
        num = int(m.group(1))
        if self._next_hist is not None and num < self._next_hist:
            return None  # not added to the history (history off, or ignored): use the input
        if self._last_hist is not None and num <= self._last_hist:
            return None
        self._last_hist = num
        text = m.group(2)
        return text.rstrip("\n")

    def _done(self, m: Mark, now: float) -> None:
        status = m.int(0)
        nxt = m.int(1)
        if nxt is not None:
            self._next_hist = nxt
        if self._open is not None:
            self._pending = []  # lines typed meanwhile went to the command, not the shell
            self._finish(status, now)
            return
        if self._pending:
            first = self._pending.pop(0)
            self._pending = []
            if _is_command(first.text):  # the shell ran it, but its preexec hook is gone
                self._record(first.text, first.at, now, status, first.cwd, "input", first.truncated)

    def _finish(self, status: int | None, now: float) -> None:
        op = self._open
        assert op is not None
        self._open = None
        self._record(op.command, op.started_at, now, status, op.cwd, op.source, op.truncated)

    # -- typed lines -------------------------------------------------------------------------

    def line(self, text: str, now: float, *, top_level: bool, cwd: str | None, truncated: bool = False) -> None:
        """A line typed and echoed: at the session's own shell (``top_level``) or a nested one."""
        if not top_level or not self.integrated:
            if _is_command(text):
                self._record(text, now, None, None, cwd, "input", truncated)
            return
        self._pending.append(_Pending(text, now, cwd, truncated, self._marks))

    def tick(self, now: float) -> None:
        """Notice hooks that went away: typed lines with no mark at all for a while."""
        if not self._pending or not self.integrated:
            return
        first = self._pending[0]
        if self._marks != first.marks_seen or now - first.at < self.hooks_lost_after_s:
            return
        if self._open is not None and len(self._pending) < 2:
            return  # one line typed to a running builtin (read …): wait for its prompt
        self.integrated = False
        if self._open is not None:
            self._finish(None, now)
        lines, self._pending = self._pending, []
        for p in lines:
            if _is_command(p.text):
                self._record(p.text, p.at, None, None, p.cwd, "input", p.truncated)

    def close(self, now: float, exit_status: int | None) -> None:
        """The shell ended: the open command (``exit`` …) ends with the shell's status."""
        if self._open is not None:
            self._finish(exit_status, now)
        lines, self._pending = self._pending, []
        if not self.integrated:
            for p in lines:
                if _is_command(p.text):
                    self._record(p.text, p.at, None, None, p.cwd, "input", p.truncated)

    def _record(
        self,
        text: str,
        started: float,
        now: float | None,
        status: int | None,
        cwd: str | None,
        source: str,
        truncated: bool,
    ) -> None:
        text, cut = cap_command(text, self.max_command_bytes)
        self.count += 1
        duration = None if now is None else max(0, int(round((now - started) * 1000)))
        self._emit(CommandRecord(self.count, text, started, duration, status, cwd, source, truncated or cut))


def _is_command(text: str) -> bool:
    s = text.strip()
    return bool(s) and not s.startswith("#")

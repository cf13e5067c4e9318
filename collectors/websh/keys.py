"""The typed-keys witness: lines typed at a shell, rebuilt from the keys and confirmed by the echo.

The relay hands over every key it passes to the shell, with the terminal's state at that moment.
Keys for a shell (the session's own, a nested one, or one behind ``sudo``/``su``/``script`` that
waits at its prompt) go through the :class:`LineEditor`; a finished line is handed on to the
tracker only once the screen has shown it (:class:`EchoCheck`): input that never appeared, such
as a password typed where echo is off, is never recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from collectors.websh.inputline import EchoCheck, LineEditor

ECHO_WAIT_S = 2.0


@dataclass
class _Awaiting:
    text: str
    truncated: bool
    exact: bool
    since: int
    index: int
    at: float
    top_level: bool
    cwd: str | None
    uid: int | None
    user: str | None
    shell_pid: int | None
    prefix: bytes = b""


#: how much of the output before a line is kept, to know where its screen row began
ROW_TAIL = 512


class TypedInput:
    """See the module's docstring; ``line`` is :meth:`CommandTracker.line`."""

    def __init__(self, line: Callable[..., Any]) -> None:
        self._line = line
        self.editor = LineEditor()
        self.echo = EchoCheck()
        self.awaiting: list[_Awaiting] = []
        self._line_start = 0
        self._prefix = b""
        #: the last output bytes (whatever the state): the row a line starts on
        self.tail = b""

    @property
    def wants_output(self) -> bool:
        """The screen's output is needed (a line waits for its echo, or one is being typed)."""
        return bool(self.awaiting) or not self.editor.empty

    def waiting_since(self) -> list[float]:
        """When each line still waiting for its echo was typed."""
        return [a.at for a in self.awaiting]

    def keys(
        self,
        data: bytes,
        now: float,
        *,
        secret: bool,
        top_level: bool,
        cwd: str | None,
        uid: int | None = None,
        user: str | None = None,
        shell_pid: int | None = None,
    ) -> None:
        """Keys typed at a shell (``secret``: at a no-echo prompt; ``shell_pid``: that shell)."""
        if self.editor.empty:
            self._line_start = self.echo.offset
            self._prefix = self.tail[self.tail.rfind(b"\n") + 1:]
        lines = self.editor.feed(data, secret=secret)
        if lines:
            for i, ln in enumerate(lines):
                self.awaiting.append(
                    _Awaiting(ln.text, ln.truncated, ln.exact, self._line_start, i, now, top_level, cwd, uid, user,
                              shell_pid, self._prefix)
                )
            self.confirm()

    def not_for_a_shell(self) -> None:
        self.editor.reset()  # keys for a program (vim, top, a REPL …), not for a shell

    def output(self, visible: bytes) -> None:
        """Every piece of output (cheap): the last bytes are kept."""
        self.tail = visible[-ROW_TAIL:] if len(visible) >= ROW_TAIL else self.tail[-ROW_TAIL:] + visible

    def shown(self, visible: bytes) -> None:
        """Output the user saw while a line is typed or waits for its echo."""
        self.echo.add(visible)
        if self.awaiting:
            self.confirm()

    def confirm(self) -> None:
        """Hand on, in the order they were typed, the typed lines the screen has shown by now. A line
        the keys cannot tell exactly (Tab completion, history recall) is never shown as typed: it is
        dropped once a later line is shown, so that it holds up no other."""
        shown = [self.echo.shown(a.text, a.since, a.index, a.prefix) for a in self.awaiting]
        i = 0
        while i < len(self.awaiting):
            a = self.awaiting[i]
            if shown[i]:
                self._line(a.text, a.at, top_level=a.top_level, cwd=a.cwd, truncated=a.truncated, exact=a.exact,
                           uid=a.uid, user=a.user, shell_pid=a.shell_pid)
            elif a.exact or not any(shown[i + 1:]):
                break
            i += 1
        del self.awaiting[:i]
        if not self.awaiting and self.editor.empty:
            self.echo.trim(self.echo.offset)

    def expire(self, now: float) -> None:
        if self.awaiting and now - self.awaiting[0].at > ECHO_WAIT_S:
            # never shown on screen (typed at a prompt that does not echo): not recorded
            self.awaiting = [a for a in self.awaiting if now - a.at <= ECHO_WAIT_S]
        if not self.awaiting and self.editor.empty:
            self.echo.trim(self.echo.offset)

"""Rebuilds the lines a user types at the PTY, for shells that report no commands themselves.

:class:`LineEditor` applies the basic line editing a terminal or a simple shell does
(backspace, Ctrl-U, Ctrl-W, Ctrl-C), skips escape sequences (arrows, function keys) and keeps
bracketed-paste content. A line any byte of which was typed while the terminal was in a
password prompt (echo off, canonical mode) is dropped whole: it never leaves this object.

:class:`EchoCheck` keeps what the screen showed since a line was typed, so that a line is only
recorded once the program echoed it: input that never appeared on screen (a password typed
into a nested terminal we cannot see the settings of) is never recorded either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_LINE_BYTES = 65_536

_BS = (0x7F, 0x08)
_CTRL_C, _CTRL_U, _CTRL_W = 0x03, 0x15, 0x17
_PASTE_ON = b"200~"
_PASTE_OFF = b"201~"

# escape sequences in output: CSI, OSC (BEL or ST), DCS/APC/PM/SOS strings, charset, short ones
_ESCAPES = re.compile(
    rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[PX^_][^\x1b]*(?:\x1b\\)?"
    rb"|[()*+#%][0-9A-Za-z@]|[ -/]*[0-~])"
)
_CONTROLS = re.compile(rb"[\x00-\x07\x0b-\x1f]")
_ERASE = re.compile(rb"[^\x08\n]\x08")


@dataclass(frozen=True, slots=True)
class TypedLine:
    """A completed input line (editing applied)."""

    text: str
    truncated: bool = False


class LineEditor:
    """Keystrokes in, completed lines out; state carries across reads."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._secret = False
        self._truncated = False
        self._esc = 0  # 0 none, 1 after ESC, 2 in CSI, 3 after ESC O
        self._csi = bytearray()
        self._paste = False

    @property
    def empty(self) -> bool:
        """No keystroke of an unfinished line is held."""
        return not self._buf and not self._secret

    def reset(self) -> None:
        """Forget the unfinished line."""
        self._buf.clear()
        self._secret = False
        self._truncated = False

    def feed(self, data: bytes, secret: bool = False) -> list[TypedLine]:
        """Apply ``data``; ``secret`` says the terminal was at a no-echo prompt when it was typed."""
        if secret:
            self._secret = True
        lines: list[TypedLine] = []
        buf = self._buf
        for b in data:
            if self._esc:
                self._escape(b)
                continue
            if b == 0x1B:
                self._esc = 1
            elif b in (0x0D, 0x0A):
                if self._paste:
                    self._add(0x0A)
                    continue
                if not self._secret:
                    text = bytes(buf).decode("utf-8", "backslashreplace")
                    lines.append(TypedLine(text, self._truncated))
                self.reset()
            elif b in _BS:
                while buf and (buf[-1] & 0xC0) == 0x80:
                    buf.pop()
                if buf:
                    buf.pop()
            elif b == _CTRL_U:
                buf.clear()
            elif b == _CTRL_W:
                while buf and buf[-1] in b" \t":
                    buf.pop()
                while buf and buf[-1] not in b" \t":
                    buf.pop()
            elif b == _CTRL_C:
                self.reset()
            elif b >= 0x20 or (b == 0x09 and self._paste):
                self._add(b)
        return lines

    def _add(self, b: int) -> None:
        if len(self._buf) >= self.max_line_bytes:
            self._truncated = True
            return
        self._buf.append(b)

    def _escape(self, b: int) -> None:
        if self._esc == 1:
            if b == 0x5B:  # [
                self._esc = 2
                self._csi.clear()
            elif b == 0x4F:  # O: SS3, one more byte
                self._esc = 3
            else:
                self._esc = 0  # Alt-key: ESC + one byte
        elif self._esc == 2:
            if 0x40 <= b <= 0x7E:
                self._csi.append(b)
                if self._csi == _PASTE_ON:
                    self._paste = True
                elif self._csi == _PASTE_OFF:
                    self._paste = False
                self._esc = 0
            elif len(self._csi) < 32:
                self._csi.append(b)
        else:
            self._esc = 0


def visible_text(data: bytes) -> str:
    """What a line of terminal output shows as text: escapes dropped, backspaces applied."""
    data = _ESCAPES.sub(b"", data)
    data = _CONTROLS.sub(b"", data.replace(b"\r", b""))
    for _ in range(64):
        if b"\x08" not in data:
            break
        data = _ERASE.sub(b"", data)
    data = data.replace(b"\x08", b"")
    return data.decode("utf-8", "replace")


class EchoCheck:
    """A bounded window of recent output, to see whether a typed line was echoed on screen.

    A line counts as shown when, in the output since its first keystroke, one of the first
    screen lines ends with it (a program's echo ends where Enter was pressed); each line of a
    multi-line paste must be found that way, in order.
    """

    def __init__(self, max_bytes: int = 262_144) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]

    @property
    def offset(self) -> int:
        """The stream offset of the next output byte: where a line typed now starts."""
        return self._base + len(self._buf)

    def add(self, data: bytes) -> None:
        """Append output the user saw."""
        self._buf += data
        extra = len(self._buf) - self.max_bytes
        if extra > 0:
            del self._buf[:extra]
            self._base += extra

    def trim(self, before: int) -> None:
        """Drop output before stream offset ``before`` (no line waits on it any more)."""
        cut = min(max(before - self._base, 0), len(self._buf))
        if cut:
            del self._buf[:cut]
            self._base += cut

    def shown(self, text: str, since: int, index: int = 0) -> bool:
        """Whether ``text`` was echoed after stream offset ``since`` (``index``: lines ahead of it)."""
        start = max(since - self._base, 0)
        screen = visible_text(bytes(self._buf[start:])).split("\n")
        parts = text.split("\n")
        window = len(parts) + index + 1
        row = 0
        for part in parts:
            part = part.strip()
            if not part:
                continue
            while row < min(window, len(screen)) and not screen[row].rstrip().endswith(part):
                row += 1
            if row >= min(window, len(screen)):
                return False
            row += 1
        return True

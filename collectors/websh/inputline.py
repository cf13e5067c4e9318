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
_CTRL_A, _CTRL_B, _CTRL_E, _CTRL_F, _CTRL_K = 0x01, 0x02, 0x05, 0x06, 0x0B
_PASTE_ON = b"200~"
_PASTE_OFF = b"201~"

# escape sequences in output: CSI, OSC (BEL or ST), DCS/APC/PM/SOS strings, charset, short ones
_ESCAPES = re.compile(
    rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[PX^_][^\x1b]*(?:\x1b\\)?"
    rb"|[()*+#%][0-9A-Za-z@]|[ -/]*[0-~])"
)
_CONTROLS = re.compile(rb"[\x00-\x07\x0b-\x1f]")
#: escape sequences as text: CSI (params, final), or any other (OSC, DCS, charset …) to drop
_ESC_STR = re.compile(
    r"\x1b(?:\[([0-?]*)[ -/]*([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[PX^_][^\x1b]*(?:\x1b\\)?"
    r"|[()*+#%][0-9A-Za-z@]|[ -/]*[0-~])"
)


@dataclass(frozen=True, slots=True)
class TypedLine:
    """A completed input line (editing applied)."""

    text: str
    truncated: bool = False
    #: every key of the line was understood (no Tab completion, history recall, search …)
    exact: bool = True


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
        self._cur = 0  # the cursor, as an index into _buf
        self._inexact = False

    @property
    def empty(self) -> bool:
        """No keystroke of an unfinished line is held."""
        return not self._buf and not self._secret

    def reset(self) -> None:
        """Forget the unfinished line."""
        self._buf.clear()
        self._secret = False
        self._truncated = False
        self._cur = 0
        self._inexact = False

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
                    lines.append(TypedLine(text, self._truncated, not self._inexact))
                self.reset()
            elif b in _BS:
                start = self._char_before(self._cur)
                del buf[start:self._cur]
                self._cur = start
            elif b == _CTRL_U:
                del buf[:self._cur]
                self._cur = 0
            elif b == _CTRL_W:
                i = self._cur
                while i and buf[i - 1] in b" \t":
                    i -= 1
                while i and buf[i - 1] not in b" \t":
                    i -= 1
                del buf[i:self._cur]
                self._cur = i
            elif b == _CTRL_C:
                self.reset()
            elif b == _CTRL_A:
                self._cur = 0
            elif b == _CTRL_E:
                self._cur = len(buf)
            elif b == _CTRL_B:
                self._cur = self._char_before(self._cur)
            elif b == _CTRL_F:
                self._cur = self._char_after(self._cur)
            elif b == _CTRL_K:
                del buf[self._cur:]
            elif b >= 0x20 or (b == 0x09 and self._paste):
                self._add(b)
            else:  # Tab completion, Ctrl-R search …: the shell changes the line in ways not followed
                self._inexact = True
        return lines

    def _char_before(self, i: int) -> int:
        buf = self._buf
        if i <= 0:
            return 0
        i -= 1
        while i and (buf[i] & 0xC0) == 0x80:
            i -= 1
        return i

    def _char_after(self, i: int) -> int:
        buf = self._buf
        if i >= len(buf):
            return len(buf)
        i += 1
        while i < len(buf) and (buf[i] & 0xC0) == 0x80:
            i += 1
        return i

    def _add(self, b: int) -> None:
        if len(self._buf) >= self.max_line_bytes:
            self._truncated = True
            return
        self._buf.insert(self._cur, b)
        self._cur += 1

    def _key(self, final: int, params: bytes) -> None:
        """A cursor key (CSI or SS3 ``final``): followed when it only moves along the line."""
        if final == 0x44:  # Left
            self._cur = self._char_before(self._cur)
        elif final == 0x43:  # Right
            self._cur = self._char_after(self._cur)
        elif final == 0x48 or (final == 0x7E and params in (b"1", b"7")):  # Home
            self._cur = 0
        elif final == 0x46 or (final == 0x7E and params in (b"4", b"8")):  # End
            self._cur = len(self._buf)
        elif final == 0x7E and params == b"3":  # Delete
            del self._buf[self._cur:self._char_after(self._cur)]
        else:  # Up/Down (history recall), function keys …
            self._inexact = True

    def _escape(self, b: int) -> None:
        if self._esc == 1:
            if b == 0x5B:  # [
                self._esc = 2
                self._csi.clear()
            elif b == 0x4F:  # O: SS3, one more byte
                self._esc = 3
            else:
                self._esc = 0  # Alt-key: ESC + one byte (word moves, edits …)
                self._inexact = True
        elif self._esc == 2:
            if 0x40 <= b <= 0x7E:
                params = bytes(self._csi)
                self._csi.append(b)
                if self._csi == _PASTE_ON:
                    self._paste = True
                elif self._csi == _PASTE_OFF:
                    self._paste = False
                else:
                    self._key(b, params)
                self._esc = 0
            elif len(self._csi) < 32:
                self._csi.append(b)
        else:
            self._esc = 0
            self._key(b, b"")


def visible_text(data: bytes, max_lines: int | None = None, cols: int | None = None) -> str:
    """What terminal output shows, line by line: printed characters at the cursor, with the cursor
    moves (backspace, carriage return, left/right, column) and line edits (erase, insert, delete
    characters) a line editor redraws with; other escapes dropped. ``max_lines``: stop after that
    many. ``cols``: the terminal's width; a line longer than it wraps onto the next screen row and
    stays one line here (a carriage return then goes to the start of that row, as zle relies on)."""
    lines: list[str] = []
    row: list[str] = []
    cur = 0
    base = 0  # where the screen row the cursor is on starts, in the (wrapped) line
    text = data.decode("utf-8", "replace")
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        i += 1
        if c == "\n":
            lines.append("".join(row).rstrip())
            if max_lines is not None and len(lines) >= max_lines:
                return "\n".join(lines)
            row, cur, base = [], 0, 0
        elif c == "\r":
            cur = base
        elif c == "\x08":
            cur = max(base, cur - 1)
        elif c == "\x1b":
            m = _ESC_STR.match(text, i - 1)
            if m is None:
                continue
            i = m.end()
            if m.group(1) is not None:
                cur = base + _csi(row, cur - base, m.group(1), m.group(2), base)
        elif c >= " " and c != "\x7f":
            if cols and cur - base >= cols:
                base += cols  # autowrap onto the next row of the same line
            if cur < len(row):
                row[cur] = c
            else:
                row.extend(" " * (cur - len(row)))
                row.append(c)
            cur += 1
    lines.append("".join(row).rstrip())
    return "\n".join(lines)


def _csi(row: list[str], col: int, params: str, final: str, base: int = 0) -> int:
    """Apply one CSI sequence to the screen row starting at ``base`` of ``row``; the new column."""
    try:
        num = int(params.split(";")[0] or 0)
    except ValueError:
        num = 0
    count = max(num, 1)
    cur = base + col
    if final == "K":
        if num == 0:
            del row[cur:]
        elif num == 1:
            upto = min(cur + 1, len(row))
            row[base:upto] = [" "] * max(0, upto - base)
        else:
            del row[base:]
    elif final == "D":
        col = max(0, col - count)
    elif final == "C":
        col += count
    elif final == "G":
        col = count - 1
    elif final == "P":
        del row[cur:cur + count]
    elif final == "@":
        row[cur:cur] = [" "] * count
    return col


class EchoCheck:
    """A bounded window of recent output, to see whether a typed line was echoed on screen.

    A line counts as shown when, in the output since its first keystroke, one of the first
    screen lines ends with it (a program's echo ends where Enter was pressed); each line of a
    multi-line paste must be found that way, in order.
    """

    def __init__(self, max_bytes: int = 262_144, cols: int | None = None) -> None:
        self.max_bytes = max_bytes
        #: the terminal's width (long lines wrap), when known
        self.cols = cols
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

    def shown(self, text: str, since: int, index: int = 0, prefix: bytes = b"") -> bool:
        """Whether ``text`` was echoed after stream offset ``since`` (``index``: lines ahead of it;
        ``prefix``: what the screen row held before ``since``, the prompt, for where lines wrap)."""
        start = max(since - self._base, 0)
        parts = text.split("\n")
        window = len(parts) + index + 1
        screen = visible_text(prefix + bytes(self._buf[start:]), max_lines=window + 1, cols=self.cols).split("\n")
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

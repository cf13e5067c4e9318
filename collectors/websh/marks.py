"""Finds the recorder's own OSC marks in the PTY output stream and removes them from it.

A mark is ``ESC ] 6973 ; <nonce> ; <type> ; <field> ; … BEL`` (an OSC sequence in the style of
OSC 133, under a private number). Only marks carrying this session's random nonce are taken
and stripped; every other byte, other OSC sequences included, passes through untouched. A mark
may be split across any number of reads: the parser holds the partial bytes until it can decide.

The hot path (no ESC ] in a chunk) is a single ``bytes.find`` and returns the chunk itself.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

OSC = b"\x1b]"
BEL = 0x07
MARK_NUMBER = b"6973"
#: a mark's payload beyond this is dropped (the mark still ends where its terminator is)
MAX_MARK_BYTES = 2 * 1024 * 1024
#: how far the alternate-screen switch sequences are looked for
_ALT_ON = (b"\x1b[?1049h", b"\x1b[?1047h", b"\x1b[?47h")
_ALT_OFF = (b"\x1b[?1049l", b"\x1b[?1047l", b"\x1b[?47l")


@dataclass(frozen=True, slots=True)
class Mark:
    """One mark from the shell hooks: its type letter and its ``;``-separated fields."""

    type: str
    fields: tuple[bytes, ...]
    overflow: bool = False

    def b64(self, index: int) -> bytes | None:
        """Field ``index`` decoded from base64, or None when absent or not base64."""
        if index >= len(self.fields):
            return None
        try:
            return binascii.a2b_base64(self.fields[index])
        except (binascii.Error, ValueError):
            return None

    def int(self, index: int) -> int | None:
        """Field ``index`` as an integer, or None when absent or not a number."""
        if index >= len(self.fields):
            return None
        raw = self.fields[index]
        digits = raw[1:] if raw.startswith(b"-") else raw
        if not digits or len(digits) > 19 or not digits.isdigit():  # bytes.isdigit: ASCII only
            return None
        return int(raw)


class MarkParser:
    """A state machine over the output stream: ``feed(chunk) -> (visible bytes, marks)``."""

    def __init__(self, nonce: bytes, max_mark_bytes: int = MAX_MARK_BYTES) -> None:
        if not nonce or not nonce.isalnum():
            raise ValueError("the nonce must be non-empty ASCII letters and digits")
        self.prefix = OSC + MARK_NUMBER + b";" + nonce + b";"
        self.max_mark_bytes = max_mark_bytes
        self._held = b""  # a possible start of a mark at the end of the previous chunk
        self._in_mark = False
        self._parts: list[bytes] = []
        self._size = 0
        self._overflow = False
        self._head = b""

    @property
    def pending(self) -> int:
        """Bytes held back because they may be (or are) part of a mark."""
        return len(self._held) + self._size

    def flush(self) -> bytes:
        """At the end of the stream: held bytes that turned out not to be a mark."""
        held, self._held = self._held, b""
        return b"" if self._in_mark else held

    def feed(self, data: bytes) -> tuple[bytes, list[Mark]]:
        """Visible bytes of ``data`` (marks removed) and the marks completed in it."""
        if not self._in_mark and not self._held:
            i = data.find(OSC)
            if i < 0:
                if data.endswith(b"\x1b"):
                    self._held = b"\x1b"
                    return data[:-1], []
                return data, []
        elif self._held:
            data = self._held + data
            self._held = b""
        out: list[bytes] = []
        marks: list[Mark] = []
        pos = 0
        n = len(data)
        while pos < n:
            if self._in_mark:
                j = data.find(b"\x07", pos)
                if j < 0:
                    self._collect(data[pos:])
                    break
                self._collect(data[pos:j])
                mark = self._finish()
                if mark is not None:
                    marks.append(mark)
                pos = j + 1
                continue
            i = data.find(OSC, pos)
            if i < 0:
                if data.endswith(b"\x1b"):
                    out.append(data[pos:-1])
                    self._held = b"\x1b"
                else:
                    out.append(data[pos:])
                break
            out.append(data[pos:i])
            end = i + len(self.prefix)
            if end <= n:
                if data[i:end] == self.prefix:
                    self._in_mark = True
                    pos = end
                else:
                    out.append(data[i : i + 2])
                    pos = i + 2
                continue
            tail = data[i:]
            if self.prefix.startswith(tail):
                self._held = tail
            else:
                out.append(tail)
            break
        return b"".join(out), marks

    def _collect(self, part: bytes) -> None:
        if self._overflow:
            return
        if self._size + len(part) > self.max_mark_bytes:
            self._overflow = True
            self._head = (b"".join(self._parts) + part)[:1]
            self._parts = []
            self._size = 0
            return
        if part:
            self._parts.append(part)
            self._size += len(part)

    def _finish(self) -> Mark | None:
        body = b"".join(self._parts)
        overflow = self._overflow
        self._in_mark = False
        self._parts = []
        self._size = 0
        self._overflow = False
        if overflow:
            head = self._head.decode("ascii", "replace")
            return Mark(head if head.isalpha() else "?", (), overflow=True)
        if body.endswith(b"\x1b\\"):  # tolerate an ST terminator seen as ESC \ BEL
            body = body[:-2]
        kind, _, rest = body.partition(b";")
        if len(kind) != 1 or not kind.isalpha():
            return None
        return Mark(kind.decode("ascii"), tuple(rest.split(b";")) if rest else ())


def alt_screen_change(data: bytes) -> bool | None:
    """True when ``data`` switches to the alternate screen last, False when back, None if neither."""
    if b"\x1b[?" not in data:
        return None
    on = max(data.rfind(s) for s in _ALT_ON)
    off = max(data.rfind(s) for s in _ALT_OFF)
    if on < 0 and off < 0:
        return None
    return on > off

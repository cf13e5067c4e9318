"""Following one log file: identity (device, inode, fingerprint), offset, and complete-line reads.

A :class:`TailedFile` holds an open descriptor, so a renamed or deleted file can still be read to
its end. Its position is always at a line boundary (or inside an over-long line being skipped),
so a saved :class:`FileState` resumes exactly. Everything here is blocking file I/O; the syslog
collector calls it from its reader thread.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import asdict, dataclass
from typing import Any

#: bytes at the start of a file that make its fingerprint (fewer while the file is shorter)
FP_BYTES = 256
#: bytes read per call (more when max_line_bytes is larger)
READ_BYTES = 1 << 20


def fingerprint(fd: int, length: int = FP_BYTES) -> tuple[str, int]:
    """``(hex digest, bytes covered)`` of a file's first ``length`` bytes."""
    head = os.pread(fd, length, 0)
    return hashlib.blake2b(head, digest_size=8).hexdigest(), len(head)


def line_id_prefix(dev: int, ino: int, fp: str) -> str:
    """``f-<hash of the file's identity>-``: with a line's offset appended, its event id."""
    return "f-" + hashlib.blake2b(f"{dev}\x1f{ino}\x1f{fp}".encode(), digest_size=8).hexdigest() + "-"


def line_id(dev: int, ino: int, fp: str, off: int) -> str:
    """The event id of the line at ``off`` of the file with this identity: stable across
    restarts and re-reads, and made without hashing each line."""
    return f"{line_id_prefix(dev, ino, fp)}{off}"


@dataclass
class FileState:
    """What is saved per file in the checkpoint."""

    path: str
    dev: int
    ino: int
    fp: str
    fpl: int
    off: int
    #: inside an over-long line whose head was already emitted: drop bytes up to the next newline
    skip: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FileState:
        return cls(path=str(d["path"]), dev=int(d["dev"]), ino=int(d["ino"]), fp=str(d["fp"]),
                   fpl=int(d["fpl"]), off=int(d["off"]), skip=bool(d.get("skip", False)))


@dataclass
class Line:
    """One line read from a file: where it starts, its bytes (no newline), whether it was cut."""

    off: int
    raw: bytes
    truncated: bool = False


class TailedFile:
    """An open file being followed."""

    def __init__(self, fd: int, state: FileState) -> None:
        self.fd = fd
        self.state = state
        #: the path no longer names this file (renamed away, deleted or a copytruncate copy)
        self.rotated = False
        #: read this file to its end once and close it (a copytruncate copy)
        self.drain_only = False
        self._seed: str | None = None

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(cls, path: str, off: int | None = None) -> TailedFile | None:
        """Open ``path`` at ``off`` (None: at its end); None if it is not a readable regular file."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                return None
            fp, fpl = fingerprint(fd)
        except OSError:
            os.close(fd)
            return None
        start = st.st_size if off is None else off
        return cls(fd, FileState(path, st.st_dev, st.st_ino, fp, fpl, start))

    @classmethod
    def resume(cls, saved: FileState) -> TailedFile | None:
        """Reopen a saved file if ``saved.path`` is still that file (device, inode, fingerprint)."""
        t = cls.open(saved.path, saved.off)
        if t is None:
            return None
        if (t.state.dev, t.state.ino) != (saved.dev, saved.ino) or not t.same_content(saved.fp, saved.fpl):
            t.close()
            return None
        t.state = FileState(**{**saved.to_json(), "path": saved.path})
        return t

    def same_content(self, fp: str, fpl: int) -> bool:
        """Whether the file still starts with the bytes fingerprinted as ``fp`` over ``fpl`` bytes."""
        if fpl == 0:
            return True
        try:
            return fingerprint(self.fd, fpl) == (fp, fpl)
        except OSError:
            return False

    @property
    def key(self) -> tuple[int, int]:
        return self.state.dev, self.state.ino

    def current_path(self) -> str:
        """Where the open file is now (after a rename), from /proc; ends in ' (deleted)' if gone."""
        try:
            return os.readlink(f"/proc/self/fd/{self.fd}")
        except OSError:
            return self.state.path

    @property
    def source_path(self) -> str:
        """The path its lines' events name: where it is now, without the ' (deleted)' of a
        file removed while being read."""
        return self.state.path if not self.rotated else self.state.path.removesuffix(" (deleted)")

    def fstat(self) -> os.stat_result:
        return os.fstat(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # ---------------------------------------------------------------- identity changes

    def restart_after_truncate(self) -> None:
        """Copytruncate: the file was cut; read it again from its start, with a new fingerprint."""
        self.state.off = 0
        self.state.skip = False
        self.state.fp, self.state.fpl = fingerprint(self.fd)
        self._seed = None

    def ensure_fingerprint(self) -> None:
        """A file first seen empty gets its fingerprint once it has bytes (before any line)."""
        if self.state.fpl == 0 and self.state.off == 0:
            self.state.fp, self.state.fpl = fingerprint(self.fd)
            self._seed = None

    def id_prefix(self) -> str:
        """The ids of this file's lines are this prefix and the line's offset (:func:`line_id`)."""
        if self._seed is None:
            s = self.state
            self._seed = line_id_prefix(s.dev, s.ino, s.fp)
        return self._seed  # type: ignore[no-any-return]

    # ---------------------------------------------------------------- reading

    def read_lines(self, max_line: int, flush_partial: bool) -> tuple[list[Line], bool]:
        """Read the complete lines after the saved offset (one read call's worth).

        ``flush_partial``: a last line without a newline is emitted as it is (the writer went
        quiet). Returns ``(lines, more)``; ``more`` means the read was full and more may follow.
        """
        block, at, tail, more = self.read_block(max_line, flush_partial)
        return split_lines(block, at, max_line) + tail, more

    def read_block(self, max_line: int, flush_partial: bool) -> tuple[bytes, int, list[Line], bool]:
        """Like :meth:`read_lines`, with the complete lines left unsplit for bulk parsing:
        ``(block, its offset, tail, more)``; ``block`` is whole lines, each ending in a newline
        (any length: see :func:`split_lines`), ``tail`` the partial or cut line after them."""
        s = self.state
        size = max(READ_BYTES, max_line + 1)
        buf = os.pread(self.fd, size, s.off)
        if not buf:
            return b"", s.off, [], False
        more = len(buf) == size
        tail: list[Line] = []
        pos = 0
        if s.skip:
            nl = buf.find(b"\n")
            if nl < 0:
                s.off += len(buf)
                return b"", s.off, [], more
            pos = nl + 1
            s.skip = False
        last = buf.rfind(b"\n")
        off = s.off
        block = b""
        if last >= pos:
            block = buf[pos:last + 1]
            pos = last + 1
        at = off + pos - len(block)
        rest = len(buf) - pos
        if rest > max_line:
            tail.append(Line(off + pos, buf[pos:pos + max_line], True))
            s.skip = True
            pos = len(buf)
        elif rest and not more and flush_partial:
            tail.append(Line(off + pos, buf[pos:]))
            pos = len(buf)
        s.off = off + pos
        return block, at, tail, more


def split_lines(block: bytes, at: int, max_line: int) -> list[Line]:
    """The lines of ``block`` (whole lines, each ending in a newline, starting at file offset
    ``at``), those longer than ``max_line`` cut to it and marked truncated."""
    lines: list[Line] = []
    if not block:
        return lines
    append = lines.append
    for raw in block[:-1].split(b"\n"):
        n = len(raw)
        if n > max_line:
            append(Line(at, raw[:max_line], True))
        else:
            append(Line(at, raw))
        at += n + 1
    return lines

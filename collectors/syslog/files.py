"""The files a syslog-file collector follows: which paths match, and how rotation is told apart.

Files are tracked by identity (device + inode + fingerprint of their first bytes), so rotation
by rename (the old file is read to its end first), copytruncate (the copy is searched for lines
not yet read, then the file is read again from 0), deletion and re-creation, and inode reuse
are all told apart. :meth:`FollowedFiles.state_json` is the collector's checkpoint: every
followed file's state.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import orjson

from agent.config import SyslogConfig
from collectors.syslog.tail import FileState, TailedFile

IGNORED_SUFFIXES = (".gz", ".xz", ".bz2", ".zst", ".lz4", ".zip")


class FollowedFiles:
    """The files whose path still names them, and those rotated away, read to their end first."""

    def __init__(self, config: SyslogConfig, log: Any) -> None:
        self.config = config
        self.log = log
        #: files whose path still names them, by (dev, ino)
        self.files: dict[tuple[int, int], TailedFile] = {}
        #: files renamed away, deleted or copies, read to their end before closing
        self.rotated: dict[tuple[int, int], TailedFile] = {}
        #: gaps (lines that may be lost) noticed since the collector last took the count
        self.gaps = 0

    def patterns(self) -> list[str]:
        return list(self.config.paths)

    def matching_paths(self) -> list[str]:
        out: set[str] = set()
        for pattern in self.patterns():
            matches = glob.glob(pattern) if glob.has_magic(pattern) else [pattern]
            for p in matches:
                if not p.endswith(IGNORED_SUFFIXES) and os.path.isfile(p):
                    out.add(os.path.abspath(p))
        return sorted(out)

    def restore(self, saved: str | None) -> bool:
        """Reopen the files of a saved checkpoint; returns whether there was one."""
        if not saved:
            return False
        try:
            entries = [FileState.from_json(d) for d in orjson.loads(saved)["files"]]
        except (ValueError, KeyError, TypeError) as exc:
            self.log.error("syslog_bad_checkpoint", error=str(exc))
            self.gap("bad checkpoint", None)
            return False
        for st in entries:
            t = TailedFile.open(st.path, st.off)
            if t is not None and t.key == (st.dev, st.ino):
                # the same inode: unchanged, or cut/rewritten while we were stopped
                changed = not t.same_content(st.fp, st.fpl) or t.fstat().st_size < st.off
                t.state = FileState(**st.to_json())
                if changed:
                    self.copytruncated(t)
            else:
                if t is not None:
                    t.close()
                t = self.find_moved(st)
            if t is None:
                self.gap("file gone while stopped", st.path)
                continue
            if t.state.path == st.path and st.path in self.matching_paths():
                self.files[t.key] = t
            else:
                t.rotated = True
                self.rotated[t.key] = t
        return True

    def find_moved(self, st: FileState) -> TailedFile | None:
        """A saved file renamed while we were stopped: same device and inode in the same directory."""
        d = os.path.dirname(st.path) or "."
        try:
            names = os.listdir(d)
        except OSError:
            return None
        for name in names:
            p = os.path.join(d, name)
            try:
                s = os.stat(p)
            except OSError:
                continue
            if (s.st_dev, s.st_ino) == (st.dev, st.ino):
                t = TailedFile.resume(FileState(**{**st.to_json(), "path": p}))
                if t is not None:
                    return t
        return None

    def find_copy(self, t: TailedFile) -> TailedFile | None:
        """The copy a copytruncate made: a sibling starting with the same bytes, at least as long."""
        s = t.state
        d, base = os.path.split(s.path)
        try:
            names = sorted(os.listdir(d or "."))
        except OSError:
            return None
        for name in names:
            if not name.startswith(base) or name == base or name.endswith(IGNORED_SUFFIXES):
                continue
            c = TailedFile.open(os.path.join(d, name), s.off)
            if c is None:
                continue
            if c.key != t.key and c.fstat().st_size >= s.off and c.same_content(s.fp, s.fpl):
                # lines of the copy keep the identity (and ids) of the file they were read from
                c.state = FileState(c.state.path, s.dev, s.ino, s.fp, s.fpl, s.off, s.skip)
                c.drain_only = True
                c.rotated = True
                return c
            c.close()
        return None

    def copytruncated(self, t: TailedFile) -> None:
        copy = self.find_copy(t)
        if copy is not None:
            self.rotated[(-copy.fd - 1, 0)] = copy
        elif t.state.off > 0:
            self.gap("truncated or replaced, no copy found", t.state.path)
        self.log.info("syslog_copytruncate", path=t.state.path, copy=copy.state.path if copy else None)
        t.restart_after_truncate()

    def gap(self, why: str, path: str | None) -> None:
        self.log.warning("syslog_gap", reason=why, path=path)
        self.gaps += 1

    def check_rotations(self) -> None:
        """Notice renamed, deleted and truncated files; a new file at a rotated path is read from 0."""
        for key, t in list(self.files.items()):
            s = t.state
            try:
                ps = os.stat(s.path)
                moved = (ps.st_dev, ps.st_ino) != key
            except OSError:
                moved = True
            if moved:
                path = s.path
                t.rotated = True
                s.path = t.current_path()
                self.rotated[key] = self.files.pop(key)
                self.log.info("syslog_rotated", path=path, now=s.path)
                self.follow(path, 0)
                continue
            try:
                size = t.fstat().st_size
            except OSError:
                continue
            if size < s.off or not t.same_content(s.fp, s.fpl):
                self.copytruncated(t)

    def follow(self, path: str, off: int | None) -> None:
        """Start following ``path`` (at ``off``; None: its end) unless it is already followed."""
        t = TailedFile.open(path, off)
        if t is None:
            return
        if t.key in self.files or t.key in self.rotated:
            t.close()
            return
        self.files[t.key] = t
        self.log.info("syslog_follow", path=path, offset=t.state.off)

    def discover(self, first_start: bool) -> None:
        """Follow files newly matching the paths and globs."""
        self.check_rotations()
        known = set(self.files) | set(self.rotated)
        for path in self.matching_paths():
            try:
                ps = os.stat(path)
            except OSError:
                continue
            if (ps.st_dev, ps.st_ino) not in known:
                self.follow(path, None if first_start and self.config.start_at == "end" else 0)

    def state_json(self) -> str:
        files = [t.state.to_json() for t in self.rotated.values() if not t.drain_only]
        files += [t.state.to_json() for t in self.files.values()]
        return orjson.dumps({"files": files}).decode()

    def drained(self, t: TailedFile, now: float, flush_all: bool) -> bool:
        """A rotated file is done once read to its end and quiet (its writer moved on)."""
        try:
            st = t.fstat()
        except OSError:
            return True
        if st.st_size > t.state.off:
            return False
        return t.drain_only or flush_all or now - st.st_mtime >= self.config.partial_line_timeout_s

    def close_all(self) -> None:
        for t in [*self.files.values(), *self.rotated.values()]:
            t.close()
        self.files.clear()
        self.rotated.clear()

"""Group commit for the spool: the fsync that makes acknowledged writes survive power loss.

SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit is written into the WAL but not
flushed, so it survives a crash of the process, not of the machine. With ``spool.synchronous:
full``, a push (hook ``emit``) is answered ``ok`` only after :meth:`WalSync.request`'s future
is done: an ``fsync`` of the WAL that *started after* the commit has returned. One fsync
thread serves every request that arrived while the last fsync ran, so one disk flush covers
many commits, and the spool's own thread goes on with the next transaction meanwhile (group
commit). A commit that a checkpoint has already copied into the database file is durable there
too: SQLite syncs the WAL before a checkpoint and the database file after it, also in NORMAL.

The directory entries of the database, its WAL and the state directory are synced when first
seen (and again when the WAL file is new), as SQLite itself would only do on its own first sync.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import Future
from pathlib import Path


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or directory by path."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WalSync:
    """Flushes the spool's WAL to disk for whoever asks, many askers per flush."""

    def __init__(self, db_path: str | os.PathLike[str]) -> None:
        self.db_path = Path(db_path)
        self.wal_path = Path(f"{self.db_path}-wal")
        self._cond = threading.Condition()
        self._waiting: list[Future[None]] = []
        self._closed = False
        self._io = threading.Lock()
        self._fd = -1
        # the database file is fsynced through one descriptor kept open for the spool's life:
        # closing *any* descriptor of a file drops every POSIX lock this process holds on it,
        # SQLite's included, and another process would then take itself for the last user and
        # delete the WAL under this one
        self._db_fd = os.open(self.db_path, os.O_RDONLY | os.O_CLOEXEC)
        self._wal_id: tuple[int, int] | None = None
        #: fsyncs done and requests served (their ratio is the group-commit factor)
        self.flushes = 0
        self.requests = 0
        self._thread = threading.Thread(target=self._run, name="spool-fsync", daemon=True)
        self._thread.start()

    def request(self) -> Future[None]:
        """A future done once every commit returned before this call is on disk (or failed with
        the OSError of the fsync, when it is not)."""
        fut: Future[None] = Future()
        with self._cond:
            if self._closed:
                fut.set_exception(RuntimeError("the spool is closed"))
                return fut
            self._waiting.append(fut)
            self.requests += 1
            self._cond.notify()
        return fut

    def barrier(self) -> None:
        """Flush now, on this thread: the database file, its WAL and their directory entries."""
        with self._io:
            self._flush_wal()
            os.fsync(self._db_fd)
            fsync_path(self.db_path.parent)
            with contextlib.suppress(OSError):
                fsync_path(self.db_path.parent.parent)

    def close(self) -> None:
        """Serve the requests still waiting, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()
        with self._io:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def release(self) -> None:
        """Close the database file's descriptor: only after the spool's connection is closed."""
        if self._db_fd >= 0:
            os.close(self._db_fd)
            self._db_fd = -1

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if not self._waiting:
                    return
                served, self._waiting = self._waiting, []
            try:
                with self._io:
                    self._flush_wal()
            except OSError as exc:
                for fut in served:
                    fut.set_exception(exc)
                continue
            for fut in served:
                fut.set_result(None)

    def _flush_wal(self) -> None:
        try:
            st = os.stat(self.wal_path)
        except FileNotFoundError:
            # no WAL (every commit was checkpointed and the file removed): the database holds all
            os.fsync(self._db_fd)
            return
        if (st.st_dev, st.st_ino) != self._wal_id:
            if self._fd >= 0:
                os.close(self._fd)
            self._fd = os.open(self.wal_path, os.O_RDONLY | os.O_CLOEXEC)
            self._wal_id = (st.st_dev, st.st_ino)
            os.fsync(self._fd)
            fsync_path(self.wal_path.parent)  # a new WAL's directory entry
        else:
            os.fsync(self._fd)
        self.flushes += 1

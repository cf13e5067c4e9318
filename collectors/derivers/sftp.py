"""WebFTP transfers from OpenSSH's sftp-server log lines (``-l INFO``) → ``webftp_transfer``.

:class:`SftpDeriver` is a stateful deriver (see :mod:`collectors.derivers.base`). It follows each
sftp-server process (``sftp-server``, ``internal-sftp``, or sshd when the subsystem logs
through it) by host and pid:

- ``session opened for local user U from [IP]`` starts a session (user, ip);
- ``open "P" flags F mode M`` remembers the open file (and its flags: READ / WRITE);
- ``close "P" bytes read R written W`` finishes it: written → upload of W bytes, read →
  download of R bytes, status ``success``;
- ``forced close "P" …`` (the session ended with the file open: the client went away midway)
  → ``failed`` with the partial size;
- ``sent status <error>`` right after an ``open``: the transfer failed with that error (reported
  at its close, or at the session's next request when the open itself failed);
- ``remove name "P"``, ``rename old "A" new "B"``, ``mkdir name "P"``, ``rmdir name "P"`` →
  rows of those types, decided by the session's next line: anything but an error status means
  success. ``sent status <error>`` is logged (at INFO) for errors only, but at ``-l INFO`` the
  ``stat``/``lstat`` a client sends before its next command is not logged, so an error right
  after such a request may be that probe's: the row is then dropped (and counted) rather than
  guessed. At ``-l VERBOSE`` every request is logged and such errors are attributed exactly.
- ``session closed for local user U from [IP]`` ends the session.

scp since OpenSSH 9 rides on SFTP and gives the same lines. Each row's id is
``stable_id("ftp", <line id>)`` of the line that completed it. A session whose opening line
was never seen (the agent started mid-session) takes its user from the live process when it
still runs on this host, else its rows are dropped and counted: no row with a guessed user.
"""

from __future__ import annotations

import posixpath
import pwd
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.events import make_event, parse_ts, stable_id
from agent.typing import Event
from collectors.derivers.base import accepted_data, line_id

PROGRAMS = frozenset({"sftp-server", "internal-sftp", "sshd", "sshd-session"})
MAX_MESSAGE = 16_384
MAX_PATH = 4096

# sftp-server logs a path between quotes as it is (a quote in it is not escaped; the syslog
# layer only doubles a backslash): the greedy match ends at the *last* fixed suffix, which the
# server appends, so a name ending in a fake '" bytes read …' neither hides nor forges a row
_Q = r'"(?P<{0}>.*)"'
RE_OPENED = re.compile(r"^session opened for local user (?P<user>\S+) from \[(?P<ip>[^\]]*)\]$")
RE_CLOSED = re.compile(r"^session closed for local user (?P<user>\S+) from \[(?P<ip>[^\]]*)\]$")
RE_OPEN = re.compile(r"^open " + _Q.format("path") + r" flags (?P<flags>\S+)(?: mode (?P<mode>\d+))?$")
RE_CLOSE = re.compile(
    r"^(?P<forced>forced )?close " + _Q.format("path")
    + r" bytes read (?P<read>\d{1,20}) written (?P<written>\d{1,20})$"
)
RE_REMOVE = re.compile(r"^remove name " + _Q.format("path") + r"$")
# split at the last '" new "' by hand: two greedy groups would cost quadratic time on a hostile line
RE_RENAME = re.compile(r'^(?:posix-)?rename old "(?P<both>.*)"$')
RE_MKDIR = re.compile(r"^mkdir name " + _Q.format("path") + r"(?: mode (?P<mode>\d+))?$")
RE_RMDIR = re.compile(r"^rmdir name " + _Q.format("path") + r"$")
RE_STATUS = re.compile(r"^sent status (?P<status>.+)$")
RE_VERBOSE_ONLY = re.compile(r'^(?:realpath|l?stat name|fstat|received client version|opendir|readlink) ')

#: statuses that are not errors
OK_STATUSES = frozenset({"Success", "End of file"})

#: a finished row: (webftp_transfer data, ts, id of the line it is named after)
Row = tuple[dict[str, Any], "str | None", str]


_UNQ = re.compile(r'\\([\\"])')


def _unq(text: str) -> str:
    """The path as it is: one left-to-right pass turns a doubled backslash back into one."""
    return _UNQ.sub(r"\1", text)


def _clip(text: str, n: int = MAX_PATH) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


@dataclass
class _Open:
    flags: str
    ts: str | None
    error: str | None = None
    err_ts: str | None = None
    err_lid: str | None = None

    @property
    def kind(self) -> str:
        return "upload" if "WRITE" in self.flags.split(",") else "download"


@dataclass
class _Session:
    user: str | None = None
    ip: str | None = None
    #: the server logs at VERBOSE (stat/lstat/realpath too): every error status is attributable
    verbose: bool = False
    open_files: dict[str, _Open] = field(default_factory=dict)
    #: an open whose error status was seen and that was not closed (yet)
    failed_open: str | None = None
    #: the last request whose failure the next line ("sent status …") would report:
    #: (what, row, ts, line id)
    pending: tuple[str, dict[str, Any], str | None, str] | None = None


class SftpDeriver:
    """``system_log`` lines of sftp-server → ``webftp_transfer`` events."""

    name = "sftp"
    #: the lines this deriver can use (see derive.line_gate)
    programs: frozenset[str] = PROGRAMS
    message_prefixes: tuple[str, ...] = ()

    def __init__(
        self,
        accept: Callable[[Event], bool] | None = None,
        max_sessions: int = 4096,
        lookup_user: Callable[[int], str | None] | None = None,
        counter: Callable[..., Any] | None = None,
    ) -> None:
        self.accept = accept
        self.max_sessions = max_sessions
        self.lookup_user = lookup_user if lookup_user is not None else _process_user
        self.counter = counter
        self._sessions: OrderedDict[tuple[Any, str, int], _Session] = OrderedDict()

    def _count(self, name: str) -> None:
        if self.counter is not None:
            self.counter(name, 1, deriver="sftp")

    # -- session table ---------------------------------------------------------------------
    def _session(self, key: tuple[Any, str, int], create: bool = True) -> _Session | None:
        s = self._sessions.get(key)
        if s is not None:
            self._sessions.move_to_end(key)
            return s
        if not create:
            return None
        s = self._sessions[key] = _Session()
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return s

    # -- entry point -----------------------------------------------------------------------
    def __call__(self, event: Event) -> list[Event]:
        try:
            data = accepted_data(event, self.accept)
            if data is None:
                return []
            program, message, pid = data.get("program"), data.get("message"), data.get("pid")
            if program not in PROGRAMS or not isinstance(message, str) or not isinstance(pid, int):
                return []
            if not message or len(message) > MAX_MESSAGE:
                return []
            key = (data.get("hostname"), program, pid)
            rows = self.feed(key, message.rstrip("\r\n"), event.get("ts"), line_id(event))
        except Exception:  # a deriver must never break its collector
            self._count("deriver_error")
            return []
        return [make_event("webftp_transfer", row, ts=ts, id=stable_id("ftp", lid)) for row, ts, lid in rows]

    def feed(self, key: tuple[Any, str, int], message: str, ts: str | None, lid: str) -> list[Row]:
        """Advance the session ``key`` by one line; returns the finished rows (usually 0 or 1)
        as (data, ts, id of the line the row is named after)."""
        if m := RE_STATUS.match(message):
            return self._status(key, m["status"], ts, lid)
        if RE_VERBOSE_ONLY.match(message):
            s = self._session(key)
            assert s is not None
            s.verbose = True
        # any request line settles what the previous request left open
        s = self._session(key, create=False)
        closing = _unq(mc["path"]) if (mc := RE_CLOSE.match(message)) else None
        out = self._settle(key, s, closing) if s is not None else []
        if m := RE_OPENED.match(message):
            s = self._session(key)
            assert s is not None
            s.user, s.ip, s.open_files, s.pending = m["user"], m["ip"] or None, {}, None
            return out
        if RE_CLOSED.match(message):
            self._sessions.pop(key, None)
            return out
        if m := RE_OPEN.match(message):
            s = self._session(key)
            assert s is not None
            path = _unq(m["path"])
            s.open_files[path] = _Open(m["flags"], ts)
            s.pending = ("open", {"path": path}, ts, lid)
            return out
        if m := RE_CLOSE.match(message):
            s = self._session(key)
            assert s is not None
            path = _unq(m["path"])
            f = s.open_files.pop(path, None)
            if s.failed_open == path:
                s.failed_open = None
            read, written = int(m["read"]), int(m["written"])
            if written > 0:
                typ, size = "upload", written
            elif read > 0:
                typ, size = "download", read
            elif f is not None:
                typ, size = f.kind, 0
            else:
                return out  # nothing moved and the open was never seen: not a transfer we know
            row: dict[str, Any] = {"type": typ, "path": path, "size": size}
            if m["forced"]:
                row["status"] = "failed"
                row["error"] = "connection closed during the transfer (forced close)"
            elif f is not None and f.error:
                row["status"] = "failed"
                row["error"] = f.error
            return out + self._finish(key, s, row, ts, lid, f.ts if f else None)
        for rx, typ in ((RE_REMOVE, "remove"), (RE_MKDIR, "mkdir"), (RE_RMDIR, "rmdir")):
            if m := rx.match(message):
                return out + self._defer(key, {"type": typ, "path": _unq(m["path"]), "size": None}, ts, lid)
        if (m := RE_RENAME.match(message)) and '" new "' in m["both"]:
            old, _, new = m["both"].rpartition('" new "')
            row = {"type": "rename", "path": _unq(new), "size": None,
                   "extra": {"old_path": _clip(_unq(old))}}
            return out + self._defer(key, row, ts, lid)
        return out

    def _status(self, key: tuple[Any, str, int], status: str, ts: str | None, lid: str) -> list[Row]:
        """``sent status …``: the answer to the request logged just before, if it was an error."""
        s = self._session(key, create=False)
        if s is None or s.pending is None or status in OK_STATUSES:
            return []
        what, row, pts, plid = s.pending
        s.pending = None
        error = _clip(status, 512)
        if what == "open":
            f = s.open_files.get(row["path"])
            if f is not None and f.error is None:
                # failed open, or (at -l INFO) an error during the transfer: the close tells
                f.error, f.err_ts, f.err_lid = error, ts, lid
                s.failed_open = row["path"]
            return []
        if s.verbose:
            return self._finish(key, s, dict(row, status="failed", error=error), pts, plid, None)
        # at -l INFO the stat/lstat a client sends before its next command is not logged, so
        # this error may be theirs: neither success nor failure can be claimed
        self._count("ambiguous_status")
        return []

    def _settle(self, key: tuple[Any, str, int], s: _Session, closing: str | None = None) -> list[Row]:
        """A new request arrived: a pending remove/rename/… succeeded; an open that got an
        error and was never closed failed (unless this request is its close)."""
        out: list[Row] = []
        if s.pending is not None:
            what, row, pts, plid = s.pending
            s.pending = None
            if what != "open":
                out += self._finish(key, s, row, pts, plid, None)
        if s.failed_open is not None and s.failed_open != closing:
            path, s.failed_open = s.failed_open, None
            f = s.open_files.get(path)
            if f is not None and f.error is not None and f.err_lid is not None:
                del s.open_files[path]
                row = {"type": f.kind, "path": path, "size": 0, "status": "failed", "error": f.error}
                out += self._finish(key, s, row, f.err_ts, f.err_lid, f.ts)
        return out

    def _defer(self, key: tuple[Any, str, int], row: dict[str, Any], ts: str | None, lid: str) -> list[Row]:
        """remove/rename/mkdir/rmdir: decided by the session's next line (an error status or not)."""
        s = self._session(key)
        assert s is not None
        s.pending = ("op", row, ts, lid)
        return []

    def _finish(
        self,
        key: tuple[Any, str, int],
        s: _Session,
        row: dict[str, Any],
        ts: str | None,
        lid: str,
        started_ts: str | None,
    ) -> list[Row]:
        user = s.user
        if user is None:
            user = self.lookup_user(key[2])
            if user is None:
                self._count("orphan_line")
                return []
            s.user = user
        path = _clip(_absolute(row["path"], user))
        out: dict[str, Any] = {
            "username": _clip(user, 256),
            "type": row["type"],
            "path": path,
            "object_name": posixpath.basename(path.rstrip("/")) or path,
            "size": row.get("size"),
            "remote_ip": s.ip,
            "status": row.get("status", "success"),
            "source": "sftp-server",
        }
        if row.get("error"):
            out["error"] = row["error"]
        if row.get("extra"):
            out["extra"] = row["extra"]
        if started_ts and ts:
            try:
                out["duration_ms"] = max(0, int(round((parse_ts(ts) - parse_ts(started_ts)) * 1000)))
            except ValueError:
                pass
        return [(out, ts, lid)]


def _absolute(path: str, user: str) -> str:
    """scp and some clients name files relative to the session's start dir, the user's home."""
    if path.startswith("/"):
        return path
    try:
        home = pwd.getpwnam(user).pw_dir
    except (KeyError, ValueError):
        return path
    return posixpath.normpath(posixpath.join(home, path)) if home else path


def _process_user(pid: int) -> str | None:
    """The owner of a still-running sftp-server process on this host (None when gone)."""
    try:
        import psutil

        p = psutil.Process(pid)
        name = p.name()
        if "sftp" not in name and "sshd" not in name:
            return None
        return p.username()
    except Exception:
        return None


__all__ = ["SftpDeriver"]

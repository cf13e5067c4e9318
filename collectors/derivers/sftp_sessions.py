"""Which sftp sessions can be believed: the provenance gate of the sftp deriver.

A journal line of sftp-server counts only when its sender fits (the derivers' witness:
an sftp-server executable, or sshd for internal-sftp), and a session only when, in addition, the
sender runs as the uid of the user its opening line names and that user has an ssh connection
from the address it names, accepted by a root sshd (or, for a session whose connection the agent
did not see, when the process still runs as the child of sshd's session process). A user running
sftp-server by hand with a made-up ``SSH_CONNECTION`` fits neither: the session's lines stay
``system_log`` lines and each is counted in ``forged_lines``.
"""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Callable
from typing import Any, Protocol

from agent.typing import Event
from collectors.derivers.bounded import BoundedTable
from collectors.derivers.provenance import SSHD_NAMES, Voucher

#: the ssh connections tracked to vouch for sessions
MAX_CONNECTIONS = 4096
#: how every line of sftp-server (at INFO and VERBOSE) begins: sshd's own lines are passed over
SFTP_PREFIXES = ("session opened for local user ", "session closed for local user ", "open ", "close ",
                 "forced close ", "sent status ", "remove name ", "rename old ", "posix-rename old ",
                 "mkdir name ", "rmdir name ", "realpath ", "stat name ", "lstat name ", "fstat ",
                 "received client version ", "opendir ", "readlink ")
RE_OPENED = re.compile(r"^session opened for local user (?P<user>\S+) from \[(?P<ip>[^\]]*)\]$")
RE_CLOSED = re.compile(r"^session closed for local user (?P<user>\S+) from \[(?P<ip>[^\]]*)\]$")
RE_SSH_ACCEPTED = re.compile(r"^Accepted \S+ for (?P<user>.+) from (?P<ip>\S+) port \d{1,5}\b")
RE_SSH_CLOSED = re.compile(r"^pam_unix\(sshd:session\): session closed for user ")

Key = tuple[Any, str, int]


class LineWitness(Protocol):
    """What the gate needs of the derivers' witness (``collectors.derivers.base.Witness``)."""

    def vouch(self, event: Event, program: str, message: str) -> Voucher | None: ...

    def forged_line(self, event: Event, program: str, message: str = "", why: str | None = None) -> None: ...


class SessionGate:
    """Screens each sftp line: who vouches for it, or None when it must not reach a session."""

    def __init__(
        self,
        witness: LineWitness,
        uid_of: Callable[[str], int | None],
        lookup_user: Callable[[int], str | None],
        max_sessions: int,
        max_bytes: int,
        on_evict: Callable[[int], None],
        drop_session: Callable[[Key], None],
    ) -> None:
        self.witness = witness
        self.uid_of = uid_of
        self.lookup_user = lookup_user
        self.drop_session = drop_session
        #: sessions whose opening line did not fit (-> why): their lines make no rows and no state
        self.forged: BoundedTable[Key, str] = BoundedTable(max_sessions, max_bytes, on_evict=on_evict)
        #: (host, root sshd pid) -> (user, ip) of the ssh connections it accepted
        self.conns: BoundedTable[tuple[Any, int], tuple[str, str]] = BoundedTable(
            MAX_CONNECTIONS, max_bytes, on_evict=on_evict)

    def screen(self, event: Event, key: Key, message: str) -> Voucher | None:
        """The voucher of a line the deriver may feed to session ``key`` (host, program, pid)."""
        host, program, pid = key
        if program in SSHD_NAMES and (self._track_connection(event, host, program, message, pid)
                                      or not message.startswith(SFTP_PREFIXES)):
            return None
        if key in self.forged:
            why = self.forged.get(key)
            if RE_CLOSED.match(message):
                self.forged.pop(key, None)
            self.witness.forged_line(event, program, message, why)
            return None
        # sshd itself writes the lines of internal-sftp, running as the session's user
        prov = self.witness.vouch(event, "internal-sftp" if program in SSHD_NAMES else program, message)
        if prov is None:
            return None
        if prov.sender is not None and (m := RE_OPENED.match(message)):
            why = self._unfit(host, m["user"], m["ip"], prov)
            if why is not None:
                self.drop_session(key)
                self.forged[key] = why
                self.witness.forged_line(event, program, message, why)
                return None
        return prov

    def _track_connection(self, event: Event, host: Any, program: str, message: str, pid: int) -> bool:
        """Follow the ssh connections a root sshd accepts and closes; True when the line was one."""
        m = RE_SSH_ACCEPTED.match(message)
        if m is None and RE_SSH_CLOSED.match(message) is None:
            return False
        prov = self.witness.vouch(event, program, message)
        if prov is None or prov.sender is None:
            return True
        if m is not None:
            self.conns[(host, pid)] = (m["user"], m["ip"])
        else:
            self.conns.pop((host, pid), None)
        return True

    def _unfit(self, host: Any, user: str, ip: str, prov: Voucher) -> str | None:
        """Why a journal session's opening line cannot be believed (None: it can)."""
        uid = self.uid_of(user)
        # (a chrooted internal-sftp may log through sshd's root monitor: root vouches for itself)
        if prov.uid != 0 and (uid is None or uid != prov.uid):
            return f"the session names {user!r} but runs as uid {prov.uid}"
        if any(k[0] == host and v == (user, ip) for k, v in reversed(self.conns.items())):
            return None
        pid = prov.pid
        if isinstance(pid, int) and self.lookup_user(pid) == user:
            return None  # a connection from before the agent started: the live process proves it
        return f"no ssh connection of {user!r} from {ip!r} is known"


def uid_of(user: str) -> int | None:
    """The uid of a local user name (None when there is none)."""
    try:
        return pwd.getpwnam(user).pw_uid
    except (KeyError, ValueError):
        return None


def process_user(pid: int) -> str | None:
    """The owner of a still-running sftp-server process on this host that sshd started: its
    parent is sshd's session process and that one's parent a root sshd (None otherwise)."""
    try:
        import psutil

        p = psutil.Process(pid)
        name = p.name()
        if "sftp" not in name and "sshd" not in name:
            return None
        session = p.parent() if "sftp" in name else p
        monitor = session.parent() if session is not None else None
        if session is None or monitor is None or monitor.uids().real != 0:
            return None
        if not all(os.path.basename(q.exe()) in SSHD_NAMES for q in (session, monitor)):
            return None
        return p.username()
    except Exception:
        return None


__all__ = ["SFTP_PREFIXES", "SessionGate", "process_user", "uid_of"]

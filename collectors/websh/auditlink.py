"""The kernel audit subsystem, as far as the exec trail needs it: one session's execs, with argv.

The kernel writes an ``EXECVE`` record (the whole argv, read by the kernel at exec), a ``CWD``
record and a ``SYSCALL`` record (pid, ppid, uids, audit session) for every exec that a rule
selects. :class:`AuditRules` adds the rule that selects one audit session's ``execve`` and
``execveat`` calls (64- and 32-bit), tagged with :data:`RULE_KEY`, and removes it again; rules
left by a recorder that died are removed by the next one. If audit was off, the first rule
turns it on and the last rule out turns it off again (a state file under ``/run`` remembers who
turned it on). :class:`AuditListener` is a read-only member of the kernel's audit multicast
group: it coexists with auditd and takes nothing from it. The records themselves are read by
:mod:`.auditrecords`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ExecTrailUnavailable

NETLINK_AUDIT = 9
AUDIT_NLGRP_READLOG = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 1
NLM_F_ACK = 4
AUDIT_GET = 1000
AUDIT_SET = 1001
AUDIT_ADD_RULE = 1011
AUDIT_DEL_RULE = 1012
AUDIT_LIST_RULES = 1013
SYSCALL = 1300
CWD = 1307
EXECVE = 1309
EOE = 1320
AUDIT_STATUS_ENABLED = 1
AUDIT_FILTER_EXIT = 0x04
AUDIT_ALWAYS = 2
AUDIT_EQUAL = 0x40000000
AUDIT_ARCH = 11
AUDIT_SESSIONID = 25
AUDIT_FILTERKEY = 210
#: (audit arch, execve, execveat) for x86-64 and its 32-bit compat
ARCHES = ((0xC000003E, 59, 322), (0x40000003, 11, 358))
EXEC_SYSCALLS = frozenset({59, 322, 11, 358})
RULE_KEY = "alpacon-websh"
STATE_DIR = Path("/run/alpacon-agent")
NLMSG_HDR = struct.Struct("=IHHII")
_RULE_HEAD = struct.Struct("=III")
_FIELDS = 64
_RULE_FIXED = _RULE_HEAD.size + 4 * 64 + 4 * _FIELDS * 3 + 4
UNSET_SESSION = 0xFFFFFFFF
RECV_BUFFER = 32 * 1024 * 1024
SO_RCVBUFFORCE = 33


#: the connector (or audit) cannot be had here (not root, no kernel support, a namespace …)
AuditUnavailable = ExecTrailUnavailable


def _nlmsg(kind: int, body: bytes, seq: int) -> bytes:
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def rule_for_session(ses: int, arch: int, syscalls: tuple[int, ...], key: str = RULE_KEY) -> bytes:
    """An ``audit_rule_data``: at syscall exit, always, for ``syscalls`` of ``arch`` in session ``ses``."""
    mask = [0] * 64
    for n in syscalls:
        mask[n // 32] |= 1 << (n % 32)
    raw_key = key.encode()
    fields = [AUDIT_ARCH, AUDIT_SESSIONID, AUDIT_FILTERKEY]
    values = [arch, ses, len(raw_key)]
    pad = [0] * (_FIELDS - len(fields))
    flags = [AUDIT_EQUAL] * len(fields)
    return (
        _RULE_HEAD.pack(AUDIT_FILTER_EXIT, AUDIT_ALWAYS, len(fields))
        + struct.pack("=64I", *mask)
        + struct.pack("=64I", *fields, *pad)
        + struct.pack("=64I", *values, *pad)
        + struct.pack("=64I", *flags, *pad)
        + struct.pack("=I", len(raw_key))
        + raw_key
    )


@dataclass(frozen=True, slots=True)
class ListedRule:
    """A rule as the kernel lists it: its exact bytes (to delete it), its key and its session."""

    raw: bytes
    key: str | None
    session: int | None


def _parse_rule(raw: bytes) -> ListedRule:
    count = _RULE_HEAD.unpack_from(raw, 0)[2]
    base = _RULE_HEAD.size + 256
    fields = struct.unpack_from("=64I", raw, base)[:count]
    values = struct.unpack_from("=64I", raw, base + 256)[:count]
    buflen = struct.unpack_from("=I", raw, base + 768)[0]
    buf = raw[_RULE_FIXED:_RULE_FIXED + buflen]
    key: str | None = None
    session: int | None = None
    at = 0
    for f, v in zip(fields, values, strict=True):
        if f == AUDIT_SESSIONID:
            session = v
        elif f == AUDIT_FILTERKEY:
            key = buf[at:at + v].decode("utf-8", "replace")
        if f >= 200:  # string fields (filterkey, watch, dir, exe …) take their bytes from buf in order
            at += v
    return ListedRule(raw[:_RULE_FIXED + buflen], key, session)


class AuditControl:
    """The unicast audit socket: status, enable and rules. Root (CAP_AUDIT_CONTROL) only."""

    def __init__(self) -> None:
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
            self.sock.bind((0, 0))
        except OSError as exc:
            raise AuditUnavailable(exc.errno, f"audit: {exc.strerror}") from exc
        self.sock.settimeout(5.0)
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def _request(self, kind: int, body: bytes, want: int | None = None) -> list[bytes]:
        self._seq += 1
        seq = self._seq
        self.sock.send(_nlmsg(kind, body, seq))
        out: list[bytes] = []
        while True:
            data = self.sock.recv(1 << 16)
            off = 0
            while off + NLMSG_HDR.size <= len(data):
                length, mtype, _flags, mseq, _pid = NLMSG_HDR.unpack_from(data, off)
                payload = data[off + NLMSG_HDR.size: off + length]
                off += (length + 3) & ~3
                if mseq != seq:
                    continue
                if mtype == NLMSG_ERROR:
                    code = struct.unpack_from("=i", payload)[0]
                    if code:
                        raise AuditUnavailable(-code, f"audit request {kind}: {os.strerror(-code)}")
                    if want is None:
                        return out
                elif mtype == NLMSG_DONE:
                    return out
                elif want is not None and mtype == want:
                    out.append(payload)
                    if kind == AUDIT_GET:
                        return out

    def status(self) -> tuple[int, int]:
        """``(enabled, auditd pid)``: enabled is 0 (off), 1 (on) or 2 (locked)."""
        payload = self._request(AUDIT_GET, b"", want=AUDIT_GET)[0]
        _mask, enabled, _failure, pid = struct.unpack_from("=IIII", payload)
        return enabled, pid

    def set_enabled(self, on: bool) -> None:
        self._request(AUDIT_SET, struct.pack("=IIII", AUDIT_STATUS_ENABLED, 1 if on else 0, 0, 0) + b"\0" * 24)

    def add(self, rule: bytes) -> None:
        self._request(AUDIT_ADD_RULE, rule)

    def delete(self, rule: bytes) -> None:
        try:
            self._request(AUDIT_DEL_RULE, rule)
        except AuditUnavailable as exc:
            if exc.errno != errno.ENOENT:
                raise

    def rules(self) -> list[ListedRule]:
        return [_parse_rule(p) for p in self._request(AUDIT_LIST_RULES, b"", want=AUDIT_LIST_RULES)]


def live_sessions() -> set[int]:
    """The audit sessions of the processes alive now."""
    out: set[int] = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/sessionid", "rb") as f:
                    out.add(int(f.read()))
            except (OSError, ValueError):
                continue
    return out


def enter_new_session(uid: int) -> int:
    """Give this process (and all it will fork) a fresh audit session; its number."""
    with open("/proc/self/loginuid", "w") as f:
        f.write(str(uid))
    with open("/proc/self/sessionid", "rb") as f:
        ses = int(f.read())
    if ses == UNSET_SESSION:
        raise AuditUnavailable(errno.EPERM, "audit: the kernel gave no session id")
    return ses


class AuditRules:
    """The rules selecting one session's execs, added and removed under a lock shared by recorders.

    :meth:`remove` also turns audit off again when recorders turned it on and no rule of theirs is
    left; it is safe to call when :meth:`add` was never reached."""

    def __init__(self, state_dir: Path = STATE_DIR) -> None:
        self.session: int | None = None
        self.state_dir = state_dir
        self.rules: list[bytes] = []
        self.stale_removed = 0

    def _locked(self) -> _Lock:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return _Lock(self.state_dir / "websh-audit.lock")

    def enable(self) -> None:
        """Turn audit on if it is off (before the session's first process is forked: a process
        forked while audit was off is never audited)."""
        with self._locked():
            ctl = AuditControl()
            try:
                enabled, _pid = ctl.status()
                if enabled == 2:
                    raise AuditUnavailable(errno.EPERM, "audit: the configuration is locked (enabled=2)")
                if enabled == 0:
                    (self.state_dir / "websh-audit-enabled").write_text("audit was off; recorders turned it on\n")
                    ctl.set_enabled(True)
            finally:
                ctl.close()

    def add(self, session: int) -> None:
        """Add the rules selecting ``session``'s execs (and remove those of sessions that are gone)."""
        self.session = session
        self.rules = [rule_for_session(session, arch, (a, b)) for arch, a, b in ARCHES]
        with self._locked():
            ctl = AuditControl()
            try:
                self.stale_removed = self._remove_stale(ctl)
                for r in self.rules:
                    ctl.add(r)
            finally:
                ctl.close()

    def remove(self) -> None:
        with self._locked():
            ctl = AuditControl()
            try:
                for r in self.rules:
                    ctl.delete(r)
                self._remove_stale(ctl)
                left = [r for r in ctl.rules() if r.key == RULE_KEY]
                marker = self.state_dir / "websh-audit-enabled"
                if not left and marker.exists():
                    ctl.set_enabled(False)
                    marker.unlink()
            finally:
                ctl.close()

    @staticmethod
    def _remove_stale(ctl: AuditControl) -> int:
        ours = [r for r in ctl.rules() if r.key == RULE_KEY]
        if not ours:
            return 0
        alive = live_sessions()
        gone = [r for r in ours if r.session not in alive]
        for r in gone:
            ctl.delete(r.raw)
        return len(gone)


class _Lock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *_: object) -> None:
        os.close(self.fd)


class AuditListener:
    """A read-only socket in the audit multicast group (CAP_AUDIT_READ)."""

    def __init__(self, recv_buffer: int = RECV_BUFFER) -> None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
        except OSError as exc:
            raise AuditUnavailable(exc.errno, f"audit: {exc.strerror}") from exc
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, recv_buffer)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)
            sock.bind((0, 1 << (AUDIT_NLGRP_READLOG - 1)))
        except OSError as exc:
            sock.close()
            raise AuditUnavailable(exc.errno, f"audit multicast: {exc.strerror}") from exc
        sock.setblocking(False)
        self.sock = sock
        self.overruns = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def read(self) -> Iterator[tuple[int, bytes]]:
        """``(record type, text)`` of every message waiting now."""
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                raise
            off = 0
            while off + NLMSG_HDR.size <= len(data):
                length, mtype = NLMSG_HDR.unpack_from(data, off)[:2]
                if length < NLMSG_HDR.size:
                    break
                yield mtype, data[off + NLMSG_HDR.size: off + length].rstrip(b"\0")
                off += (length + 3) & ~3

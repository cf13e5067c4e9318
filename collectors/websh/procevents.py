"""The kernel's process-events connector: fork, exec, uid change and exit, as they happen.

A netlink ``NETLINK_CONNECTOR`` socket joined to ``CN_IDX_PROC`` receives one small message per
event for every process on the machine (root only). This module opens it, asks the kernel to
start sending (``PROC_CN_MCAST_LISTEN``) and decodes the messages into :class:`ProcEvent`; which
processes matter is the caller's business. The connector carries no argv: a program's
arguments must come from elsewhere (the audit trail), since ``/proc/PID/cmdline`` of a short
program is often gone before it can be read.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from dataclasses import dataclass

from agent.errors import ExecTrailUnavailable

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
NLMSG_DONE = 3
NLMSG_HDR = struct.Struct("=IHHII")
CN_MSG = struct.Struct("=IIIIHH")
EVENT_HDR = struct.Struct("=IIQ")
SO_RCVBUFFORCE = 33
RECV_BUFFER = 32 * 1024 * 1024

FORK = 0x00000001
EXEC = 0x00000002
UID = 0x00000004
EXIT = 0x80000000
_FORK_BODY = struct.Struct("=IIII")
_PAIR = struct.Struct("=II")
_ID_BODY = struct.Struct("=IIII")
_EXIT_BODY = struct.Struct("=IIII")


#: the connector (or audit) cannot be had here (not root, no kernel support, a namespace …)
ProcEventsUnavailable = ExecTrailUnavailable


@dataclass(frozen=True, slots=True)
class ProcEvent:
    """One decoded event. ``pid`` is the thread group (process) id; ``ts_ns`` is CLOCK_MONOTONIC."""

    what: int
    ts_ns: int
    pid: int
    tid: int
    parent: int = 0
    ruid: int = -1
    euid: int = -1
    exit_status: int | None = None


def exit_status_of(code: int) -> int:
    """A kernel exit code (the wait status) as a shell reports it: N, or 128+signal."""
    if code & 0x7F == 0:
        return (code >> 8) & 0xFF
    return 128 + (code & 0x7F)


def _control(op: int) -> bytes:
    body = struct.pack("=I", op)
    cn = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(body), 0) + body
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(cn), NLMSG_DONE, 0, 0, 0) + cn


class ProcEventSocket:
    """A listening connector socket; :meth:`read` returns the events that have arrived."""

    def __init__(self, recv_buffer: int = RECV_BUFFER) -> None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError as exc:
            raise ProcEventsUnavailable(exc.errno, f"process-events connector: {exc.strerror}") from exc
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, recv_buffer)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)
            sock.bind((0, CN_IDX_PROC))
            sock.send(_control(PROC_CN_MCAST_LISTEN))
        except OSError as exc:
            sock.close()
            raise ProcEventsUnavailable(exc.errno, f"process-events connector: {exc.strerror}") from exc
        self.sock = sock
        self.overruns = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        try:
            self.sock.send(_control(PROC_CN_MCAST_IGNORE))
        except OSError:
            pass
        self.sock.close()

    def read(self, block: bool = True) -> list[ProcEvent] | None:
        """The events of one datagram (maybe none of the kinds decoded); None when nothing is waiting
        and ``block`` is false."""
        try:
            data = self.sock.recv(65536, 0 if block else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:  # the kernel dropped events: say so, go on
                self.overruns += 1
                return []
            raise
        return decode(data)


def decode(data: bytes) -> list[ProcEvent]:
    """The process events in one netlink datagram (anything else is skipped)."""
    out: list[ProcEvent] = []
    off = 0
    while off + NLMSG_HDR.size <= len(data):
        length = NLMSG_HDR.unpack_from(data, off)[0]
        if length < NLMSG_HDR.size:
            break
        body = off + NLMSG_HDR.size + CN_MSG.size
        if body + EVENT_HDR.size <= off + length:
            ev = _event(data, body, off + length)
            if ev is not None:
                out.append(ev)
        off += (length + 3) & ~3
    return out


def _event(data: bytes, at: int, end: int) -> ProcEvent | None:
    what, _cpu, ts = EVENT_HDR.unpack_from(data, at)
    at += EVENT_HDR.size
    try:
        if what == FORK:
            _ppid, ptgid, cpid, ctgid = _FORK_BODY.unpack_from(data, at)
            return ProcEvent(FORK, ts, ctgid, cpid, parent=ptgid)
        if what == EXEC:
            tid, tgid = _PAIR.unpack_from(data, at)
            return ProcEvent(EXEC, ts, tgid, tid)
        if what == UID:
            tid, tgid, ruid, euid = _ID_BODY.unpack_from(data, at)
            return ProcEvent(UID, ts, tgid, tid, ruid=ruid, euid=euid)
        if what == EXIT:
            tid, tgid, code, _sig = _EXIT_BODY.unpack_from(data, at)
            return ProcEvent(EXIT, ts, tgid, tid, exit_status=exit_status_of(code))
    except struct.error:
        return None
    return None


def monotonic_ns() -> int:
    """The clock the connector stamps events with (``ktime_get_ns``: CLOCK_MONOTONIC)."""
    return time.monotonic_ns()

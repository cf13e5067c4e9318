"""The text of the kernel's audit records: one exec (``SYSCALL``, ``EXECVE`` …, ``CWD``) as :class:`AuditExec`.

Values are ``"quoted"`` when plain, hex-encoded when they hold spaces, quotes, control or
non-ASCII bytes, and a long argument comes in pieces (``a1_len=… a1[0]=… a1[1]=…``), possibly
over several ``EXECVE`` records; :func:`parse_exec` puts each argument back together, byte-exact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from collectors.websh.auditlink import CWD, EXEC_SYSCALLS, EXECVE, SYSCALL

_STAMP = re.compile(rb"audit\((\d+)\.(\d+):(\d+)\):\s?")
_FIELD = re.compile(rb'([A-Za-z0-9_\[\]]+)=("[^"]*"|\S*)')


def stamp(text: bytes) -> tuple[float, int, bytes] | None:
    """``(wall time, serial, the rest)`` of one record's text."""
    m = _STAMP.match(text)
    if m is None:
        return None
    return int(m.group(1)) + int(m.group(2)) / 1000, int(m.group(3)), text[m.end():]


def fields(text: bytes) -> dict[bytes, bytes]:
    return {m.group(1): m.group(2) for m in _FIELD.finditer(text)}


def unquote(value: bytes) -> bytes:
    """An audit value: ``"text"`` as it is, ``(null)`` as nothing, anything else hex-encoded."""
    if value.startswith(b'"') and value.endswith(b'"') and len(value) >= 2:
        return value[1:-1]
    if value == b"(null)":
        return b""
    try:
        return bytes.fromhex(value.decode("ascii"))
    except ValueError:
        return value


@dataclass(slots=True)
class AuditExec:
    """One successful exec as the audit records tell it."""

    serial: int
    at: float
    pid: int
    ppid: int
    uid: int
    euid: int
    session: int
    argv: list[bytes]
    exe: bytes
    cwd: bytes | None


def parse_exec(serial: int, at: float, records: list[tuple[int, bytes]]) -> AuditExec | None:
    """The exec in one event's records (SYSCALL, EXECVE …, CWD), or None when it is not one."""
    sc: dict[bytes, bytes] | None = None
    argv_parts: dict[int, list[tuple[int, bytes]]] = {}
    argc = 0
    cwd: bytes | None = None
    for rtype, rest in records:
        if rtype == SYSCALL:
            sc = fields(rest)
        elif rtype == CWD:
            cwd = unquote(fields(rest).get(b"cwd", b'""'))
        elif rtype == EXECVE:
            for k, v in fields(rest).items():
                if k == b"argc":
                    argc = int(v)
                elif k.startswith(b"a") and not k.endswith(b"_len"):
                    name = k[1:]
                    piece = 0
                    if b"[" in name:
                        name, _, idx = name.partition(b"[")
                        piece = int(idx.rstrip(b"]"))
                    if name.isdigit():
                        argv_parts.setdefault(int(name), []).append((piece, unquote(v)))
    if sc is None or int(sc.get(b"syscall", b"-1")) not in EXEC_SYSCALLS or sc.get(b"success") != b"yes":
        return None
    argv = [b"".join(p for _, p in sorted(argv_parts.get(i, []))) for i in range(argc)]
    return AuditExec(
        serial=serial,
        at=at,
        pid=int(sc.get(b"pid", b"0")),
        ppid=int(sc.get(b"ppid", b"0")),
        uid=int(sc.get(b"uid", b"-1")),
        euid=int(sc.get(b"euid", b"-1")),
        session=int(sc.get(b"ses", b"4294967295")),
        argv=argv,
        exe=unquote(sc.get(b"exe", b'""')),
        cwd=cwd,
    )

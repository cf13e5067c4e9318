"""Who and where a typed line really runs: the shell behind ``sudo``/``su``/``script``, read from /proc.

With ``sudo``'s ``use_pty`` (and ``su --pty``, ``script``, ``pty.spawn`` …) the process in the
recorder's foreground is not the shell the keys reach: that one runs further down, on a PTY of
its own, often as another user. :func:`shell_behind` walks the foreground process's descendants
to the deepest shell, and :func:`identity` reads its real uid, login name and cwd.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass

#: shells proper (not the programs that start them)
SHELLS = frozenset(
    {"sh", "dash", "bash", "zsh", "ksh", "ksh93", "mksh", "pdksh", "ash", "busybox", "fish", "tcsh", "csh", "rbash",
     "yash"}
)
MAX_DESCENDANTS = 512


@dataclass(frozen=True, slots=True)
class Identity:
    """The real uid, its login name and the cwd of one process."""

    pid: int
    uid: int | None
    user: str | None
    cwd: str | None


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def children(pid: int) -> list[int]:
    """The children of ``pid`` (every thread's)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        raw = _read(f"/proc/{pid}/task/{tid}/children")
        if raw:
            out.extend(int(x) for x in raw.split())
    return out


def comm(pid: int) -> str:
    raw = _read(f"/proc/{pid}/comm")
    return raw.decode("utf-8", "replace").strip() if raw else ""


def shell_behind(pid: int) -> int:
    """The shell the keys reach among ``pid`` and its descendants: the deepest one waiting at its
    prompt (its terminal's foreground), else the deepest shell, else ``pid`` itself."""
    found: list[tuple[bool, int, int]] = []
    if comm(pid) in SHELLS:
        found.append((at_prompt(pid), 0, pid))
    stack = [(pid, 0)]
    seen = 0
    while stack and seen < MAX_DESCENDANTS:
        p, depth = stack.pop()
        seen += 1
        for c in children(p):
            if comm(c) in SHELLS:
                found.append((at_prompt(c), depth + 1, c))
            stack.append((c, depth + 1))
    return max(found)[2] if found else pid


def identity(pid: int) -> Identity:
    """The real uid, user name and cwd of ``pid`` (None for what cannot be read)."""
    uid: int | None = None
    raw = _read(f"/proc/{pid}/status")
    if raw:
        for line in raw.splitlines():
            if line.startswith(b"Uid:"):
                uid = int(line.split()[1])
                break
    try:
        cwd: str | None = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        cwd = None
    name: str | None = None
    if uid is not None:
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = None
    return Identity(pid, uid, name, cwd)


def at_prompt(pid: int) -> bool:
    """Whether ``pid`` leads its terminal's foreground process group (a shell waiting at its prompt)."""
    raw = _read(f"/proc/{pid}/stat")
    if not raw:
        return False
    fields = raw[raw.rfind(b")") + 2:].split()
    try:
        pgrp, tpgid = int(fields[2]), int(fields[5])
    except (IndexError, ValueError):
        return False
    return tpgid == pgrp == pid  # a job-control shell leads its group; its subshells do not


def nested_shell(fg: int) -> int | None:
    """The shell the keys reach when ``fg`` (not a shell itself: ``script``, ``pty.spawn`` …) runs one
    on a PTY of its own and it waits at its prompt; None when there is none."""
    sh = shell_behind(fg)
    return sh if sh != fg and at_prompt(sh) else None

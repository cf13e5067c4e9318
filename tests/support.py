"""Shared test helpers: real-part requirements and polling without sleep-and-hope."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")
IN_CI = os.environ.get("CI") == "true"


def need(ok: bool, what: str) -> None:
    """Skip when a real part is missing on a developer machine; fail when CI=true."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"required part missing in CI: {what}")
    pytest.skip(f"missing part: {what} (with CI=true this is a failure)")


def need_binary(name: str, path: str | None = None) -> str:
    """The path of a required program (see :func:`need`)."""
    found = path if path and os.access(path, os.X_OK) else shutil.which(name)
    need(found is not None, f"program {name}")
    assert found is not None
    return found


def need_root() -> None:
    need(os.geteuid() == 0, "root privileges")


def wait_until(pred: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> T:
    """Poll ``pred`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T = pred()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
        last = pred()
    return last


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def throwaway_user(prefix: str = "aat") -> Iterator[str]:
    """A local user made for one test (``useradd``) and removed after it, with its home."""
    need_root()
    need_binary("useradd")
    name = f"{prefix}{os.getpid() % 100000}{secrets.token_hex(2)}"[:31]
    subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", "-r", name], capture_output=True)


def path_without(tmp: Path, *names: str) -> str:
    """A PATH like this process's in which the programs ``names`` do not exist: one directory of
    links to every other program on PATH (they may share a directory with the removed ones)."""
    bindir = tmp / f"path-without-{'-'.join(names)}"
    bindir.mkdir()
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for entry in os.scandir(d):
            target = bindir / entry.name
            if entry.name in names or target.exists() or target.is_symlink():
                continue
            if os.access(entry.path, os.X_OK) and not entry.is_dir():
                target.symlink_to(entry.path)
    return str(bindir)

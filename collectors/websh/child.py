"""The session's shell as a process: started as the session's user in a new PTY, signalled and reaped.

:class:`ShellChild` owns the PTY master and the child's pid; the recorder (``recorder.py``)
relays between the terminal and that master and asks the child for the terminal's state
(foreground process group, the program running there, its directory).
"""

from __future__ import annotations

import fcntl
import os
import pwd
import select
import signal
import struct
import termios

from agent.errors import RecorderError
from collectors.websh.integration import ShellLaunch

TIOCGPTN = 0x80045430
LOGIN_PATH_ROOT = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOGIN_PATH_USER = "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"
#: variables a login keeps from the caller's environment when switching user
KEEP_ENV = ("TERM", "COLORTERM", "LANG", "LANGUAGE", "TZ", "LC_ALL")


def winsize(fd: int) -> bytes | None:
    """The terminal's window size (``struct winsize``), or None when ``fd`` is not a terminal."""
    try:
        return fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return None


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to a (possibly non-blocking) descriptor."""
    try:
        n = os.write(fd, data)
    except (InterruptedError, BlockingIOError):
        n = 0
    if n == len(data):
        return
    view = memoryview(data)[n:]
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[n:]


def login_env(pw: pwd.struct_passwd, base: dict[str, str]) -> dict[str, str]:
    """The environment of a login as ``pw``: a few of the caller's variables, the user's own."""
    env = {k: v for k, v in base.items() if k in KEEP_ENV or k.startswith("LC_")}
    env.setdefault("TERM", "xterm-256color")
    env.update(
        HOME=pw.pw_dir,
        USER=pw.pw_name,
        LOGNAME=pw.pw_name,
        SHELL=pw.pw_shell or "/bin/sh",
        PATH=LOGIN_PATH_ROOT if pw.pw_uid == 0 else LOGIN_PATH_USER,
        MAIL=f"/var/mail/{pw.pw_name}",
    )
    return env


class ShellChild:
    """The shell of one session (as ``user``; None: the caller)."""

    def __init__(self, user: str | None) -> None:
        try:
            self.pw = pwd.getpwuid(os.getuid()) if user is None else pwd.getpwnam(user)
        except KeyError:
            raise RecorderError(f"unknown user {user!r}") from None
        #: the shell runs as another user than the caller
        self.switch = user is not None and os.geteuid() != self.pw.pw_uid
        if self.switch and os.geteuid() != 0:
            raise RecorderError(f"only root can start a session as {self.pw.pw_name!r}")
        self.pid = 0
        self.master = -1
        self.exit_status: int | None = None
        self._last_comm: tuple[int, str] = (0, "")

    def environment(self) -> dict[str, str]:
        """The shell's environment before the shell integration adds to it."""
        pw = self.pw
        base = {k: v for k, v in os.environ.items() if not k.startswith("ALPACON_")}
        if self.switch:
            return login_env(pw, base)
        env = base
        for k, v in (("HOME", pw.pw_dir), ("USER", pw.pw_name), ("LOGNAME", pw.pw_name)):
            env.setdefault(k, v)
        env.setdefault("SHELL", pw.pw_shell or "/bin/sh")
        env.setdefault("TERM", "xterm-256color")
        return env

    def spawn(self, launch: ShellLaunch, env: dict[str, str], size: bytes | None, login: bool) -> None:
        """Fork the shell in a new PTY (of window size ``size``); the master is non-blocking."""
        pw = self.pw
        pid, master = os.forkpty()
        if pid == 0:  # the child: become the user, then the shell
            try:
                if size:
                    fcntl.ioctl(0, termios.TIOCSWINSZ, size)
                if self.switch:
                    os.initgroups(pw.pw_name, pw.pw_gid)
                    os.setgid(pw.pw_gid)
                    os.setuid(pw.pw_uid)
                if self.switch or login:
                    try:
                        os.chdir(env.get("HOME") or pw.pw_dir)
                    except OSError:
                        os.chdir("/")
                os.execve(launch.path, launch.argv, env)
            except BaseException as exc:  # noqa: BLE001 - report whatever stopped the exec
                os.write(2, f"alpacon-agent websh: cannot start {launch.path}: {exc}\r\n".encode())
            finally:
                os._exit(127)
        self.pid = pid
        self.master = master
        os.set_blocking(master, False)

    def tty_name(self) -> str | None:
        """The PTY's device name (``/dev/pts/N``)."""
        try:
            n = struct.unpack("I", fcntl.ioctl(self.master, TIOCGPTN, b"\0" * 4))[0]
            return f"/dev/pts/{n}"
        except OSError:
            return None

    def reap(self, block: bool) -> int | None:
        """The shell's exit status once it ended (128 + N for a signal N), else None."""
        while True:
            try:
                pid, st = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            except ChildProcessError:
                return self.exit_status if self.exit_status is not None else 0
            except InterruptedError:
                continue
            if pid == 0:
                return None
            code = os.waitstatus_to_exitcode(st)
            self.exit_status = code if code >= 0 else 128 - code
            return self.exit_status

    def hangup(self) -> None:
        self.kill(signal.SIGHUP)
        self.kill(signal.SIGCONT)

    def kill(self, sig: int) -> None:
        """Signal the shell's process group and the foreground one."""
        for target in {self.pid, self.foreground() or self.pid}:
            try:
                os.killpg(target, sig)
            except OSError:
                pass

    def forward(self, sig: int) -> None:
        """Signal the foreground process group (Ctrl-C, Ctrl-\\ from the terminal)."""
        fg = self.foreground()
        if fg:
            try:
                os.killpg(fg, sig)
            except OSError:
                pass

    def foreground(self) -> int | None:
        """The PTY's foreground process group."""
        try:
            pg = os.tcgetpgrp(self.master)
        except OSError:
            return None
        return pg if pg > 0 else None

    def resize(self, size: bytes) -> bool:
        """Give the PTY a new window size; False when it could not be set."""
        try:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)
        except OSError:
            return False
        return True

    def comm(self, pid: int) -> str:
        """The program name of process ``pid`` (re-read whenever the foreground changes)."""
        if self._last_comm[0] == pid:
            return self._last_comm[1]
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
                name = f.read().strip()
        except OSError:
            return ""
        self._last_comm = (pid, name)
        return name

    def forget_comm(self) -> None:
        self._last_comm = (0, "")

    @staticmethod
    def cwd(pid: int) -> str | None:
        try:
            return os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return None

"""The PTY relay: runs the session's shell in a new PTY and relays it transparently, recording it.

One poll loop over the terminal, the PTY master and a signal wake-up pipe. Output is read in
big chunks and written on at once; the only work per chunk when no mark is in it is one
``bytes.find``. Marks go to the :class:`CommandTracker`; typed lines go through the
:class:`LineEditor` (never while the PTY is at a no-echo prompt); finished records are handed
to a delivery callback that returns at once. Window size changes, hang-ups and termination are
passed on to the shell, and the shell's exit status becomes the recorder's.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pwd
import select
import signal
import struct
import termios
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.errors import RecorderError
from agent.events import format_ts, stable_id
from agent.websh.asciicast import AsciicastWriter
from agent.websh.inputline import EchoCheck, LineEditor
from agent.websh.integration import SHELL_NAMES, ShellLaunch, new_nonce, plan_shell
from agent.websh.marks import MarkParser, alt_screen_change
from agent.websh.tracker import CommandRecord, CommandTracker

READ_SIZE = 65_536
BURST_READS = 8
ECHO_WAIT_S = 2.0
TIOCGPTN = 0x80045430
LOGIN_PATH_ROOT = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOGIN_PATH_USER = "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"
#: variables a login keeps from the caller's environment when switching user
KEEP_ENV = ("TERM", "COLORTERM", "LANG", "LANGUAGE", "TZ", "LC_ALL")


@dataclass
class SessionInfo:
    """The session's metadata, as the Websh runtime passed it."""

    session_id: str
    username: str | None = None
    groupname: str | None = None
    operator: str | None = None
    browser: str | None = None
    remote_ip: str | None = None


@dataclass
class RecorderOptions:
    """How to run the session."""

    user: str | None = None
    command: list[str] = field(default_factory=list)
    login: bool = True
    record_io: str | None = None
    record_input: bool = False
    record_io_max_bytes: int = 64 * 1024 * 1024
    hooks_lost_after_s: float = 2.0


@dataclass
class _Awaiting:
    text: str
    truncated: bool
    since: int
    index: int
    at: float
    top_level: bool
    cwd: str | None


def _winsize(fd: int) -> bytes | None:
    try:
        return fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return None


def _write_all(fd: int, data: bytes) -> None:
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


def _login_env(pw: pwd.struct_passwd, base: dict[str, str]) -> dict[str, str]:
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


class Recorder:
    """One recorded session: ``run()`` relays it to the end and returns the exit status."""

    def __init__(
        self,
        info: SessionInfo,
        opts: RecorderOptions,
        deliver: Callable[[dict[str, Any]], None],
        redact: Callable[[str], str] | None = None,
        stdin: int = 0,
        stdout: int = 1,
        on_spawned: Callable[[], None] | None = None,
    ) -> None:
        self.info = info
        self.opts = opts
        self.deliver = deliver
        self.redact = redact or (lambda s: s)
        self.stdin = stdin
        self.stdout = stdout
        self.on_spawned = on_spawned
        self.exit_status: int | None = None
        self._pw = self._resolve_user()
        self._switch = opts.user is not None and os.geteuid() != self._pw.pw_uid
        if self._switch and os.geteuid() != 0:
            raise RecorderError(f"only root can start a session as {self._pw.pw_name!r}")
        self.nonce = new_nonce()
        self.parser = MarkParser(self.nonce.encode())
        self.editor = LineEditor()
        self.echo = EchoCheck()
        self.tracker: CommandTracker | None = None
        self._awaiting: list[_Awaiting] = []
        self._alt = False
        self._cast: AsciicastWriter | None = None
        self._child = 0
        self._master = -1
        self._flags: set[int] = set()
        self._line_start = 0
        self._last_comm: tuple[int, str] = (0, "")
        self._shell_path: str | None = None
        self._tty: str | None = None

    # -- setup -------------------------------------------------------------------------------

    def _resolve_user(self) -> pwd.struct_passwd:
        name = self.opts.user
        try:
            if name is None:
                return pwd.getpwuid(os.getuid())
            return pwd.getpwnam(name)
        except KeyError:
            raise RecorderError(f"unknown user {name!r}") from None

    def _plan(self) -> tuple[ShellLaunch, dict[str, str]]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("ALPACON_")}
        if self._switch:
            env = _login_env(self._pw, base)
        else:
            env = base
            for k, v in (("HOME", self._pw.pw_dir), ("USER", self._pw.pw_name), ("LOGNAME", self._pw.pw_name)):
                env.setdefault(k, v)
            env.setdefault("SHELL", self._pw.pw_shell or "/bin/sh")
            env.setdefault("TERM", "xterm-256color")
        cmd = list(self.opts.command)
        if cmd:
            shell, args = cmd[0], cmd[1:]
            if "/" not in shell:
                from shutil import which

                found = which(shell, path=env.get("PATH"))
                if found is None:
                    raise RecorderError(f"command not found: {shell}")
                shell = found
        else:
            shell, args = (self._pw.pw_shell or "/bin/sh"), []
        launch = plan_shell(
            shell, args, nonce=self.nonce, login=self.opts.login, env=env, owner_uid=self._pw.pw_uid
        )
        env.update(launch.env)
        return launch, env

    def _spawn(self, launch: ShellLaunch, env: dict[str, str], winsize: bytes | None) -> None:
        pw = self._pw
        pid, master = os.forkpty()
        if pid == 0:  # the child: become the user, then the shell
            try:
                if winsize:
                    fcntl.ioctl(0, termios.TIOCSWINSZ, winsize)
                if self._switch:
                    os.initgroups(pw.pw_name, pw.pw_gid)
                    os.setgid(pw.pw_gid)
                    os.setuid(pw.pw_uid)
                if self._switch or self.opts.login:
                    try:
                        os.chdir(env.get("HOME") or pw.pw_dir)
                    except OSError:
                        os.chdir("/")
                os.execve(launch.path, launch.argv, env)
            except BaseException as exc:  # noqa: BLE001 - report whatever stopped the exec
                os.write(2, f"alpacon-agent websh: cannot start {launch.path}: {exc}\r\n".encode())
            finally:
                os._exit(127)
        self._child = pid
        self._master = master
        os.set_blocking(master, False)

    def _tty_name(self) -> str | None:
        try:
            n = struct.unpack("I", fcntl.ioctl(self._master, TIOCGPTN, b"\0" * 4))[0]
            return f"/dev/pts/{n}"
        except OSError:
            return None

    # -- records -----------------------------------------------------------------------------

    def _session_data(self, state: str, started: float, **more: Any) -> dict[str, Any]:
        i = self.info
        data: dict[str, Any] = {
            "session_id": i.session_id,
            "username": i.username or self._pw.pw_name,
            "groupname": i.groupname,
            "operator": i.operator,
            "browser": i.browser,
            "remote_ip": i.remote_ip,
            "started_at": format_ts(started),
            "state": state,
            "shell": self._shell_path,
            "tty": self._tty,
        }
        data.update(more)
        return data

    def _send(self, kind: str, data: dict[str, Any], ts: str, *id_parts: Any) -> None:
        msg = {"op": "emit", "kind": kind, "data": data, "ts": ts, "id": stable_id("ws", self.info.session_id, *id_parts)}
        self.deliver(msg)

    def _on_record(self, rec: CommandRecord) -> None:
        data: dict[str, Any] = {
            "session_id": self.info.session_id,
            "seq": rec.seq,
            "command": self.redact(rec.command),
            "started_at": format_ts(rec.started_at),
            "duration_ms": rec.duration_ms,
            "exit_code": rec.exit_code,
            "cwd": rec.cwd,
            "source": rec.source,
        }
        if rec.truncated:
            data["truncated"] = True
        self._send("websh_command", data, data["started_at"], "cmd", rec.seq)

    # -- the relay ---------------------------------------------------------------------------

    def run(self) -> int:
        """Start the shell, relay until it ends, report the session; the shell's exit status."""
        launch, env = self._plan()
        self._shell_path = launch.path
        is_tty = os.isatty(self.stdin)
        winsize = _winsize(self.stdin) if is_tty else None
        self.tracker = CommandTracker(
            self._on_record, integrated=launch.hooked, hooks_lost_after_s=self.opts.hooks_lost_after_s
        )
        started = time.time()
        saved = termios.tcgetattr(self.stdin) if is_tty else None
        try:
            self._spawn(launch, env, winsize)
            if self.on_spawned is not None:
                self.on_spawned()  # threads may start now that the fork is done
            self._tty = self._tty_name()
            self._send("websh_session", self._session_data("open", started), format_ts(started), "open")
            if self.opts.record_io:
                rows, cols = (struct.unpack("HHHH", winsize)[:2] if winsize else (24, 80))
                self._cast = AsciicastWriter(
                    self.opts.record_io,
                    cols,
                    rows,
                    max_bytes=self.opts.record_io_max_bytes,
                    env={k: env[k] for k in ("TERM", "SHELL") if k in env},
                )
            if saved is not None:
                tty.setraw(self.stdin, termios.TCSANOW)
            status = self._loop()
        finally:
            if saved is not None:
                termios.tcsetattr(self.stdin, termios.TCSAFLUSH, saved)
            if self._master >= 0:
                os.close(self._master)
            if self._cast is not None:
                self._cast.close()
            launch.cleanup()
        ended = time.time()
        self.tracker.close(ended, status)
        self._send(
            "websh_session",
            self._session_data(
                "closed",
                started,
                ended_at=format_ts(ended),
                duration_ms=max(0, int(round((ended - started) * 1000))),
                command_count=self.tracker.count,
                exit_status=status,
            ),
            format_ts(ended),
            "close",
        )
        self.exit_status = status
        return status

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._flags.add(signum)

    def _loop(self) -> int:
        rfd, wfd = os.pipe()
        for fd in (rfd, wfd):
            os.set_blocking(fd, False)
        handled = (signal.SIGWINCH, signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)
        old_handlers = {s: signal.signal(s, self._on_signal) for s in handled}
        old_wakeup = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        poller = select.poll()
        poller.register(self._master, select.POLLIN)
        poller.register(rfd, select.POLLIN)
        stdin_open = True
        poller.register(self.stdin, select.POLLIN)
        status: int | None = None
        kill_at: float | None = None
        drain_until = 0.0
        master = self._master
        status = self._reap(block=False)  # a shell that died before the handlers were set
        try:
            while True:
                if status is not None:
                    timeout = 50  # the shell is gone: drain what is left, briefly
                elif self._awaiting or self.tracker._pending:
                    timeout = 250
                else:
                    timeout = 100 if kill_at else -1
                try:
                    events = poller.poll(timeout)
                except InterruptedError:
                    events = []
                if status is not None and (not events or time.monotonic() > drain_until):
                    break
                for fd, _ev in events:
                    if fd == master:
                        if not self._from_shell():
                            poller.unregister(master)
                            if status is None:
                                status = self._reap(block=True)
                            return status
                    elif fd == self.stdin:
                        if not self._from_user():
                            poller.unregister(self.stdin)
                            stdin_open = False
                            self._hangup()
                            kill_at = time.monotonic() + 5.0
                    elif fd == rfd:
                        try:
                            while os.read(rfd, 512):
                                pass
                        except BlockingIOError:
                            pass
                if self._flags:
                    flags, self._flags = self._flags, set()
                    if signal.SIGWINCH in flags and stdin_open:
                        self._resize()
                    if flags & {signal.SIGTERM, signal.SIGHUP}:
                        self._hangup()
                        kill_at = kill_at or time.monotonic() + 5.0
                    if flags & {signal.SIGINT, signal.SIGQUIT}:
                        self._forward(signal.SIGINT if signal.SIGINT in flags else signal.SIGQUIT)
                    if signal.SIGCHLD in flags and status is None:
                        status = self._reap(block=False)
                        drain_until = time.monotonic() + 0.5
                if kill_at is not None and status is None and time.monotonic() > kill_at:
                    self._kill(signal.SIGKILL)
                    kill_at = time.monotonic() + 5.0
                if self._awaiting or self.tracker._pending:
                    now = time.time()
                    self._expire_awaiting(now)
                    self.tracker.tick(now)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old_handlers.items():
                signal.signal(s, h)
            os.close(rfd)
            os.close(wfd)
            if status is None:
                status = self._reap(block=True)
            tail = self.parser.flush()
            if tail:
                _write_all(self.stdout, tail)
        return status

    def _reap(self, block: bool) -> int | None:
        while True:
            try:
                pid, st = os.waitpid(self._child, 0 if block else os.WNOHANG)
            except ChildProcessError:
                return self.exit_status if self.exit_status is not None else 0
            except InterruptedError:
                continue
            if pid == 0:
                return None
            code = os.waitstatus_to_exitcode(st)
            self.exit_status = code if code >= 0 else 128 - code
            return self.exit_status

    def _hangup(self) -> None:
        self._kill(signal.SIGHUP)
        self._kill(signal.SIGCONT)

    def _kill(self, sig: int) -> None:
        for target in {self._child, self._fg() or self._child}:
            try:
                os.killpg(target, sig)
            except OSError:
                pass

    def _forward(self, sig: int) -> None:
        fg = self._fg()
        if fg:
            try:
                os.killpg(fg, sig)
            except OSError:
                pass

    def _fg(self) -> int | None:
        try:
            pg = os.tcgetpgrp(self._master)
        except OSError:
            return None
        return pg if pg > 0 else None

    def _resize(self) -> None:
        ws = _winsize(self.stdin)
        if ws is None:
            return
        try:
            fcntl.ioctl(self._master, termios.TIOCSWINSZ, ws)
        except OSError:
            return
        if self._cast is not None:
            rows, cols = struct.unpack("HHHH", ws)[:2]
            self._cast.resize(cols, rows)

    # -- data --------------------------------------------------------------------------------

    def _from_shell(self) -> bool:
        """Relay what the shell wrote: a burst of reads (bounded, so keys are never kept waiting)."""
        for _ in range(BURST_READS):
            try:
                data = os.read(self._master, READ_SIZE)
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EBADF):
                    return False
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    return True
                raise
            if not data:
                return False
            self._output(data)
        return True

    def _output(self, data: bytes) -> None:
        visible, marks = self.parser.feed(data)
        if visible:
            _write_all(self.stdout, visible)
            alt = alt_screen_change(visible)
            if alt is not None:
                self._alt = alt
            if self._awaiting or not self.editor.empty:
                self.echo.add(visible)
                if self._awaiting:
                    self._confirm(time.time())
            if self._cast is not None:
                self._cast.output(visible)
        if marks:
            now = time.time()
            for m in marks:
                self.tracker.mark(m, now)

    def _from_user(self) -> bool:
        try:
            data = os.read(self.stdin, READ_SIZE)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                return True
            return False
        if not data:
            return False
        # the terminal's state when the keys arrive, taken before the shell can react to them
        try:
            lflag = termios.tcgetattr(self._master)[3]
        except termios.error:
            lflag = termios.ECHO
        fg = self._fg()
        top_level = fg == self._child
        if top_level:
            self._last_comm = (0, "")
        to_shell = not self._alt and (top_level or (fg is not None and self._comm(fg) in SHELL_NAMES))
        cwd = self._cwd(fg) if (to_shell and fg and (b"\r" in data or b"\n" in data)) else None
        _write_all(self._master, data)
        echo_on = bool(lflag & termios.ECHO)
        secret = not echo_on and bool(lflag & termios.ICANON)
        if self._cast is not None and self.opts.record_input and echo_on:
            self._cast.input(data)
        if not to_shell:
            self.editor.reset()  # keys for a program (vim, top, a REPL …), not for a shell
            return True
        if self.editor.empty:
            self._line_start = self.echo.offset
        lines = self.editor.feed(data, secret=secret)
        if lines:
            now = time.time()
            for i, line in enumerate(lines):
                self._awaiting.append(_Awaiting(line.text, line.truncated, self._line_start, i, now, top_level, cwd))
            self._confirm(now)
        return True

    def _confirm(self, now: float) -> None:
        """Hand on the typed lines the screen has shown by now, in the order they were typed."""
        keep: list[_Awaiting] = []
        for a in self._awaiting:
            if self.echo.shown(a.text, a.since, a.index):
                self.tracker.line(a.text, a.at, top_level=a.top_level, cwd=a.cwd, truncated=a.truncated)
            else:
                keep.append(a)
        self._awaiting = keep
        if not keep and self.editor.empty:
            self.echo.trim(self.echo.offset)

    def _expire_awaiting(self, now: float) -> None:
        if self._awaiting and now - self._awaiting[0].at > ECHO_WAIT_S:
            # never shown on screen (typed at a prompt that does not echo): not recorded
            self._awaiting = [a for a in self._awaiting if now - a.at <= ECHO_WAIT_S]
        if not self._awaiting and self.editor.empty:
            self.echo.trim(self.echo.offset)

    def _comm(self, pid: int) -> str:
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

    @staticmethod
    def _cwd(pid: int) -> str | None:
        try:
            return os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return None

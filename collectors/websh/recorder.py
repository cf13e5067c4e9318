"""The PTY relay: runs the session's shell in a new PTY and relays it transparently, recording it.

The shell itself (user, PTY, signals, exit status) is ``collectors.websh.child``.

One poll loop over the terminal, the PTY master and a signal wake-up pipe. Output is read in
big chunks and written on at once; the only work per chunk when no mark is in it is one
``bytes.find``. Marks go to the :class:`CommandTracker`; typed lines go through the
:class:`LineEditor` (never while the PTY is at a no-echo prompt); finished records are handed
to a delivery callback that returns at once. Window size changes, hang-ups and termination are
passed on to the shell, and the shell's exit status becomes the recorder's.
"""

from __future__ import annotations

import errno
import os
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
from collectors.websh.asciicast import AsciicastWriter
from collectors.websh.child import ShellChild, winsize, write_all
from collectors.websh.inputline import EchoCheck, LineEditor
from collectors.websh.integration import SHELL_NAMES, ShellLaunch, new_nonce, plan_shell
from collectors.websh.marks import MarkParser, alt_screen_change
from collectors.websh.tracker import CommandRecord, CommandTracker

READ_SIZE = 65_536
BURST_READS = 8
ECHO_WAIT_S = 2.0
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
        self.child = ShellChild(opts.user)
        self.nonce = new_nonce()
        self.parser = MarkParser(self.nonce.encode())
        self.editor = LineEditor()
        self.echo = EchoCheck()
        self.tracker: CommandTracker | None = None
        self._awaiting: list[_Awaiting] = []
        self._alt = False
        self._cast: AsciicastWriter | None = None
        self._flags: set[int] = set()
        self._line_start = 0
        self._shell_path: str | None = None
        self._tty: str | None = None

    # -- setup -------------------------------------------------------------------------------

    def _plan(self) -> tuple[ShellLaunch, dict[str, str]]:
        env = self.child.environment()
        pw = self.child.pw
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
            shell, args = (pw.pw_shell or "/bin/sh"), []
        launch = plan_shell(shell, args, nonce=self.nonce, login=self.opts.login, env=env, owner_uid=pw.pw_uid)
        env.update(launch.env)
        return launch, env

    # -- records -----------------------------------------------------------------------------

    def _session_data(self, state: str, started: float, **more: Any) -> dict[str, Any]:
        i = self.info
        data: dict[str, Any] = {
            "session_id": i.session_id,
            "username": i.username or self.child.pw.pw_name,
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
        size = winsize(self.stdin) if is_tty else None
        self.tracker = CommandTracker(
            self._on_record, integrated=launch.hooked, hooks_lost_after_s=self.opts.hooks_lost_after_s
        )
        started = time.time()
        saved = termios.tcgetattr(self.stdin) if is_tty else None
        try:
            self.child.spawn(launch, env, size, self.opts.login)
            if self.on_spawned is not None:
                self.on_spawned()  # threads may start now that the fork is done
            self._tty = self.child.tty_name()
            self._send("websh_session", self._session_data("open", started), format_ts(started), "open")
            if self.opts.record_io:
                rows, cols = (struct.unpack("HHHH", size)[:2] if size else (24, 80))
                self._cast = AsciicastWriter(self.opts.record_io, cols, rows, max_bytes=self.opts.record_io_max_bytes,
                                             env={k: env[k] for k in ("TERM", "SHELL") if k in env})
            if saved is not None:
                tty.setraw(self.stdin, termios.TCSANOW)
            status = self._loop()
        finally:
            if saved is not None:
                termios.tcsetattr(self.stdin, termios.TCSAFLUSH, saved)
            if self.child.master >= 0:
                os.close(self.child.master)
            if self._cast is not None:
                self._cast.close()
            launch.cleanup()
        ended = time.time()
        self.tracker.close(ended, status)
        closed = self._session_data("closed", started, ended_at=format_ts(ended),
                                    duration_ms=max(0, int(round((ended - started) * 1000))),
                                    command_count=self.tracker.count, exit_status=status)
        self._send("websh_session", closed, format_ts(ended), "close")
        self.exit_status = status
        return status

    @property
    def _tracker(self) -> CommandTracker:
        assert self.tracker is not None, "run() makes the tracker first"
        return self.tracker

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
        poller.register(self.child.master, select.POLLIN)
        poller.register(rfd, select.POLLIN)
        stdin_open = True
        poller.register(self.stdin, select.POLLIN)
        kill_at: float | None = None
        drain_until = 0.0
        master = self.child.master
        status: int | None = self.child.reap(block=False)  # a shell that died before the handlers were set
        try:
            while True:
                if status is not None:
                    timeout = 50  # the shell is gone: drain what is left, briefly
                elif self._awaiting or self._tracker._pending:
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
                                status = self.child.reap(block=True)
                            return status if status is not None else 0
                    elif fd == self.stdin:
                        if not self._from_user():
                            poller.unregister(self.stdin)
                            stdin_open = False
                            self.child.hangup()
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
                        self.child.hangup()
                        kill_at = kill_at or time.monotonic() + 5.0
                    if flags & {signal.SIGINT, signal.SIGQUIT}:
                        self.child.forward(signal.SIGINT if signal.SIGINT in flags else signal.SIGQUIT)
                    if signal.SIGCHLD in flags and status is None:
                        status = self.child.reap(block=False)
                        drain_until = time.monotonic() + 0.5
                if kill_at is not None and status is None and time.monotonic() > kill_at:
                    self.child.kill(signal.SIGKILL)
                    kill_at = time.monotonic() + 5.0
                if self._awaiting or self._tracker._pending:
                    now = time.time()
                    self._expire_awaiting(now)
                    self._tracker.tick(now)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old_handlers.items():
                signal.signal(s, h)
            os.close(rfd)
            os.close(wfd)
            if status is None:
                status = self.child.reap(block=True)
            tail = self.parser.flush()
            if tail:
                write_all(self.stdout, tail)
        return status if status is not None else 0  # a blocking reap always has one

    def _resize(self) -> None:
        ws = winsize(self.stdin)
        if ws is None or not self.child.resize(ws):
            return
        if self._cast is not None:
            rows, cols = struct.unpack("HHHH", ws)[:2]
            self._cast.resize(cols, rows)

    # -- data --------------------------------------------------------------------------------

    def _from_shell(self) -> bool:
        """Relay what the shell wrote: a burst of reads (bounded, so keys are never kept waiting)."""
        for _ in range(BURST_READS):
            try:
                data = os.read(self.child.master, READ_SIZE)
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
            write_all(self.stdout, visible)
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
                self._tracker.mark(m, now)

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
            lflag = termios.tcgetattr(self.child.master)[3]
        except termios.error:
            lflag = termios.ECHO
        child = self.child
        fg = child.foreground()
        top_level = fg == child.pid
        if top_level:
            child.forget_comm()
        to_shell = not self._alt and (top_level or (fg is not None and child.comm(fg) in SHELL_NAMES))
        cwd = child.cwd(fg) if (to_shell and fg and (b"\r" in data or b"\n" in data)) else None
        write_all(child.master, data)
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
                self._tracker.line(a.text, a.at, top_level=a.top_level, cwd=a.cwd, truncated=a.truncated)
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

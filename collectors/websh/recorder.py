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

from agent.errors import RecorderError  # noqa: F401 - the name callers imported from here
from agent.events import format_ts, stable_id
from collectors.websh import procinfo
from collectors.websh.asciicast import AsciicastWriter
from collectors.websh.child import ShellChild, winsize, write_all
from collectors.websh.clip import clip_data
from collectors.websh.exectrail import ExecTrail
from collectors.websh.integration import SHELL_NAMES, new_nonce
from collectors.websh.keys import TypedInput
from collectors.websh.marks import MarkParser, alt_screen_change
from collectors.websh.tracker import CommandRecord, CommandTracker
from collectors.websh.witnessed import Observed, WitnessedRecords

READ_SIZE = 65_536
BURST_READS = 8
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
    #: follow the session's process tree through the kernel (see ``exectrail.py``)
    exec_trail: bool = True


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
        self.tracker: CommandTracker | None = None
        self.typed: TypedInput | None = None
        self.trail: ExecTrail | None = ExecTrail() if opts.exec_trail else None
        self.records: WitnessedRecords | None = None
        self._alt = False
        self._cast: AsciicastWriter | None = None
        self._flags: set[int] = set()
        self._shell_path: str | None = None
        self._tty: str | None = None

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
        clipped = clip_data("websh_session", data)
        if clipped:
            data["clipped"] = clipped
        return data

    def _send(self, kind: str, data: dict[str, Any], ts: str, *id_parts: Any) -> None:
        eid = stable_id("ws", self.info.session_id, *id_parts)
        msg = {"op": "emit", "kind": kind, "data": data, "ts": ts, "id": eid}
        self.deliver(msg)

    def _on_record(self, rec: CommandRecord) -> None:
        """A command from the tracker: to the witnesses, which hand it on once the kernel is heard."""
        assert self.records is not None
        self.records.add(Observed.of(rec, self.child.pw.pw_uid, self.child.pw.pw_name))

    def _on_command(self, seq: int, data: dict[str, Any]) -> None:
        clipped = clip_data("websh_command", data)
        if clipped:
            data["clipped"] = clipped
        self._send("websh_command", data, data["started_at"], "cmd", seq)

    # -- the relay ---------------------------------------------------------------------------

    def run(self) -> int:
        """Start the shell, relay until it ends, report the session; the shell's exit status."""
        launch, env = self.child.plan(self.opts.command, nonce=self.nonce, login=self.opts.login)
        self._shell_path = launch.path
        is_tty = os.isatty(self.stdin)
        size = winsize(self.stdin) if is_tty else None
        self.tracker = CommandTracker(
            self._on_record, integrated=launch.hooked, hooks_lost_after_s=self.opts.hooks_lost_after_s
        )
        self.typed = TypedInput(self.tracker.line)
        self.typed.echo.cols = struct.unpack("HHHH", size)[1] if size else 80
        trail = self.trail
        self.records = WitnessedRecords(self._on_command, session_id=self.info.session_id, redact=self.redact,
                                        trail=trail, shell_pid=lambda: self.child.pid, format_ts=format_ts,
                                        path=env.get("PATH"),
                                        waiting=lambda: self._typed.waiting_since() + self._tracker.waiting_since())
        started = time.time()
        saved = termios.tcgetattr(self.stdin) if is_tty else None
        try:
            uid = self.child.pw.pw_uid
            if trail is not None:
                trail.prepare()  # before the fork: no event of the shell's tree is missed
            self.child.spawn(launch, env, size, self.opts.login,
                             before_exec=None if trail is None else (lambda: trail.child_setup(uid)))
            if trail is not None:
                trail.follow(self.child.pid)
            if self.on_spawned is not None:
                self.on_spawned()  # threads may start now that the fork is done
            self._tty = self.child.tty_name()
            opened = self._session_data("open", started, exec_trail=self.records.trail_summary())
            self._send("websh_session", opened, format_ts(started), "open")
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
        self.records.close()
        closed = self._session_data("closed", started, ended_at=format_ts(ended),
                                    duration_ms=max(0, int(round((ended - started) * 1000))),
                                    command_count=self.records.count, exit_status=status,
                                    exec_trail=self.records.trail_summary(),
                                    tampered_count=self.tracker.forged + self.records.tampered)
        self._send("websh_session", closed, format_ts(ended), "close")
        self.exit_status = status
        return status

    @property
    def _tracker(self) -> CommandTracker:
        assert self.tracker is not None, "run() makes the tracker first"
        return self.tracker

    @property
    def _typed(self) -> TypedInput:
        assert self.typed is not None, "run() makes the input witness first"
        return self.typed

    def _busy(self) -> bool:
        """Something waits for time to pass: an echo, a mark, the kernel's records."""
        held = self.records is not None and bool(self.records._held)
        return bool(self._typed.awaiting) or bool(self._tracker._pending) or held

    def _from_kernel(self) -> None:
        if self.trail is None or self.records is None:
            return
        self.trail.pump()
        self.records.flush()

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
        trail_fds = set(self.trail.fds()) if self.trail is not None else set()
        for fd in trail_fds:
            poller.register(fd, select.POLLIN)
        kill_at: float | None = None
        drain_until = 0.0
        master = self.child.master
        status: int | None = self.child.reap(block=False)  # a shell that died before the handlers were set
        try:
            while True:
                if status is not None:
                    timeout = 50  # the shell is gone: drain what is left, briefly
                elif self._busy():
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
                    elif fd in trail_fds:
                        self._from_kernel()
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
                if self._busy():
                    now = time.time()
                    self._typed.expire(now)
                    self._tracker.tick(now)
                    self._from_kernel()
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
        self._typed.echo.cols = struct.unpack("HHHH", ws)[1] or None
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
            if self._typed.wants_output:
                self._typed.shown(visible)
            self._typed.output(visible)
            if self._cast is not None:
                self._cast.output(visible)
        if marks:
            now = time.time()
            for m in marks:
                self._tracker.mark(m, now)
            if self.records is not None and self.records.startup_end is None and any(m.type == "D" for m in marks):
                self.records.prompt_seen(now)

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
        nested: int | None = None
        if not self._alt and not top_level and fg is not None:
            nested = fg if child.comm(fg) in SHELL_NAMES else procinfo.nested_shell(fg)
        to_shell = not self._alt and (top_level or nested is not None)
        enter = b"\r" in data or b"\n" in data
        if enter and self.records is not None:
            self.records.prompt_seen(time.time())
        who: procinfo.Identity | None = None
        if to_shell and fg and enter:
            who = procinfo.identity(fg if nested is None else procinfo.shell_behind(nested))
        write_all(child.master, data)
        echo_on = bool(lflag & termios.ECHO)
        secret = not echo_on and bool(lflag & termios.ICANON)
        if self._cast is not None and self.opts.record_input and echo_on:
            self._cast.input(data)
        if not to_shell:
            self._typed.not_for_a_shell()
            return True
        self._typed.keys(data, time.time(), secret=secret, top_level=top_level, cwd=who.cwd if who else None,
                         uid=None if top_level or who is None else who.uid,
                         user=None if top_level or who is None else who.user,
                         shell_pid=child.pid if top_level or who is None else who.pid)
        return True

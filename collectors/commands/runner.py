"""Command executions: run commands handed over by ``alpacon-agent exec`` and record each
status change as a ``command`` event.

The collector serves the hook op ``exec`` (``{"op": "exec", "line": …}`` or ``"argv": […]``,
plus ``user``, ``operator``, ``timeout_s``, ``at`` / ``in_s``, ``kill_on_timeout``):

- an immediate command runs as ``user`` (default: the caller) under ``/bin/sh -c`` with a
  clean environment, its output combined (stdout + stderr) and capped with head and tail kept;
  the answer comes when it ends: ``{"status": "ok", "command_id", "state", "exit_code",
  "output", …}``;
- a scheduled one (``at`` epoch seconds or RFC 3339, or ``in_s``) is answered at once with
  ``{"status": "ok", "command_id", "state": "scheduled"}`` and runs when due.

Status moves ``scheduled`` → ``running`` → ``success`` / ``failed``; past its timeout a
command is reported ``stuck`` and, when ``kill_on_timeout`` is set, killed and reported
``failed``. Every change is one event with id ``stable_id("cmd", command_id, status)``, so a
replay never doubles it. Scheduled and running commands are kept in ``commands.db`` (SQLite)
under the state dir: scheduled ones survive a restart, and one that was running when the agent
died is reported ``failed`` with that reason on the next start.

The records are ``collectors.commands.store``; the agent's own jobs are recorded by
``collectors.commands.internal``. The service registers :meth:`CommandsCollector.hook_ops` on
its hook server; without a hook server ``exec`` is unavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.collector import Collector, CollectorContext
from agent.errors import InputError
from agent.events import format_ts, make_event, new_id, parse_ts, stable_id
from agent.typing import HookOp
from collectors.commands.store import CommandRecord, CommandStore, command_data

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_LINE = 65_536
MAX_TIMEOUT_S = 7 * 86_400.0
MAX_AHEAD_S = 366 * 86_400.0
REQUEST_FIELDS = frozenset(
    {"op", "ref", "line", "argv", "user", "operator", "timeout_s", "at", "in_s", "kill_on_timeout"}
)


class OutputCap:
    """Keeps the first and last ``limit / 2`` bytes of a stream and counts what lies between."""

    def __init__(self, limit: int) -> None:
        self.head_max = limit // 2
        self.tail_max = limit - self.head_max
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_max - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > self.tail_max:
                del self.tail[: len(self.tail) - self.tail_max]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.head) + len(self.tail)

    def text(self) -> str:
        if not self.truncated:
            return (bytes(self.head) + bytes(self.tail)).decode("utf-8", "replace")
        omitted = self.total - len(self.head) - len(self.tail)
        return (
            bytes(self.head).decode("utf-8", "replace")
            + f"\n…[{omitted} bytes omitted]…\n"
            + bytes(self.tail).decode("utf-8", "replace")
        )


def _parse_when(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InputError("'at' must be epoch seconds or an RFC 3339 timestamp")
    if isinstance(value, str):
        try:
            return parse_ts(value)
        except ValueError:
            raise InputError(f"'at' is not an RFC 3339 timestamp: {value[:64]!r}") from None
    return float(value)


def parse_request(msg: dict[str, Any], peer: Any, default_timeout: float, default_kill: bool,
                  now: float | None = None) -> CommandRecord:
    """Validate an ``exec`` request into a record; raises :class:`InputError` with the reason."""
    now = time.time() if now is None else now
    unknown = set(msg) - REQUEST_FIELDS
    if unknown:
        raise InputError(f"unknown fields: {', '.join(sorted(unknown))}")
    line, argv = msg.get("line"), msg.get("argv")
    if line is not None and argv is not None:
        raise InputError("give 'line' or 'argv', not both")
    if argv is not None:
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise InputError("'argv' must be a non-empty list of strings")
        import shlex

        line = argv[0] if len(argv) == 1 else shlex.join(argv)
    if not isinstance(line, str) or not line.strip():
        raise InputError("a command is required ('line' or 'argv')")
    if "\x00" in line:
        raise InputError("the command contains a NUL byte")
    if len(line.encode("utf-8", "surrogateescape")) > MAX_LINE:
        raise InputError(f"the command is longer than {MAX_LINE} bytes")
    caller = peer.user if peer is not None else pwd.getpwuid(os.geteuid()).pw_name
    caller_uid = peer.uid if peer is not None else os.geteuid()
    user = msg.get("user") or caller
    if not isinstance(user, str) or len(user) > 256:
        raise InputError("'user' must be a user name")
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise InputError(f"no such user: {user!r}") from None
    if caller_uid != 0 and pw.pw_uid != caller_uid:
        raise InputError(f"only root may run commands as another user ({user!r})")
    if os.geteuid() != 0 and pw.pw_uid != os.geteuid():
        raise InputError(f"the agent does not run as root and cannot run commands as {user!r}")
    operator = msg.get("operator")
    if operator is not None and (not isinstance(operator, str) or len(operator) > 256):
        raise InputError("'operator' must be a string of at most 256 characters")
    timeout = msg.get("timeout_s", default_timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT_S:
        raise InputError(f"'timeout_s' must be a number in (0, {MAX_TIMEOUT_S:.0f}]")
    kill = msg.get("kill_on_timeout", default_kill)
    if not isinstance(kill, bool):
        raise InputError("'kill_on_timeout' must be true or false")
    due: float | None = None
    if msg.get("at") is not None and msg.get("in_s") is not None:
        raise InputError("give 'at' or 'in_s', not both")
    if msg.get("at") is not None:
        due = _parse_when(msg["at"])
    elif msg.get("in_s") is not None:
        delay = msg["in_s"]
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            raise InputError("'in_s' must be a non-negative number of seconds")
        due = now + float(delay)
    if due is not None and due - now > MAX_AHEAD_S:
        raise InputError("a command can be scheduled at most a year ahead")
    return CommandRecord(
        command_id=new_id("cmd"),
        line=line,
        user=user,
        operator=operator or caller,
        timeout_s=float(timeout),
        kill=kill,
        due=due,
        scheduled_at=format_ts(due) if due is not None else None,
        state="scheduled" if due is not None else "running",
    )


def user_environment(user: str) -> tuple[dict[str, str], str, dict[str, Any]]:
    """A clean environment, working directory and the Popen identity arguments for ``user``."""
    pw = pwd.getpwnam(user)
    env = {
        "HOME": pw.pw_dir or "/",
        "USER": pw.pw_name,
        "LOGNAME": pw.pw_name,
        "SHELL": pw.pw_shell or "/bin/sh",
        "PATH": SAFE_PATH,
        "LANG": "C.UTF-8",
    }
    cwd = pw.pw_dir if pw.pw_dir and os.path.isdir(pw.pw_dir) else "/"
    ident: dict[str, Any] = {}
    if os.geteuid() == 0:
        groups = [g for g in os.getgrouplist(pw.pw_name, pw.pw_gid)]
        ident = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": groups}
    return env, cwd, ident


@dataclass
class RunResult:
    exit_code: int | None
    output: str
    truncated: bool
    output_bytes: int
    timed_out: bool
    killed: bool
    reason: str | None


class CommandsCollector(Collector):
    """Serves the ``exec`` hook op, runs scheduled commands, and records every status change."""

    name = "commands"

    def __init__(self, config: Any, ctx: CollectorContext) -> None:
        super().__init__(config, ctx)
        self.store = CommandStore(Path(ctx.state_dir) / "commands.db")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running: dict[str, asyncio.subprocess.Process] = {}
        #: set once the commands of the last run are recovered: ``exec`` waits for it, so that a
        #: new command is never taken for one the agent lost
        self._recovered = asyncio.Event()

    def hook_ops(self) -> dict[str, HookOp]:
        return {"exec": self.handle_exec}

    # -- lifecycle -------------------------------------------------------------------------
    async def run(self) -> None:
        await self.recover()
        self._recovered.set()
        if self.ctx.once:
            return
        await self.ctx.stopping.wait()

    async def aclose(self) -> None:
        # commands still running stay in commands.db and are reported failed on the next start
        for proc in list(self._running.values()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.store.close()

    async def recover(self) -> None:
        """Report commands that were running when the agent died; re-arm the scheduled ones."""
        for r in self.store.all():
            if r.state == "running":
                now = format_ts()
                reason = "the agent stopped while the command was running"
                if r.pid:
                    reason += f" (pid {r.pid})"
                data = command_data(r, "failed", finished_at=now, reason=reason)
                await self._emit(r, "failed", data, now)
                self.store.delete(r.command_id)
                self.ctx.count("command_lost", collector="commands")
            else:
                self._spawn(self._run_when_due(r))

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    async def _emit(self, r: CommandRecord, status: str, data: dict[str, Any], ts: str) -> None:
        ev = make_event("command", data, ts=ts, id=stable_id("cmd", r.command_id, status))
        await self.ctx.emit([ev])

    # -- the hook op -----------------------------------------------------------------------
    async def handle_exec(self, msg: dict[str, Any], peer: Any) -> dict[str, Any]:
        """``exec``: run now and answer when done, or schedule and answer at once."""
        await self._recovered.wait()
        try:
            r = parse_request(msg, peer, self.config.default_timeout_s, self.config.kill_on_timeout)
        except InputError as exc:
            return {"status": "invalid", "reason": str(exc)}
        r.extra["peer_pid"] = getattr(peer, "pid", None)
        if r.due is not None:
            self.store.put(r)
            await self._emit(r, "scheduled", command_data(r, "scheduled"), format_ts())
            self._spawn(self._run_when_due(r))
            return {"status": "ok", "command_id": r.command_id, "state": "scheduled",
                    "scheduled_at": r.scheduled_at}
        # run in its own task: a caller that goes away does not cancel the command
        task = self._spawn(self.execute(r))
        try:
            res, status = await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # this handler itself was cancelled (the hook server is closing)
            # the collector was closed (stop, or a reload that changed its settings): the caller
            # hears so now; the record stays and is reported failed when the collector starts
            return {"status": "error", "command_id": r.command_id,
                    "reason": "the agent stopped its commands collector while the command ran "
                              "(service stop, or a reload changing collector settings); it was terminated"}
        return {
            "status": "ok",
            "command_id": r.command_id,
            "state": status,
            "exit_code": res.exit_code,
            "output": res.output,
            "truncated": res.truncated,
            "timed_out": res.timed_out,
            "reason": res.reason,
        }

    async def _run_when_due(self, r: CommandRecord) -> None:
        delay = (r.due or 0) - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await self.execute(r)

    # -- running ---------------------------------------------------------------------------
    async def execute(self, r: CommandRecord) -> tuple[RunResult, str]:
        """Run ``r`` and record running → [stuck →] success/failed; returns (result, status)."""
        started = time.time()
        r.started_at = format_ts(started)
        r.state = "running"
        self.store.put(r)
        await self._emit(r, "running", command_data(r, "running"), r.started_at)
        try:
            res = await self._run_process(r)
        except OSError as exc:  # could not start: no shell, no such user any more …
            res = RunResult(None, "", False, 0, False, False, f"could not start: {exc}")
        finished = format_ts()
        ok = res.exit_code == 0 and not res.killed
        status = "success" if ok else "failed"
        data = command_data(
            r, status, result=res.output, exit_code=res.exit_code, finished_at=finished,
            reason=res.reason,
            extra={"timeout_s": r.timeout_s, "output_bytes": res.output_bytes,
                   "truncated": res.truncated,
                   "duration_ms": max(0, int((time.time() - started) * 1000))},
        )
        await self._emit(r, status, data, finished)
        self.store.delete(r.command_id)
        return res, status

    async def _run_process(self, r: CommandRecord) -> RunResult:
        env, cwd, ident = user_environment(r.user)
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", r.line,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env, cwd=cwd, start_new_session=True, close_fds=True,
            **ident,
        )
        r.pid = proc.pid
        self.store.put(r)
        self._running[r.command_id] = proc
        cap = OutputCap(self.config.max_output_bytes)

        async def pump() -> None:
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(65536):
                cap.feed(chunk)

        reader = asyncio.create_task(pump())
        timed_out = killed = False
        reason = None
        try:
            try:
                await asyncio.wait_for(asyncio.shield(proc.wait()), r.timeout_s)
            except TimeoutError:
                timed_out = True
                now = format_ts()
                await self._emit(r, "stuck", command_data(
                    r, "stuck", reason=f"still running after its timeout of {r.timeout_s:g}s"), now)
                if r.kill:
                    killed = True
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    reason = f"killed after its timeout of {r.timeout_s:g}s"
                await proc.wait()
            # the group may hold children that keep the pipe open; give them a moment
            try:
                await asyncio.wait_for(asyncio.shield(reader), 5.0)
            except TimeoutError:
                reader.cancel()
        finally:
            self._running.pop(r.command_id, None)
        rc = proc.returncode
        exit_code = rc
        if rc is not None and rc < 0:
            exit_code = 128 - rc
            if reason is None:
                reason = f"killed by signal {signal.Signals(-rc).name}" if -rc in signal.valid_signals() else f"killed by signal {-rc}"
        elif rc and reason is None:
            reason = f"exit code {rc}"
        return RunResult(exit_code, cap.text(), cap.truncated, cap.total, timed_out, killed, reason)

"""The kernel's exec trail of one session: every program its process tree runs, with argv.

Two kernel witnesses, joined by pid:

- the process-events connector (:mod:`.procevents`): every fork, exec and exit of every process,
  in order, as it happens, with exit statuses; it decides which processes belong to the session
  (the tree grown from the shell by forks) and when each program started and ended;
- the audit subsystem (:mod:`.auditlink`): for every exec in the session's own audit session,
  the argv as the kernel read it, the cwd, the real and effective uid and the parent.

A program is known with its argv once its audit record arrives (a short program such as
``/bin/true`` has long exited by then, and that does not matter: the kernel read its argv).
Without audit (a kernel or container that refuses it) the trail runs on the connector alone
and reads argv from ``/proc`` at exec, which misses some short programs; without the
connector either, :attr:`ExecTrail.mode` is ``None`` and :attr:`ExecTrail.reason` says why.

Use: :meth:`ExecTrail.prepare` before the fork, :meth:`ExecTrail.child_setup` in the child
(before it drops privileges), :meth:`ExecTrail.follow` in the parent with the child's pid, then
:meth:`pump` whenever one of :meth:`fds` is readable, and :meth:`close` at the end.
"""

from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path

from collectors.websh import auditlink, auditrecords, procevents
from collectors.websh.auditlink import AuditListener, AuditRules, AuditUnavailable
from collectors.websh.auditrecords import AuditExec
from collectors.websh.procevents import ProcEventSocket, ProcEventsUnavailable
from collectors.websh.programs import Program, argv_of, text_of

#: a program whose audit record has not come this long after its exec is kept without argv
ARGV_WAIT_NS = 2_000_000_000
#: the most programs kept in memory at once (the oldest finished ones are handed on first)
MAX_PROGRAMS = 20_000
_READY_OK = b"k"
_READY_FAIL = b"f"


class ExecTrail:
    """One session's exec trail (see the module's docstring)."""

    def __init__(self, *, use_audit: bool = True, state_dir: str | None = None) -> None:
        self.mode: str | None = None
        self.reason: str | None = None
        self.session: int | None = None
        self.programs: deque[Program] = deque()
        self.dropped = 0
        self.argv_missing = 0
        #: bumped whenever a program is added or learns more (argv, end)
        self.version = 0
        #: programs in the tree whose exec the audit session did not cover (the loginuid changed)
        self.escaped = 0
        self._use_audit = use_audit
        self._state_dir = state_dir
        self._conn: ProcEventSocket | None = None
        self._audit: AuditListener | None = None
        self._rules: AuditRules | None = None
        self._tree: set[int] = set()
        self._current: dict[int, Program] = {}
        self._parent: dict[int, int] = {}
        self._root = 0
        self._root_prog: Program | None = None
        self.root_exit: int | None = None
        self._awaiting_argv: dict[int, deque[Program]] = {}
        self._early: dict[int, deque[tuple[int, AuditExec]]] = {}
        self._events: dict[int, tuple[float, list[tuple[int, bytes]]]] = {}
        self._pipes: tuple[int, int, int, int] | None = None
        self._offset = time.time() - time.monotonic()
        self._self_pid = os.getpid()

    # -- setting up ---------------------------------------------------------------------------

    def prepare(self) -> None:
        """Open the kernel sockets (before the fork, so no event of the child is missed)."""
        try:
            self._conn = ProcEventSocket()
        except ProcEventsUnavailable as exc:
            self.reason = str(exc)
        if self._use_audit:
            try:
                self._audit = AuditListener()
                self._rules = AuditRules(Path(self._state_dir) if self._state_dir else auditlink.STATE_DIR)
                self._rules.enable()
                self._pipes = (*os.pipe(), *os.pipe())
            except (AuditUnavailable, OSError) as exc:
                self._drop_audit()
                self.reason = str(exc)

    def child_setup(self, uid: int) -> None:
        """In the child, before it drops privileges: enter a fresh audit session, wait for the rule."""
        if self._pipes is None:
            return
        ready_r, ready_w, go_r, go_w = self._pipes
        os.close(ready_r)
        os.close(go_w)
        try:
            auditlink.enter_new_session(uid)
            os.write(ready_w, _READY_OK)
        except OSError:
            os.write(ready_w, _READY_FAIL)
        os.close(ready_w)
        os.read(go_r, 1)  # the parent has added the rule (or given up): go on
        os.close(go_r)

    def follow(self, pid: int) -> None:
        """In the parent: the session's tree is ``pid`` and all it forks; start the audit rules."""
        self._tree.add(pid)
        self._root = pid
        self._parent[pid] = os.getpid()
        if self._pipes is not None:
            ready_r, ready_w, go_r, go_w = self._pipes
            os.close(ready_w)
            os.close(go_r)
            try:
                if os.read(ready_r, 1) == _READY_OK:
                    self._start_audit(pid)
                elif self.reason is None:
                    self.reason = "audit: cannot give the session its own audit session (loginuid)"
            finally:
                os.close(ready_r)
                os.write(go_w, b"g")
                os.close(go_w)
                self._pipes = None
        if self.session is None:
            self._drop_audit()
        if self._audit is not None:
            self.mode = "kernel"  # argv from the kernel's audit records
        elif self._conn is not None:
            self.mode = "connector"  # argv read from /proc at exec: short programs may be missed
        else:
            self.mode = None
        if self.mode != "kernel" and self.reason is None:
            self.reason = "audit not used"

    def _start_audit(self, pid: int) -> None:
        assert self._rules is not None
        try:
            with open(f"/proc/{pid}/sessionid", "rb") as f:
                session = int(f.read())
            self._rules.add(session)
            self.session = session
        except (OSError, ValueError) as exc:
            self.reason = f"audit rules: {exc}"

    def _drop_audit(self) -> None:
        if self._audit is not None:
            self._audit.close()
            self._audit = None
        if self._rules is not None:
            try:
                self._rules.remove()  # and audit off again, if this turned it on
            except OSError:
                pass
            self._rules = None

    def fds(self) -> list[int]:
        return [s.fileno() for s in (self._conn, self._audit) if s is not None]

    def close(self) -> None:
        """Read what is left, end every open program as unfinished, remove the rules."""
        self.pump()
        if self._rules is not None:
            try:
                self._rules.remove()
            except OSError as exc:
                self.reason = f"audit rules not removed: {exc}"
            self._rules = None
        for s in (self._conn, self._audit):
            if s is not None:
                s.close()
        self._conn = self._audit = None

    # -- events --------------------------------------------------------------------------------

    def pump(self) -> None:
        """Take in every event waiting on the sockets (the connector's first: it leads)."""
        if self._conn is not None:
            while True:
                events = self._conn.read(block=False)
                if events is None:
                    break
                for ev in events:
                    self._on_proc(ev)
        if self._audit is not None:
            for rtype, text in self._audit.read():
                self._on_audit(rtype, text)
        self._expire(time.monotonic_ns())

    def _on_proc(self, ev: procevents.ProcEvent) -> None:
        if ev.what == procevents.FORK:
            if ev.parent in self._tree and ev.pid != ev.parent:
                self._tree.add(ev.pid)
                self._parent[ev.pid] = ev.parent
            return
        if ev.pid not in self._tree or ev.tid != ev.pid:
            return
        if ev.what == procevents.EXEC:
            old = self._current.get(ev.pid)
            if old is not None:  # the process image is replaced (exec bash …): that program ends here
                self._end(old, ev.ts_ns, None)
            prog = Program(ev.pid, self._parent.get(ev.pid, 0), ev.ts_ns, self._wall(ev.ts_ns))
            if ev.pid == self._root and self._root_prog is None:
                self._root_prog = prog
                prog.claimed = True  # the session's own shell: it is the session record's
            self._current[ev.pid] = prog
            self._add(prog)
            early = self._early.get(ev.pid)
            if early:
                self._fill(prog, early.popleft()[1])
                if not early:
                    del self._early[ev.pid]
            elif self._audit is not None:
                self._awaiting_argv.setdefault(ev.pid, deque()).append(prog)
                self._provisional(prog)
            else:
                self._from_proc(prog)
        elif ev.what == procevents.EXIT:
            self._tree.discard(ev.pid)
            self._parent.pop(ev.pid, None)
            cur = self._current.pop(ev.pid, None)
            if cur is not None:
                self._end(cur, ev.ts_ns, ev.exit_status)
            if ev.pid == self._root:
                self.root_exit = ev.exit_status

    def _on_audit(self, rtype: int, text: bytes) -> None:
        st = auditrecords.stamp(text)
        if st is None:
            return
        at, serial, rest = st
        if rtype == auditlink.EOE:
            at, records = self._events.pop(serial, (at, []))
            ex = auditrecords.parse_exec(serial, at, records)
            if ex is not None and ex.session == self.session and ex.pid != self._self_pid:
                self._on_exec_record(ex)
            return
        if rtype in (auditlink.SYSCALL, auditlink.EXECVE, auditlink.CWD):
            self._events.setdefault(serial, (at, []))[1].append((rtype, rest))
            if len(self._events) > 1000:  # events whose end never came
                for k in sorted(self._events)[:500]:
                    del self._events[k]

    def _on_exec_record(self, ex: AuditExec) -> None:
        waiting = self._awaiting_argv.get(ex.pid)
        if waiting:
            self._fill(waiting.popleft(), ex)
            if not waiting:
                del self._awaiting_argv[ex.pid]
        elif self._conn is None:
            self._audit_only(ex)
        else:  # the connector has not told of this exec yet: keep the record for it a while
            self._early.setdefault(ex.pid, deque()).append((time.monotonic_ns(), ex))

    def _audit_only(self, ex: AuditExec) -> None:
        """A program known from its audit record alone (no connector, or it missed the exec)."""
        prog = Program(ex.pid, ex.ppid, self.wall_to_ns(ex.at), ex.at)
        self._add(prog)
        self._fill(prog, ex)

    def _fill(self, prog: Program, ex: AuditExec) -> None:
        self.version += 1
        prog.argv, prog.truncated = argv_of(ex.argv)
        prog.exe = text_of(ex.exe)
        prog.cwd = text_of(ex.cwd) if ex.cwd is not None else None
        prog.uid, prog.euid, prog.ppid = ex.uid, ex.euid, ex.ppid
        prog.argv_from = "kernel"

    def _provisional(self, prog: Program) -> None:
        """The argv from /proc, kept in case the kernel's record never comes (a process that left
        the audit session): replaced by the kernel's when it does."""
        try:
            with open(f"/proc/{prog.pid}/cmdline", "rb") as f:
                raw = f.read()
            if raw:  # empty once the process has exited
                prog.argv, prog.truncated = argv_of(raw.rstrip(b"\0").split(b"\0"))
        except OSError:
            pass

    def _from_proc(self, prog: Program) -> None:
        pid = prog.pid
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                raw = f.read()
            if not raw:
                raise ValueError("the process has exited")
            prog.argv, prog.truncated = argv_of(raw.rstrip(b"\0").split(b"\0"))
            prog.exe = os.readlink(f"/proc/{pid}/exe")
            prog.cwd = os.readlink(f"/proc/{pid}/cwd")
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        ids = line.split()
                        prog.uid, prog.euid = int(ids[1]), int(ids[2])
                    elif line.startswith(b"PPid:"):
                        prog.ppid = int(line.split()[1])
            prog.argv_from = "proc"
        except (OSError, ValueError, IndexError):
            prog.argv_from = "none"
            self.argv_missing += 1

    def _end(self, prog: Program, ts_ns: int, status: int | None) -> None:
        self.version += 1
        if prog.end_ns is None:
            prog.end_ns = ts_ns
            prog.exit_status = status

    def _add(self, prog: Program) -> None:
        self.version += 1
        self.programs.append(prog)
        while len(self.programs) > MAX_PROGRAMS:
            self.programs.popleft()
            self.dropped += 1

    def _expire(self, now_ns: int) -> None:
        for pid in list(self._awaiting_argv):
            q = self._awaiting_argv[pid]
            while q and now_ns - q[0].start_ns > ARGV_WAIT_NS:
                prog = q.popleft()  # exec'd in the tree, but outside the session's audit session
                self.escaped += 1
                if prog.argv is not None:
                    prog.argv_from = "proc"
                else:
                    prog.argv_from = "none"
                    self.argv_missing += 1
            if not q:
                del self._awaiting_argv[pid]
        for pid in list(self._early):
            early = self._early[pid]
            while early and now_ns - early[0][0] > ARGV_WAIT_NS:
                self._audit_only(early.popleft()[1])
            if not early:
                del self._early[pid]

    def _wall(self, ts_ns: int) -> float:
        return self._offset + ts_ns / 1e9

    # -- questions -------------------------------------------------------------------------------

    def settled(self, until_ns: int) -> bool:
        """True when every program started by ``until_ns`` has its argv (or gave up waiting)."""
        for q in self._awaiting_argv.values():
            if q and q[0].start_ns <= until_ns:
                return False
        return True

    def take(self, since_ns: int, until_ns: int) -> list[Program]:
        """The unclaimed programs started in ``[since_ns, until_ns]``, now claimed."""
        out = []
        for p in self.programs:
            if not p.claimed and since_ns <= p.start_ns <= until_ns and p.argv_from is not None:
                p.claimed = True
                out.append(p)
        return out

    def unclaimed(self, until_ns: int) -> list[Program]:
        """Programs started by ``until_ns`` that no command took (not claimed by this call)."""
        return [p for p in self.programs if not p.claimed and p.start_ns <= until_ns and p.argv_from is not None]

    def forget_claimed(self) -> None:
        """Drop the claimed programs that have ended (they are on their records)."""
        while self.programs and self.programs[0].claimed and self.programs[0].ended:
            self.programs.popleft()

    def wall_to_ns(self, wall: float) -> int:
        return int((wall - self._offset) * 1e9)


def availability() -> tuple[str | None, str | None]:
    """Which exec trail this process could have (``"kernel"``, ``"connector"`` or None) and why not."""
    try:
        ProcEventSocket().close()
        conn = True
        why = None
    except ProcEventsUnavailable as exc:
        conn, why = False, str(exc)
    try:
        AuditListener().close()
        ctl = auditlink.AuditControl()
        try:
            enabled, _pid = ctl.status()
        finally:
            ctl.close()
        if enabled == 2:
            raise AuditUnavailable(1, "audit: the configuration is locked (enabled=2)")
        if conn:
            return "kernel", None
        return None, why
    except (AuditUnavailable, OSError) as exc:
        return ("connector" if conn else None), (str(exc) if conn else f"{why}; {exc}")

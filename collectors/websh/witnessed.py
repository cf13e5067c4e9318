"""Turns the tracker's observed commands and the kernel's exec trail into the session's command records.

The tracker tells what the shell's marks and the typed keys said about each command, and when
it ran (:class:`Observed`). :class:`WitnessedRecords` holds each until the exec trail has told
every program started by the command's end, then gives it the programs started inside its
window, weighs the witnesses (:func:`.evidence.weigh`), fills a missing exit status and duration
from the kernel, and hands the record on. Programs that ran outside every command (after the
hooks were removed, in a nested PTY, in the background) become records of their own
(``source: "kernel"``), so nothing executed in the session is missing from its Record.
Records are numbered in the order they are handed on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from collectors.websh import procinfo
from collectors.websh.evidence import kernel_exit, weigh
from collectors.websh.exectrail import ExecTrail
from collectors.websh.programs import Program

if TYPE_CHECKING:
    from collectors.websh.tracker import CommandRecord

#: programs carried on a command's own record; the rest get records of their own
MAX_INLINE_PROGRAMS = 50
#: a command is handed on without its last programs' argv if the trail lags this long
SETTLE_WAIT_S = 3.0
_HOOK_ARGV = ["-w0"]
#: a typed line with no end is handed on this long after it was typed, if no other record came
OPEN_HOLD_S = 30.0
#: a typed line whose shell is back at its prompt this long after the line ends there
PROMPT_SETTLE_S = 0.5
#: how far before its start mark a command with no typed line may have started its programs
MARK_LAG_S = 1.0


@dataclass(slots=True)
class Observed:
    """One command as the tracker saw it (marks and typed keys), before the kernel is heard."""

    started_at: float
    ended_at: float | None
    exit_code: int | None
    cwd: str | None
    source: str
    truncated: bool = False
    marks_text: str | None = None
    typed_text: str | None = None
    typed_exact: bool = False
    typed_at: float | None = None
    uid: int | None = None
    user: str | None = None
    tampered: str | None = None
    shell_pid: int | None = None
    typed_cwd: str | None = None
    at: float = field(default_factory=time.monotonic)

    @classmethod
    def of(cls, rec: CommandRecord, uid: int, user: str) -> Observed:
        """The tracker's record; a command with no user of its own ran as the session's (``uid``/``user``)."""
        ended = None if rec.duration_ms is None else rec.started_at + rec.duration_ms / 1000
        return cls(rec.started_at, ended, rec.exit_code, rec.cwd, rec.source, rec.truncated, rec.marks_text,
                   rec.typed_text, rec.typed_exact, rec.typed_at, rec.uid if rec.uid is not None else uid,
                   rec.user or user, rec.tampered, rec.shell_pid, rec.typed_cwd)


def _hook_program(p: Program) -> bool:
    """The hooks' own ``base64 -w0`` (it runs in every command's preexec)."""
    return p.argv is not None and p.argv[1:] == _HOOK_ARGV and os.path.basename(p.exe or "") == "base64"


class WitnessedRecords:
    """See the module's docstring. ``emit`` receives ``(seq, data)`` for each ``websh_command``."""

    def __init__(
        self,
        emit: Callable[[int, dict[str, Any]], None],
        *,
        session_id: str,
        redact: Callable[[str], str],
        trail: ExecTrail | None,
        shell_pid: Callable[[], int],
        format_ts: Callable[[float], str],
        path: str | None = None,
        waiting: Callable[[], list[float]] = list,
    ) -> None:
        self._emit = emit
        self.session_id = session_id
        self.redact = redact
        self.trail = trail
        self._shell_pid = shell_pid
        self._ts = format_ts
        #: when each typed line (and the open command) that is not a record yet began
        self._waiting = waiting
        self.path = path
        self.count = 0
        self.tampered = 0
        self.hook_programs = 0
        self.kernel_records = 0
        self._held: list[Observed] = []
        self._prev_end = 0.0
        self._orphans_seen: tuple[int, int, int, int] = (-1, -1, -1, -1)
        #: when the shell first showed its prompt (or a line was first typed): programs before are start-up
        self.startup_end: float | None = None
        self.startup: list[Program] = []
        self.startup_count = 0

    def add(self, obs: Observed) -> None:
        """A command the tracker finished (or gave up on)."""
        if obs.tampered:
            self.tampered += 1
        self._held.append(obs)
        self.flush()

    def flush(self, *, final: bool = False) -> None:
        """Hand on every held command whose programs are all known, and the programs no command can
        still claim (none started after a typed line that is not a record yet, or a held command)."""
        trail = self.trail
        if trail is not None and trail.mode is not None:
            trail.pump()  # an exec's process event is queued before the shell can report the command done
        while self._held:
            obs = self._held[0]
            end = self._end_of(obs, final)
            if end is None:
                break  # a typed line with no end yet: its programs may still be starting
            if trail is not None and trail.mode is not None and not final:
                if not trail.settled(trail.wall_to_ns(end)) and time.monotonic() - obs.at < SETTLE_WAIT_S:
                    break
            self._held.pop(0)
            self._record(obs, end)
        if trail is None or trail.mode is None:
            return
        waiting = self._waiting()
        limit = min([time.time(), *waiting])
        for obs in self._held:  # a held command may still claim what started inside it
            limit = min(limit, obs.typed_at or obs.started_at)
        until = trail.wall_to_ns(limit)
        if not final and not trail.settled(until):
            return
        seen = (trail.version, self.count, len(self._held), until if (self._held or waiting) else 0)
        if seen == self._orphans_seen and not final:
            return  # nothing new since the last look (most wake-ups are other processes' events)
        self._orphans_seen = seen
        self._orphans(trail, until, final)
        trail.forget_claimed()

    def _end_of(self, obs: Observed, final: bool) -> float | None:
        """Where a command's window ends: its end mark; for a typed line (no marks), the next record's
        start (or end, for the command it was typed inside); None while that is not known yet."""
        if obs.ended_at is not None or self.trail is None or self.trail.mode is None:
            return obs.ended_at if obs.ended_at is not None else time.time()
        start = obs.typed_at if obs.typed_at is not None else obs.started_at
        if len(self._held) > 1:
            nxt = self._held[1]
            nxt_start = nxt.typed_at if nxt.typed_at is not None else nxt.started_at
            if nxt_start > start:
                return nxt_start
            if nxt.ended_at is not None and nxt.ended_at > start:
                return nxt.ended_at
        age = time.monotonic() - obs.at
        if final or age > OPEN_HOLD_S:
            return time.time()
        if age > PROMPT_SETTLE_S and obs.shell_pid is not None and procinfo.at_prompt(obs.shell_pid):
            # the shell is back at its prompt: what the line ran is over (and the next line is not its)
            return min([time.time(), *(t for t in self._waiting() if t > start)])
        return None

    def _take(self, obs: Observed, end: float) -> list[Program]:
        trail = self.trail
        if trail is None or trail.mode is None:
            return []
        if obs.typed_at is not None:
            start = obs.typed_at
        else:  # the start mark is read a little after the shell printed it: the command may be running
            start = max(self._prev_end, obs.started_at - MARK_LAG_S)
        self._prev_end = max(self._prev_end, end)
        since = trail.wall_to_ns(start)
        until = trail.wall_to_ns(end)
        progs = []
        for p in trail.take(since, until):
            if _hook_program(p):
                self.hook_programs += 1
            else:
                progs.append(p)
        return progs

    def _record(self, obs: Observed, end: float) -> None:
        start = obs.typed_at if obs.typed_at is not None else obs.started_at
        later = [o.typed_at if o.typed_at is not None else o.started_at for o in self._held] + self._waiting()
        for later_start in later:  # a later line's programs are its own (a command that never ended)
            if start < later_start < end:
                end = later_start
        progs = self._take(obs, end)
        verdict = weigh(obs.marks_text, obs.typed_text, obs.typed_exact, progs, path=self.path)
        if verdict.tampered and not obs.tampered:
            self.tampered += 1
        tampered = "; ".join(r for r in (obs.tampered, verdict.tampered) if r) or None
        exit_code, exit_from = obs.exit_code, ("marks" if obs.exit_code is not None else None)
        duration = None if obs.ended_at is None else max(0, int(round((obs.ended_at - obs.started_at) * 1000)))
        if exit_code is None and progs:
            k_exit, k_duration = kernel_exit(progs, self._shell_pid())
            if k_exit is not None:
                exit_code, exit_from, duration = k_exit, "kernel", k_duration
        source = verdict.source
        data: dict[str, Any] = {
            "command": self.redact(verdict.command),
            "started_at": self._ts(obs.started_at),
            "duration_ms": duration,
            "exit_code": exit_code,
            "cwd": obs.typed_cwd if tampered and obs.typed_cwd else obs.cwd,  # the marks' cwd is theirs
            "source": source,
            "user": obs.user,
            "uid": obs.uid,
            "witnesses": verdict.witnesses,
        }
        if exit_from:
            data["exit_from"] = exit_from
        if obs.truncated:
            data["truncated"] = True
        if tampered:
            data["tampered"] = self.redact(tampered)[:1024]  # it quotes what was typed
        seq = self._send(data, progs[:MAX_INLINE_PROGRAMS], len(progs))
        for p in progs[MAX_INLINE_PROGRAMS:]:
            self._program_record(p, parent_seq=seq)

    def _send(self, data: dict[str, Any], progs: list[Program], total: int) -> int:
        self.count += 1
        data = {"session_id": self.session_id, "seq": self.count, **data}
        if self.trail is not None and self.trail.mode is not None:
            data["programs"] = [p.to_data(self.redact) for p in progs]
            if total > len(progs):
                data["programs_total"] = total
        self._emit(self.count, data)
        return self.count

    def _program_record(self, p: Program, parent_seq: int | None = None) -> None:
        """A program's own record: one no command took, or one over a command's inline share."""
        self.kernel_records += 1
        data: dict[str, Any] = {
            "command": self.redact(p.text()),
            "started_at": self._ts(p.started_at),
            "duration_ms": p.duration_ms,
            "exit_code": p.exit_status,
            "cwd": p.cwd,
            "source": "kernel",
            "user": p.to_data(str)["user"],
            "uid": p.uid,
            "witnesses": ["kernel"],
        }
        if p.exit_status is not None:
            data["exit_from"] = "kernel"
        if parent_seq is not None:
            data["parent_seq"] = parent_seq
        if p.truncated:
            data["truncated"] = True
        self._send(data, [p], 1)

    def prompt_seen(self, now: float) -> None:
        """The shell's first prompt (or first typed line): what ran before is its start-up."""
        if self.startup_end is None:
            self.startup_end = now

    def _orphans(self, trail: ExecTrail, until_ns: int, final: bool) -> None:
        startup_ns = None if self.startup_end is None else trail.wall_to_ns(self.startup_end)
        for p in trail.unclaimed(until_ns):
            if startup_ns is None and not final:
                return  # the start-up files still run
            if not p.ended and not final:
                continue  # still running: it gets its record with its exit status
            p.claimed = True
            if _hook_program(p):
                self.hook_programs += 1
            elif startup_ns is None or p.start_ns < startup_ns:
                self.startup_count += 1  # the start-up files' programs go on the session record
                if len(self.startup) < MAX_INLINE_PROGRAMS:
                    self.startup.append(p)
            else:
                self._program_record(p)

    def close(self) -> None:
        """The session ended: hand on everything held and every program left."""
        if self.trail is not None:
            self.trail.close()
        self.flush(final=True)

    def trail_summary(self) -> dict[str, Any]:
        """The session record's ``exec_trail``: which kernel witness was had, and what it saw."""
        t = self.trail
        if t is None:
            return {"mode": None, "reason": "exec trail off"}
        out: dict[str, Any] = {"mode": t.mode, "reason": t.reason if t.mode != "kernel" else None}
        if t.mode is not None:
            out.update(
                programs_without_argv=t.argv_missing,
                escaped=t.escaped,
                dropped=t.dropped,
                program_records=self.kernel_records,
                startup_program_count=self.startup_count,
                startup_programs=[p.to_data(self.redact) for p in self.startup],
            )
        return out

"""What every deriver shares: the origin filter, the line gate and line ids.

Derivers turn ``system_log`` events into audit events (user_activity, webftp_transfer). The
journald and syslog-file collectors call every callable in ``ctx.derivers`` on each
``system_log`` event they produce that the ``ctx.line_gate`` lets through
(``deriver(event) -> list[Event]``) and emit the
derived events in the same emit call, so they share the source line's checkpoint. A derived
event's id is ``stable_id(<ns>, <line id>)``: re-reading a line re-derives the same ids.

The derivers see every line every log source reads, each line from one origin. "Never both
twice": sshd, sudo, su and sftp-server lines usually reach the agent twice on a server that runs
both journald and rsyslog (once from the journal, once from auth.log), so the host's own auth log
is read either from the journal or from its file, chosen by ``collectors.auth.source``:

- ``journald``: journal lines, and lines of any file but ``collectors.auth.paths`` (the host's
  ``/var/log/auth.log``, ``/var/log/secure``: copies of the journal's);
- ``file``: lines of ``collectors.auth.paths`` — the service adds :func:`auth_file_paths` to the
  file sources — and of any other file, unless ``collectors.auth.paths`` is set in the config:
  then the auth log is named, and another file's auth lines are a catch-all's copies of it;
- ``auto``: ``journald`` when the journald collector is enabled, ``file`` otherwise.

So an old ``secure`` or ``auth.log`` given as a ``collectors.syslog.paths`` file yields its user
activity, and the FTP servers' transfer logs (``collectors.ftp.paths``) are read in any case.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import structlog

from agent.typing import Deriver, Event
from collectors.derivers.provenance import RULES, SSHD_NAMES, SenderRules, Voucher, default_rules, sender_of

if TYPE_CHECKING:
    from agent.config import AgentConfig

log = structlog.get_logger("derivers")

#: a forged line is logged at most this often per program (every one is counted)
FORGED_LOG_INTERVAL_S = 60.0

Origin = Literal["journald", "file"]


def event_origin(event: Event) -> tuple[Origin | None, str | None]:
    """Where a ``system_log`` event was read: (``journald`` | ``file`` | None, file path or None).

    The id namespace decides (``jd-`` journald, ``f-`` files); ``data.source`` gives the file
    path (for journald it names the journal directory) or, for events without such an id,
    the origin (``journald…``, ``file:PATH`` or an absolute path).
    """
    data = event.get("data") or {}
    src = data.get("source")
    src = src if isinstance(src, str) and src else None
    eid = event.get("id") or ""
    if eid.startswith("jd-"):
        return "journald", None
    if eid.startswith("f-"):
        return "file", src.removeprefix("file:") if src else None
    if src is not None:
        if src.startswith("journal"):
            return "journald", None
        if src.startswith("file:"):
            return "file", src[5:]
        if src.startswith("/"):
            return "file", src
    return None, None


def _matches(path: str | None, patterns: Sequence[str]) -> bool:
    if not path:
        return False
    return any(path == p or fnmatch.fnmatchcase(path, p) for p in patterns)


class OriginFilter:
    """Accepts the lines the derivers may read (see the module docstring): those of the auth
    origin, of files other than the host's auth log, and always those of ``always`` files."""

    def __init__(self, origin: Origin | None, paths: Sequence[str] = (), named: bool = False,
                 always: Sequence[str] = ()) -> None:
        self.origin = origin
        self.paths = list(paths)
        #: the auth log paths were set in the config: other files' auth lines are copies
        self.named = named
        self.always = list(always)

    def __call__(self, event: Event) -> bool:
        if self.origin is None:
            return True
        origin, path = event_origin(event)
        if origin is None:
            # an event that does not say where it came from: accept it only when there is
            # just one possible origin anyway (tests, direct calls)
            return True
        if origin == "journald":
            return self.origin == "journald"
        if _matches(path, self.always):
            return True
        in_auth_log = _matches(path, self.paths)
        if self.origin == "journald":
            return not in_auth_log  # the host's auth log holds the journal's lines again
        return in_auth_log or not (self.named and self.paths)


def auth_origin(cfg: AgentConfig) -> Origin:
    """The one origin the auth and sftp derivers read (see the module docstring)."""
    src = cfg.collectors.auth.source
    if src == "auto":
        return "journald" if cfg.collectors.journald.enabled else "file"
    return src


def auth_file_paths(cfg: AgentConfig) -> list[str]:
    """The auth log files the file source must tail for the derivers ([] when journald feeds them).

    Only existing files are returned: ``/var/log/auth.log`` on Debian, ``/var/log/secure`` on
    RHEL; both when both exist (they never hold the same lines).
    """
    if not (cfg.collectors.auth.enabled or cfg.collectors.sftp.enabled):
        return []
    if auth_origin(cfg) != "file":
        return []
    return [p for p in cfg.collectors.auth.paths if os.path.exists(p)]


def ftp_file_paths(cfg: AgentConfig) -> list[str]:
    """The FTP servers' transfer logs the file source must tail (those of ``collectors.ftp.paths``
    that exist)."""
    if not cfg.collectors.ftp.enabled:
        return []
    return [p for p in cfg.collectors.ftp.paths if os.path.exists(p)]


class Witness:
    """Decides whether a line may become an audit row: whose sender fits the program it claims.

    A line read from a file carries no sender: its rows say ``provenance.source: file``. A
    journal line's sender (``data.extra.sender``) must fit the rule of its program
    (:class:`~collectors.derivers.provenance.SenderRules`); a line that does not fit yields no
    row, stays a ``system_log`` line, and is counted once (``forged_lines``, by program) however
    many derivers look at it.
    """

    def __init__(self, rules: SenderRules | None = None, counter: Callable[..., Any] | None = None) -> None:
        self._rules = rules
        self.counter = counter
        #: forged lines seen, by program label
        self.forged: dict[str, int] = {}
        self._last_forged: str | None = None
        self._logged: dict[str, float] = {}

    @property
    def rules(self) -> SenderRules:
        if self._rules is None:  # found on first use: building derivers stays cheap
            self._rules = default_rules()
        return self._rules

    def vouch(self, event: Event, program: str, message: str) -> Voucher | None:
        """Who vouches for a line whose sender fits, or None (counted as forged, except the
        unprivileged sshd session child, whose facts the root monitor logs)."""
        origin, path = event_origin(event)
        data = event.get("data") or {}
        if origin == "file":
            src = data.get("source")
            return Voucher(None, path or (src if isinstance(src, str) else None))
        sender = sender_of(data)
        why = self.rules.check(program, message, sender)
        if why is None:
            return Voucher(sender)
        if program in SSHD_NAMES and not message.startswith("pam_unix(") and self.rules.is_sshd_child(sender):
            return None
        self.forged_line(event, program, message, why)
        return None

    def forged_line(self, event: Event, program: str, message: str = "", why: str | None = None) -> None:
        """Count one line whose sender does not fit (once per line, by a bounded program label)."""
        lid = line_id(event)
        if lid == self._last_forged:
            return
        self._last_forged = lid
        if program in RULES:
            label = program
        elif message.startswith("pam_unix("):
            label = "pam_unix"
        else:
            label = "other"
        self.forged[label] = self.forged.get(label, 0) + 1
        if self.counter is not None:
            self.counter("forged_lines", 1, program=label)
        now = time.monotonic()
        if now - self._logged.get(label, -FORGED_LOG_INTERVAL_S) >= FORGED_LOG_INTERVAL_S:
            # loud, but a flood of forgeries is one warning a minute per program, not one per line
            self._logged[label] = now
            data = event.get("data") or {}
            sender = sender_of(data) or {}
            log.warning("forged_line", program=label, forged_so_far=self.forged[label], line_id=lid,
                        sender_uid=sender.get("uid"), sender_exe=sender.get("exe"), sender_comm=sender.get("comm"),
                        why=why)


def accepted_data(event: Event, accept: Callable[[Event], bool] | None) -> dict[str, Any] | None:
    """The ``data`` of a ``system_log`` event a deriver may read (``accept`` lets it), else None."""
    if event.get("kind") != "system_log":
        return None
    if accept is not None and not accept(event):
        return None
    return event.get("data") or {}


def line_id(event: Event) -> str:
    """The source line's id, or a stand-in built from its content when it has none."""
    eid = event.get("id")
    if eid:
        return eid
    d: dict[str, Any] = event.get("data") or {}
    from agent.events import stable_id

    return stable_id("line", event.get("ts"), d.get("program"), d.get("pid"), d.get("message"))


class LineGate:
    """``(program, message) -> bool``: False when no deriver can use the line; also answers for
    a whole block of lines at once (:meth:`wants_any`)."""

    def __init__(self, programs: frozenset[str] | None, prefixes: tuple[str, ...]) -> None:
        #: None: some deriver reads every line
        self.programs = programs
        self.prefixes = prefixes
        self._programs_b = frozenset(p.encode() for p in programs or ())
        self._prefixes_b = tuple(b"\n" + p.encode() for p in prefixes)

    def __call__(self, program: str, message: str) -> bool:
        if self.programs is None:
            return True
        return program in self.programs or (bool(self.prefixes) and message.startswith(self.prefixes))

    def wants_any(self, programs: set[bytes], messages: bytes) -> bool:
        """Whether any of a block's lines passes: ``programs`` their (UTF-8) programs, ``messages``
        their messages joined by newlines (none holding one)."""
        if self.programs is None or not self._programs_b.isdisjoint(programs):
            return True
        if self._prefixes_b:
            text = b"\n" + messages
            return any(p in text for p in self._prefixes_b)
        return False


def line_gate(derivers: Sequence[Deriver]) -> LineGate | None:
    """A cheap pre-check of lines for the derivers: False when no deriver can use the line.

    Each deriver names its lines with ``programs`` (a set) and ``message_prefixes``; a deriver
    without them may use any line, and the gate then accepts every line. None when there are
    no derivers at all.
    """
    if not derivers:
        return None
    programs: set[str] = set()
    prefixes: list[str] = []
    for d in derivers:
        progs = getattr(d, "programs", None)
        if progs is None:
            return LineGate(None, ())
        programs.update(progs)
        prefixes.extend(getattr(d, "message_prefixes", ()))
    return LineGate(frozenset(programs), tuple(prefixes))

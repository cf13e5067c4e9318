"""What every deriver shares: the origin filter, the line gate and line ids.

Derivers turn ``system_log`` events into audit events (user_activity, webftp_transfer). The
journald and syslog-file collectors call every callable in ``ctx.derivers`` on each
``system_log`` event they produce (lines the ``ctx.line_gate`` lets through) (``deriver(event) -> list[Event]``) and emit the
derived events in the same emit call, so they share the source line's checkpoint. A derived
event's id is ``stable_id(<ns>, <line id>)``: re-reading a line re-derives the same ids.

"Never both twice": sshd, sudo, su and sftp-server lines usually reach the agent twice on a
server that runs both journald and rsyslog (once from the journal, once from auth.log). Each
deriver therefore accepts lines from one *origin* only, chosen by ``collectors.auth.source``:

- ``journald``: only events read from the journal;
- ``file``: only events read from one of ``collectors.auth.paths`` (``/var/log/auth.log``,
  ``/var/log/secure`` …) — the service must add :func:`auth_file_paths` to the file source;
- ``auto``: ``journald`` when the journald collector is enabled, ``file`` otherwise.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from agent.typing import Deriver, Event

if TYPE_CHECKING:
    from agent.config import AgentConfig

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


class OriginFilter:
    """Accepts the events of one origin (and, for files, only the auth log paths)."""

    def __init__(self, origin: Origin | None, paths: Sequence[str] = ()) -> None:
        self.origin = origin
        self.paths = list(paths)

    def __call__(self, event: Event) -> bool:
        if self.origin is None:
            return True
        origin, path = event_origin(event)
        if origin is None:
            # an event that does not say where it came from: accept it only when there is
            # just one possible origin anyway (tests, direct calls)
            return True
        if origin != self.origin:
            return False
        if origin == "file" and path and self.paths:
            return any(path == p or fnmatch.fnmatchcase(path, p) for p in self.paths)
        return True


def auth_origin(cfg: AgentConfig) -> Origin:
    """The one origin the auth and sftp derivers read (see the module docstring)."""
    src = cfg.collectors.auth.source
    if src == "auto":
        return "journald" if cfg.collectors.journald.enabled else "file"
    return src  # type: ignore[return-value]


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

"""Who is at the other end of a hook connection, and which kinds of event it may push.

The peer's identity comes from the kernel (``SO_PEERCRED``) and ``/proc``, never from what it
sends; it is the ``provenance`` stamped on every event the peer pushes. ``hook.push`` says, per
kind, which users and groups may push it (:class:`Pushers`).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict

from agent.events import KINDS

log = structlog.get_logger("hook")


class PushRule(BaseModel):
    """Who may push one kind of event: these users and the members of these groups."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    users: list[str] = ["root"]
    groups: list[str] = []


class PushPolicy(BaseModel):
    """Per kind, who may push it over the hook socket (``websh`` covers ``websh_session`` and
    ``websh_command``). By default root may push everything and everyone else nothing. (The
    ``hook.push`` section of the config: ``agent.config`` takes it from here.)"""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    user_activity: PushRule = PushRule()
    webftp_transfer: PushRule = PushRule()
    command: PushRule = PushRule()
    websh: PushRule = PushRule()
    system_log: PushRule = PushRule()
    metrics: PushRule = PushRule()

    def rule_for(self, kind: str) -> PushRule:
        """The rule of an event kind."""
        return getattr(self, "websh" if kind.startswith("websh_") else kind)


@dataclass(frozen=True, slots=True)
class Peer:
    """The process at the other end of a connection."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int]
    #: the peer's executable when the connection was accepted (None when /proc does not say)
    exe: str | None = None
    #: the uid's user name when the connection was accepted (None: looked up when asked)
    name: str | None = None

    @property
    def user(self) -> str:
        if self.name is not None:
            return self.name
        return user_name(self.uid)

    def provenance(self) -> dict[str, Any]:
        """The ``provenance`` of the events this peer pushes: its sender, as the kernel says."""
        out: dict[str, Any] = {"source": "hook", "uid": self.uid, "gid": self.gid, "pid": self.pid,
                               "user": self.user[:256]}
        if self.exe:
            out["exe"] = self.exe[:4096]
        return out


def user_name(uid: int) -> str:
    """The user name of a uid (the number when it has none)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def peer_of(sock: socket.socket) -> Peer:
    """The peer of a connected Unix socket: ``SO_PEERCRED``, its groups and executable from ``/proc``."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    groups: set[int] = {gid}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                groups.update(int(g) for g in line.split()[1:])
                break
    exe: str | None = None
    with contextlib.suppress(OSError):
        exe = os.readlink(f"/proc/{pid}/exe")
    # the name once per connection, not per event (an NSS lookup reads /etc/passwd each time)
    return Peer(pid, uid, gid, frozenset(groups), exe, user_name(uid))


def resolve_ids(users: list[str], groups: list[str], where: str) -> tuple[frozenset[int], frozenset[int]]:
    """The uids and gids that user and group names (or numbers) stand for; unknown names are
    logged (naming the config keys ``{where}users`` / ``{where}groups``) and ignored."""
    uids, gids = set(), set()
    for u in users:
        try:
            uids.add(int(u) if u.isdigit() else pwd.getpwnam(u).pw_uid)
        except KeyError:
            log.warning(f"{where}users names an unknown user; ignored", user=u)
    for g in groups:
        try:
            gids.add(int(g) if g.isdigit() else grp.getgrnam(g).gr_gid)
        except KeyError:
            log.warning(f"{where}groups names an unknown group; ignored", group=g)
    return frozenset(uids), frozenset(gids)


def push_rule_name(kind: str) -> str:
    """The ``hook.push`` key of an event kind (``websh`` for both websh kinds)."""
    return "websh" if kind.startswith("websh_") else kind


class Pushers:
    """``hook.push`` resolved to ids: who may push which kind."""

    def __init__(self, policy: PushPolicy) -> None:
        self._ids = {}
        for kind in KINDS:
            rule = policy.rule_for(kind)
            self._ids[kind] = resolve_ids(rule.users, rule.groups, f"hook.push.{push_rule_name(kind)}.")

    def allows(self, peer: Peer, kind: str) -> bool:
        """Whether ``peer`` may push events of ``kind``."""
        uids, gids = self._ids.get(kind, (frozenset(), frozenset()))
        return peer.uid in uids or bool(peer.groups & gids)

    def refusal(self, peer: Peer, kind: str) -> str:
        """The reason given to a peer that may not push ``kind``."""
        rule = push_rule_name(kind)
        return f"uid {peer.uid} ({peer.user}) may not push {kind} (hook.push.{rule}.users / hook.push.{rule}.groups)"


__all__ = ["Peer", "PushPolicy", "PushRule", "Pushers", "peer_of", "push_rule_name", "resolve_ids"]

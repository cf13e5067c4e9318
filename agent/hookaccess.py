"""Who may use the hook socket, and how many at once: peer credentials, allow lists, the socket
file's ACL and the per-uid connection slots.

The kernel checks the socket file's permissions at ``connect``; the server then checks the
peer's SO_PEERCRED against ``hook.allow_users`` / ``hook.allow_groups``. So that every listed
group passes the first check (not only the one that owns the file), the socket gets a POSIX
access ACL with one entry per group (``system.posix_acl_access``, the kernel's binary form).
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog

from agent.hookpeer import Peer

log = structlog.get_logger("hook")

# linux/posix_acl_xattr.h
_ACL_XATTR = "system.posix_acl_access"
_ACL_EA_VERSION = 2
_ACL_USER_OBJ, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = 0x01, 0x04, 0x08, 0x10, 0x20
_ACL_UNDEFINED_ID = 0xFFFFFFFF


def acl_xattr(mode: int, gids: Iterable[int]) -> bytes:
    """The ``system.posix_acl_access`` value granting ``mode``'s group bits to each of ``gids``."""
    group_perm = (mode >> 3) & 7
    entries = [(_ACL_USER_OBJ, (mode >> 6) & 7, _ACL_UNDEFINED_ID), (_ACL_GROUP_OBJ, group_perm, _ACL_UNDEFINED_ID)]
    entries += [(_ACL_GROUP, group_perm, gid) for gid in sorted(set(gids))]
    entries += [(_ACL_MASK, group_perm, _ACL_UNDEFINED_ID), (_ACL_OTHER, mode & 7, _ACL_UNDEFINED_ID)]
    return struct.pack("<I", _ACL_EA_VERSION) + b"".join(struct.pack("<HHI", *e) for e in entries)


def grant_groups(path: str | os.PathLike[str], mode: int, gids: Iterable[int]) -> bool:
    """Let every group in ``gids`` connect to the socket at ``path``; False when only the first can.

    The file is owned by the first group (as without an ACL) and carries an ACL entry for each.
    A file system without ACLs is logged as an error naming the groups left out."""
    ordered = sorted(set(gids))
    if not ordered:
        return True
    try:
        os.chown(path, -1, ordered[0])
    except OSError as exc:
        log.error("cannot give the hook socket to its group", socket=str(path), gid=ordered[0], error=str(exc))
    if len(ordered) == 1:
        return True
    try:
        os.setxattr(path, _ACL_XATTR, acl_xattr(mode, ordered))
    except OSError as exc:
        left_out = ordered[1:]
        why = "the file system has no POSIX ACLs" if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP) else str(exc)
        log.error("only the first of hook.allow_groups can connect: the socket's ACL could not be set",
                  socket=str(path), reason=why, groups_left_out=left_out)
        return False
    return True


@dataclass(eq=False, slots=True)
class Slot:
    """One served connection's slot: who holds it and when it last made progress."""

    peer: Peer
    #: what cuts the connection (its transport's ``abort``) when the slot is taken back
    abort: Any
    last_active: float
    #: requests read whose answers are not written yet (while > 0 the connection is not idle)
    pending: int = 0


class SlotTable:
    """Connection slots counted per peer uid: at most ``per_uid`` each and ``total`` together.

    When all are taken, a uid holding fewer than the biggest holder still gets one: the biggest
    holder's longest-idle connection is cut for it. So no uid can starve another."""

    def __init__(self, total: int, per_uid: int) -> None:
        self.total = total
        self.per_uid = per_uid
        self._by_uid: dict[int, set[Slot]] = {}
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def held_by(self, uid: int) -> int:
        return len(self._by_uid.get(uid, ()))

    def take(self, peer: Peer, abort: Any, now: float) -> tuple[Slot | None, Slot | None, str]:
        """``(slot, evicted, why)``: the new slot (None with the reason when there is none) and the
        slot cut to make room for it (its connection is already aborted)."""
        mine = self.held_by(peer.uid)
        if mine >= self.per_uid:
            return None, None, f"uid {peer.uid} holds {mine} connections (hook.max_connections_per_uid)"
        evicted = None
        if self._n >= self.total:
            biggest = max(self._by_uid.values(), key=len)
            if len(biggest) <= mine + 1:
                return None, None, f"all {self.total} connections are taken (hook.max_connections)"
            evicted = min(biggest, key=lambda c: (c.pending > 0, c.last_active))
            self.release(evicted)
            evicted.abort()
        slot = Slot(peer, abort, now)
        self._by_uid.setdefault(peer.uid, set()).add(slot)
        self._n += 1
        return slot, evicted, ""

    def release(self, slot: Slot) -> None:
        """Give a slot back (again: no effect)."""
        mine = self._by_uid.get(slot.peer.uid)
        if mine is None or slot not in mine:
            return
        mine.discard(slot)
        self._n -= 1
        if not mine:
            del self._by_uid[slot.peer.uid]

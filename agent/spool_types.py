"""The spool's record types: a batch about to be spooled, a spooled one, an eviction, the stats."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from agent.wire import CODEC_JSON, Packed, pack, unpack


class _StoredBody:
    """What a batch's ``body``, ``codec``, ``raw_bytes`` and ``crc`` give (agent.wire)."""

    __slots__ = ()
    body: bytes
    codec: str
    raw_bytes: int
    crc: int

    def json(self) -> bytes:
        """The JSON array of the events."""
        return unpack(self.codec, self.body)

    def packed_body(self) -> Packed:
        return Packed(self.codec, self.body, self.raw_bytes, self.crc)


@dataclass(frozen=True, slots=True)
class NewBatch(_StoredBody):
    """A batch about to be spooled: ``body`` is the JSON array of its events in ``codec``
    (see agent.wire: ``json`` as it is, or ``deflate`` with its JSON length and CRC)."""

    batch_id: str
    priority: int
    n_events: int
    kinds: dict[str, int]
    body: bytes
    codec: str = CODEC_JSON
    raw_bytes: int = 0
    crc: int = 0

    def packed(self, level: int) -> NewBatch:
        """This batch with its body deflated (agent.wire.pack)."""
        if self.codec != CODEC_JSON:
            return self
        p = pack(self.body, level)
        return NewBatch(self.batch_id, self.priority, self.n_events, self.kinds, p.data, p.codec, p.raw_bytes, p.crc)


@dataclass(frozen=True, slots=True)
class SpoolBatch(_StoredBody):
    """A spooled batch waiting to be shipped."""

    seq: int
    batch_id: str
    priority: int
    created: float
    n_events: int
    kinds: dict[str, int]
    body: bytes
    attempts: int
    codec: str = CODEC_JSON
    raw_bytes: int = 0
    crc: int = 0


@dataclass(frozen=True, slots=True)
class Eviction:
    """A bulk batch dropped to make room for audit data."""

    batch_id: str
    n_events: int
    kinds: dict[str, int]


@dataclass(frozen=True, slots=True)
class SpoolStats:
    batches: int
    bytes: int
    events: int
    oldest_age_s: float | None
    dead_letters: int
    dead_events: int
    max_bytes: int

    @classmethod
    def of(cls, db: sqlite3.Connection, max_bytes: int) -> SpoolStats:
        n, events, oldest, nbytes, dn, devents = db.execute(
            "SELECT COUNT(*), TOTAL(n_events), MIN(created), TOTAL(bytes), (SELECT COUNT(*) FROM dead_letters),"
            " (SELECT TOTAL(n_events) FROM dead_letters) FROM batches").fetchone()
        age = None if oldest is None else time.time() - oldest
        return cls(n, int(nbytes), int(events), age, dn, int(devents), max_bytes)

"""A batcher's lanes: events waiting to be spooled, with the checkpoints they lead up to, and
how a lane's items become spool batches (one per eviction class)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import dataclass, field

import structlog

from agent.events import PRIORITY_AUDIT, PRIORITY_BULK, new_id
from agent.spool import NewBatch
from agent.typing import Checkpoint

log = structlog.get_logger("pipeline")


@dataclass
class Lane:
    """Events waiting to be spooled, in arrival order, with the checkpoints they lead up to.

    An item is ``(priority, kind, JSON, n)``: one event, or a segment of ``n`` events of one kind
    joined by commas (from ``Batcher.emit_prepared``); segments are never split."""

    name: str
    fail_fast: bool
    items: list[tuple[int, str, bytes, int]] = field(default_factory=list)
    nbytes: int = 0
    nevents: int = 0
    checkpoints: dict[str, str] = field(default_factory=dict)
    flushed: asyncio.Future[None] | None = None
    first_at: float | None = None
    flush_scheduled: bool = False

    def add(self, prio: int, kind: str, blob: bytes, n: int = 1) -> None:
        self.items.append((prio, kind, blob, n))
        self.nbytes += len(blob)
        self.nevents += n
        if self.first_at is None:
            self.first_at = time.monotonic()

    def take(
        self, max_events: int | None = None, max_bytes: int | None = None
    ) -> tuple[list[tuple[int, str, bytes, int]], list[Checkpoint], asyncio.Future[None] | None]:
        """The oldest items up to the limits (at least one); the checkpoints only when the lane
        is emptied, since a checkpoint covers every event emitted before it."""
        k = len(self.items)
        if max_events is not None or max_bytes is not None:
            size = events = k = 0
            for _, _, blob, n in self.items:
                if k and ((max_events is not None and events + n > max_events)
                          or (max_bytes is not None and size + len(blob) > max_bytes)):
                    break
                k += 1
                events += n
                size += len(blob)
        taken, self.items = self.items[:k], self.items[k:]
        self.nbytes -= sum(len(it[2]) for it in taken)
        self.nevents -= sum(it[3] for it in taken)
        cps: list[Checkpoint] = []
        if not self.items:
            cps = [Checkpoint(s, p) for s, p in self.checkpoints.items()]
            self.checkpoints = {}
            self.first_at = None
        fut, self.flushed = self.flushed, None
        return taken, cps, fut

    def restore(self, taken: list[tuple[int, str, bytes, int]], cps: list[Checkpoint]) -> None:
        """Put events that could not be written back at the head of the lane."""
        self.items[:0] = taken
        self.nbytes += sum(len(it[2]) for it in taken)
        self.nevents += sum(it[3] for it in taken)
        newer = self.checkpoints
        self.checkpoints = {c.source: c.position for c in cps}
        self.checkpoints.update(newer)
        if self.first_at is None and (self.items or self.checkpoints):
            self.first_at = time.monotonic()


def to_batches(taken: list[tuple[int, str, bytes, int]], max_events: int | None = None,
               max_bytes: int | None = None) -> list[NewBatch]:
    """Spool batches of each eviction class, events in their order; with limits, as many batches
    as it takes to keep each within ``max_events`` and ``max_bytes`` (an item over a limit alone
    still makes a batch of its own)."""
    out = []
    for prio in (PRIORITY_AUDIT, PRIORITY_BULK):
        blobs: list[bytes] = []
        kinds: dict[str, int] = {}
        size = 0
        for p, k, blob, n in taken:
            if p != prio:
                continue
            if blobs and ((max_events is not None and sum(kinds.values()) + n > max_events)
                          or (max_bytes is not None and size + len(blob) + 2 > max_bytes)):
                out.append(_batch(prio, kinds, blobs))
                blobs, kinds, size = [], {}, 0
            blobs.append(blob)
            kinds[k] = kinds.get(k, 0) + n
            size += len(blob) + 1
        if blobs:
            out.append(_batch(prio, kinds, blobs))
    return out


def _batch(prio: int, kinds: dict[str, int], blobs: list[bytes]) -> NewBatch:
    # one join, one copy of the body (b"[" + b",".join(…) + b"]" copied a megabyte three times)
    parts = [b"["]
    for blob in blobs:
        parts += (blob, b",")
    if blobs:
        parts[-1] = b"]"
    else:
        parts.append(b"]")
    return NewBatch(new_id("b"), prio, sum(kinds.values()), kinds, b"".join(parts))


def resolve_when_durable(fut: asyncio.Future[None], durable: concurrent.futures.Future[None]) -> None:
    """Resolve a push lane's producers' future once ``durable`` (Spool.durable) says their commit is
    on disk — at once with ``spool.synchronous: normal``; the next write does not wait for it."""
    if durable.done() and durable.exception() is None:
        fut.set_result(None)
        return

    def done(d: asyncio.Future[None]) -> None:
        if fut.done():
            return
        exc = d.exception()
        if exc is None:
            fut.set_result(None)
        else:
            log.error("the spool's fsync failed: pushed events are not answered ok", error=str(exc))
            fut.set_exception(exc)
            fut.exception()  # retrieved: each waiter reads it itself

    asyncio.wrap_future(durable).add_done_callback(done)


#: bodies smaller than this are deflated on the event loop, larger ones in a thread
PACK_INLINE_BYTES = 16 * 1024


async def packed(batches: list[NewBatch], level: int) -> list[NewBatch]:
    """The batches with deflated bodies; large ones are compressed in a worker thread (zlib lets
    go of the GIL), beside the spool's own thread."""
    if sum(len(b.body) for b in batches) < PACK_INLINE_BYTES:
        return [b.packed(level) for b in batches]
    return await asyncio.get_running_loop().run_in_executor(None, lambda: [b.packed(level) for b in batches])

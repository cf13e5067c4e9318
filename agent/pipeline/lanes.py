"""A batcher's lanes: events waiting to be spooled, with the checkpoints they lead up to, and
how a lane's items become spool batches (one per eviction class)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import orjson
import structlog

from agent.events import PRIORITY_AUDIT, PRIORITY_BULK, new_id
from agent.schema import SchemaError, validate_event
from agent.spool import NewBatch
from agent.typing import Checkpoint, Event, Item

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


Taken = list[tuple[int, str, bytes, int]]


def _groups(taken: Taken, max_events: int | None,
            max_bytes: int | None) -> Iterator[tuple[int, dict[str, int], list[bytes]]]:
    """The ``(priority, kinds, blobs)`` of each batch :func:`to_batches` makes."""
    for prio in (PRIORITY_AUDIT, PRIORITY_BULK):
        blobs: list[bytes] = []
        kinds: dict[str, int] = {}
        size = 0
        for p, k, blob, n in taken:
            if p != prio:
                continue
            if blobs and ((max_events is not None and sum(kinds.values()) + n > max_events)
                          or (max_bytes is not None and size + len(blob) + 2 > max_bytes)):
                yield prio, kinds, blobs
                blobs, kinds, size = [], {}, 0
            blobs.append(blob)
            kinds[k] = kinds.get(k, 0) + n
            size += len(blob) + 1
        if blobs:
            yield prio, kinds, blobs


def to_batches(taken: Taken, max_events: int | None = None, max_bytes: int | None = None,
               pack_level: int | None = None) -> list[NewBatch]:
    """Spool batches of each eviction class, events in their order; with limits, as many batches
    as it takes to keep each within ``max_events`` and ``max_bytes`` (an item over a limit alone
    still makes a batch of its own). With ``pack_level``, each body is deflated as soon as it is
    joined, so that one batch's uncompressed body exists at a time, not every batch's."""
    if pack_level is None:
        return [_batch(*g) for g in _groups(taken, max_events, max_bytes)]
    return [_batch(*g).packed(pack_level) for g in _groups(taken, max_events, max_bytes)]


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


#: bodies smaller than this are joined and deflated on the event loop, larger ones in a thread
PACK_INLINE_BYTES = 16 * 1024


async def packed(groups: list[Taken], level: int | None, max_events: int | None = None,
                 max_bytes: int | None = None) -> list[NewBatch]:
    """The batches of each group of taken items (:func:`to_batches`), deflated at ``level``
    (None: left as JSON); large ones are joined and compressed in a worker thread (zlib lets go
    of the GIL), beside the spool's own thread."""
    def make() -> list[NewBatch]:
        return [b for g in groups for b in to_batches(g, max_events, max_bytes, level)]

    if level is None or sum(len(it[2]) for g in groups for it in g) < PACK_INLINE_BYTES:
        return make()
    return await asyncio.get_running_loop().run_in_executor(None, make)


def checked(items: list[Item], dead_letter: Callable[[Event, str], None]) -> list[Item]:
    """The items whose events each pass the schema check; ``dead_letter(event, reason)`` takes
    every other (an undecodable segment as ``{"kind", "raw"}``)."""
    good: list[Item] = []
    for kind, blob, n in items:
        try:
            events = orjson.loads(b"[" + blob + b"]") if n > 1 else [orjson.loads(blob)]
            if len(events) != n:
                raise orjson.JSONDecodeError(f"{len(events)} events in a segment of {n}", "", 0)
        except orjson.JSONDecodeError as exc:
            dead_letter({"kind": kind, "raw": blob.decode("utf-8", "replace")}, str(exc))  # type: ignore[typeddict-item]
            continue
        for ev in events:
            try:
                validate_event(ev)
            except SchemaError as exc:
                dead_letter(ev, str(exc))
                continue
            good.append((kind, orjson.dumps(ev), 1) if n > 1 else (kind, blob, 1))
    return good

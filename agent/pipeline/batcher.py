"""The batcher: processed events, in lanes, written to the spool as batches.

The :class:`Batcher` runs the chain (``agent.pipeline.processors``) on each event and collects
the results in two lanes, ``pull`` (collectors: their emits wait while the spool is full, so the
source's data stays where it is) and ``push`` (the hook API: a full spool answers *busy*).
A flush writes a lane's oldest events as one batch per eviction class, together with the
checkpoints they lead up to, to the spool in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

import orjson
import structlog

from agent.errors import SpoolFull
from agent.events import KINDS, PRIORITY_BULK, new_id, priority_of
from agent.pipeline.encode import Prepared
from agent.pipeline.lanes import Lane, checked, packed, resolve_when_durable
from agent.pipeline.processors import Chain, DropEvent, InvalidEvent
from agent.schema import SchemaError, validate_event
from agent.spool import NewBatch, Spool
from agent.spool_recovery import is_corruption
from agent.typing import Checkpoint, Event, Item, Processor

log = structlog.get_logger("pipeline")

#: full batches a pull lane may hold while a spool write is in progress (then its collector
#: waits), all written in the next transaction
WRITE_AHEAD = 4
#: ... and at most this many bytes of them (big batches: fewer ahead, the memory stays bounded)
AHEAD_BYTES = 4 * 1024 * 1024


class Batcher:
    """Buffers processed events and writes them to the spool as batches."""

    def __init__(
        self,
        spool: Spool,
        executor: Executor,
        chain: Chain | Sequence[Processor],
        *,
        max_events: int,
        max_bytes: int,
        max_wait_ms: int,
        push_max_wait_ms: int = 50,
        on_event: Callable[[str, str, str, int], None] | None = None,
        on_flush: Callable[[list[NewBatch], list[Any]], None] | None = None,
        pack_level: int | None = 1,
        on_corrupt_spool: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.spool = spool
        #: deflate level of spooled bodies (agent.wire.pack); None: spooled as JSON
        self.pack_level = pack_level
        self.executor = executor
        self.chain = chain
        self.max_events = max_events
        # a batch must fit in the spool with room to spare, or a full spool could never take it
        self.max_bytes = min(max_bytes, spool.max_bytes // 4)
        #: what a lane may hold while a write is in progress (at least two batches' worth)
        self._ahead_bytes = max(min(self.max_bytes * WRITE_AHEAD, AHEAD_BYTES), 2 * self.max_bytes)
        self.max_wait = max_wait_ms / 1000
        self.push_max_wait = min(push_max_wait_ms, max_wait_ms) / 1000
        self.on_event = on_event or (lambda kind, what, detail, n: None)
        self.on_flush = on_flush or (lambda batches, evictions: None)
        self.on_corrupt_spool = on_corrupt_spool  # a write found the file damaged: the agent must restart
        self.pull = Lane("pull", fail_fast=False)
        self.push = Lane("push", fail_fast=True)
        #: set whenever the push lane has room again (see push_room)
        self._push_room = asyncio.Event()
        self._locks = {"pull": asyncio.Lock(), "push": asyncio.Lock()}
        self._space = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._behind: asyncio.Future[None] | None = None
        self._closed = False

    @property
    def chain(self) -> Chain:
        return self._named

    @chain.setter
    def chain(self, chain: Chain | Sequence[Processor]) -> None:
        self._named = chain if isinstance(chain, Chain) else Chain.of(chain)
        self._chain = self._named.processors
        # the hook API validates what it accepts before submitting; only collectors' events
        # need the schema check here
        self._push_chain = self._named.push

    # -- processing ------------------------------------------------------------------------
    def process(self, event: Event, collector: str) -> bytes | None:
        """Run the chain on one event; its JSON, or None when dropped (counted, and logged if invalid).

        Counts nothing as received: the caller does, once per call (this is the hot path)."""
        try:
            for proc in self._chain:
                event = proc(event)
        except DropEvent as exc:
            self.on_event(event.get("kind", "?"), "dropped", exc.reason, 1)
            return None
        except InvalidEvent as exc:
            self._dead_letter_event(event, str(exc), collector)
            return None
        return orjson.dumps(event)

    def _dead_letter_event(self, event: Event, reason: str, collector: str) -> None:
        kind = event.get("kind") if event.get("kind") in KINDS else "unknown"
        log.error("invalid event dead-lettered", collector=collector, kind=kind, reason=reason)
        self.on_event(str(kind), "dead_lettered", collector, 1)
        try:
            body = b"[" + orjson.dumps(event, default=str) + b"]"
        except TypeError:
            body = b"[" + orjson.dumps(repr(event)) + b"]"
        # on the spool's own thread, never beside a transaction that thread has open
        self.executor.submit(
            self.spool.add_dead_letter, NewBatch(new_id("b"), PRIORITY_BULK, 1, {str(kind): 1}, body), reason, None
        )

    def _add(self, lane: Lane, blob: bytes, kind: str, n: int = 1) -> None:
        first = lane.first_at is None
        lane.add(priority_of(kind), kind, blob, n)
        if first:
            self._arm_timer()

    def _full(self, lane: Lane) -> bool:
        return lane.nevents >= self.max_events or lane.nbytes >= self.max_bytes

    # -- the two entry points ----------------------------------------------------------------
    async def emit(self, events: list[Event], checkpoint: Checkpoint | None, collector: str = "collector") -> None:
        """Pull lane: waits while the spool is full; returns once the events are buffered."""
        items: list[Item] = []
        for ev in events:
            blob = self.process(ev, collector)
            if blob is not None:
                items.append((ev["kind"], blob, 1))
        await self._buffer(items, checkpoint, collector)

    async def _buffer(self, items: list[Item], checkpoint: Checkpoint | None, collector: str) -> None:
        """Add finished events and the position after them to the pull lane; a full lane is
        written behind (see :meth:`_flush_behind`)."""
        lane = self.pull
        received: dict[str, int] = {}
        for kind, blob, n in items:
            received[kind] = received.get(kind, 0) + n
            self._add(lane, blob, kind, n)
            if lane.nevents >= self.max_events or lane.nbytes >= self.max_bytes:
                await self._flush_behind(lane)
        for kind, n in received.items():
            self.on_event(kind, "received", collector, n)
        if checkpoint is not None:
            lane.checkpoints[checkpoint.source] = checkpoint.position
            if not lane.nevents:
                # nothing buffered (all filtered): the position can still move on
                self._arm_timer()

    # -- the fast path of hot sources ---------------------------------------------------------
    def prepared(self) -> Prepared:
        """What a collector needs to build finished events itself (see :meth:`emit_prepared`)."""
        return Prepared.of_chain(self._named, max(1, self.max_events // 4), max(1, self.max_bytes // 4))

    async def emit_prepared(self, items: list[Item], checkpoint: Checkpoint | None,
                            collector: str = "collector") -> None:
        """Pull lane for hot sources that serialize their events themselves.

        ``items`` are ``(kind, JSON, n)``: ``n`` complete events — id, kind, ts, server, data —
        joined by commas, built by the collector from parts it has checked, its free text passed
        through ``Prepared.redact`` and its events passed through ``Prepared.accepts``; a
        segment (n > 1) should stay within ``Prepared.segment_events`` and ``segment_bytes``.
        The chain is not run again; the first event of each call is still checked against the
        schema, and if it fails every event of the call is, the bad ones dead-lettered (a
        collector bug must not get whole batches refused by the backend).
        """
        if items:
            try:
                kind, blob, n = items[0]
                validate_event(orjson.loads(b"[" + blob + b"]")[0] if n > 1 else orjson.loads(blob))
            except (SchemaError, orjson.JSONDecodeError, IndexError):
                items = checked(items, lambda ev, why: self._dead_letter_event(ev, why, collector))
        await self._buffer(items, checkpoint, collector)

    async def _flush_behind(self, lane: Lane) -> None:
        """Write a full pull lane while the collector goes on reading into a fresh buffer.

        At most one such write is outstanding: the lane goes on filling meanwhile, up to
        WRITE_AHEAD full batches, and then waits for it, which is the back-pressure a collector
        feels when the spool is slow or full. Writes stay in order
        (one lock), so a checkpoint never commits before the events it covers.
        """
        prev = self._behind
        if prev is not None and not prev.done():
            if lane.nevents < self.max_events * WRITE_AHEAD and lane.nbytes < self._ahead_bytes:
                return  # go on buffering while the last write finishes
            await asyncio.shield(prev)
        elif prev is not None:
            prev.result()  # surface a failed write to the collector (its events were restored)
        self._behind = asyncio.ensure_future(self.flush_lane(lane))
        await asyncio.sleep(0)  # let it take the buffer before more events are added

    def submit(self, event: Event, collector: str = "hook") -> tuple[str, asyncio.Future[None]] | str:
        """Push lane: the event's id and a future resolved when it is durably spooled
        (or failed with SpoolFull), or a reason string when the event is refused outright."""
        lane = self.push
        try:
            for proc in self._push_chain:
                event = proc(event)
        except DropEvent as exc:
            self.on_event(event.get("kind", "?"), "dropped", exc.reason, 1)
            return f"dropped by filter ({exc.reason})"
        except InvalidEvent as exc:
            return str(exc)
        self.on_event(event["kind"], "received", collector, 1)
        blob = orjson.dumps(event)
        if lane.flushed is None:
            lane.flushed = asyncio.get_running_loop().create_future()
        fut = lane.flushed
        self._add(lane, blob, event["kind"])
        if not lane.flush_scheduled and self._full(lane):
            lane.flush_scheduled = True
            asyncio.ensure_future(self.flush_lane(lane))
        return event["id"], fut

    @property
    def push_full(self) -> bool:
        """Whether the push lane holds WRITE_AHEAD batches' worth: producers wait (push_room)."""
        lane = self.push
        return lane.nevents >= self.max_events * WRITE_AHEAD or lane.nbytes >= self._ahead_bytes

    async def push_room(self) -> None:
        """Wait until the push lane has room (the hook stops reading producers meanwhile: memory stays bounded)."""
        while self.push_full:
            self._push_room.clear()
            if not self.push.flush_scheduled:
                self.push.flush_scheduled = True
                asyncio.ensure_future(self.flush_lane(self.push))
            await self._push_room.wait()

    # -- flushing ------------------------------------------------------------------------------
    def caught_up(self) -> None:
        """A pull source read to its end after a backlog (a full chunk or more since it last
        waited): the pull lane is written now, not ``max_wait_ms`` later. That wait gathers a
        trickle into one batch; at a backlog's end no trickle has begun, and waiting would only
        hold its last events back. Sources call this once per burst: a trickle still waits."""
        lane = self.pull
        if not self._closed and lane.nevents and not lane.flush_scheduled:
            lane.flush_scheduled = True
            asyncio.ensure_future(self._flush_caught_up(lane))

    async def _flush_caught_up(self, lane: Lane) -> None:
        try:  # a full spool or a failed write leaves the events (kept) to the timer
            await self.flush_lane(lane, wait_for_space=False, drain=True)
        except SpoolFull:
            lane.flush_scheduled = False
        except Exception as exc:  # noqa: BLE001 - as the timer's: logged, and the timer retries
            lane.flush_scheduled = False
            log.error("writing to the spool failed; retrying", lane=lane.name, error=str(exc))

    def _arm_timer(self) -> None:
        if self._timer is None or self._timer.done():
            self._timer = asyncio.ensure_future(self._timer_loop())

    async def _timer_loop(self) -> None:
        while not self._closed:
            now = time.monotonic()
            waits = []
            for lane, limit in ((self.pull, self.max_wait), (self.push, self.push_max_wait)):
                if lane.first_at is not None:
                    waits.append(lane.first_at + limit - now)
                elif lane.checkpoints:
                    waits.append(limit)
            if not waits:
                return
            delay = min(waits)
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            for lane, limit in ((self.pull, self.max_wait), (self.push, self.push_max_wait)):
                due = (lane.first_at is not None and now - lane.first_at >= limit) or (
                    lane.first_at is None and lane.checkpoints and delay >= 0
                )
                if due:
                    try:
                        await self.flush_lane(lane, wait_for_space=False)
                    except SpoolFull:
                        await self.wait_for_space(1.0)
                    except Exception as exc:  # noqa: BLE001 - a failed write (disk full, I/O
                        # error) must not end the timer: the other lane still needs it, and this
                        # one is retried (its events were kept)
                        log.error("writing to the spool failed; retrying", lane=lane.name, error=str(exc))
                        await asyncio.sleep(1.0)

    async def flush_lane(self, lane: Lane, wait_for_space: bool = True, drain: bool = False) -> None:
        """Write the lane's buffers (and checkpoints) to the spool.

        Pull lane: one batch, or up to WRITE_AHEAD full ones in one transaction (``drain``: all
        of them); while the spool is full the events are
        kept and this waits (or raises SpoolFull when ``wait_for_space`` is False). Push lane:
        everything, as batches within the limits; the producers' future is resolved once the
        commit is durable (Spool.durable); a full spool fails it with SpoolFull and the events are
        discarded (the producers were told *busy* and still hold them).
        """
        async with self._locks[lane.name]:
            lane.flush_scheduled = False
            loop = asyncio.get_running_loop()
            one_batch = False  # after a full spool: one batch per write, the most that may fit
            level = None if self.pack_level is None else self.pack_level or 1
            while lane.nevents or lane.checkpoints:
                if lane.fail_fast:
                    # everything pushed so far, in batches within the limits, in one transaction
                    taken, cps, fut = lane.take()
                    self._push_room.set()
                    batches = await packed([taken], level, self.max_events, self.max_bytes)
                else:
                    # a pull lane may have grown past one batch while a write was waiting: up
                    # to WRITE_AHEAD full batches go in one transaction
                    taken, cps, fut = lane.take(self.max_events, self.max_bytes)
                    groups = [taken]
                    while not one_batch and not cps and len(groups) < WRITE_AHEAD and self._full(lane):
                        more, cps, _ = lane.take(self.max_events, self.max_bytes)
                        groups.append(more)
                    if len(groups) > 1:
                        taken = [it for g in groups for it in g]
                    batches = await packed(groups, level)
                try:
                    evictions = await loop.run_in_executor(self.executor, self.spool.append, batches, cps)
                except SpoolFull as exc:
                    if lane.fail_fast:
                        if fut is not None and not fut.done():
                            fut.set_exception(exc)
                            fut.exception()  # retrieved: each waiter reads it itself
                        return
                    lane.restore(taken, cps)
                    if len(batches) > 1:
                        one_batch = True
                        continue
                    if not wait_for_space:
                        raise
                    await self.wait_for_space(1.0)
                    continue
                except BaseException as exc:
                    if is_corruption(exc):
                        self.on_corrupt_spool(f"spool write: {type(exc).__name__}: {exc}")
                    if fut is not None and not fut.done():
                        fut.set_exception(exc)
                    if not lane.fail_fast:
                        lane.restore(taken, cps)
                        if wait_for_space and isinstance(exc, Exception):
                            # like a full spool: the source waits, its events are kept and the
                            # write is retried (raising would crash and restart the collector,
                            # which re-reads into a lane still holding these events)
                            log.error("writing to the spool failed; retrying", lane=lane.name, error=str(exc))
                            await asyncio.sleep(1.0)
                            continue
                    raise
                if fut is not None and not fut.done():
                    if lane.fail_fast:
                        resolve_when_durable(fut, self.spool.durable())
                    else:
                        fut.set_result(None)
                self.on_flush(batches, evictions)
                if lane.fail_fast or (not drain and not self._full(lane)):
                    return

    def space_freed(self) -> None:
        """Called by the shipper after it deleted batches."""
        self._space.set()

    async def wait_for_space(self, timeout: float) -> None:
        self._space.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._space.wait()

    async def flush(self, timeout: float | None = None) -> bool:
        """Flush both lanes (on stop and reload); False when the pull lane could not be written in time."""

        async def both() -> None:
            await self.flush_lane(self.push)
            await self.flush_lane(self.pull, drain=True)

        try:
            async with asyncio.timeout(timeout):
                await both()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()

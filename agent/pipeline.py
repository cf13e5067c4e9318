"""The pipeline: enrich -> filter -> redact -> validate -> batch -> spool.

Processors are small callables ``(event) -> event``; a filter raises :class:`DropEvent`,
which only the chain's loop catches (and counts). The :class:`Batcher` collects processed
events in two lanes, ``pull`` (collectors: their emits wait while the spool is full, so the
source's data stays where it is) and ``push`` (the hook API: a full spool answers *busy*).
Each lane keeps one buffer per eviction class, and a flush writes the lane's buffers and the
checkpoints they cover to the spool in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from agent.config import LEVELS, AgentConfig
from agent.errors import SpoolFull
from agent.events import KINDS, PRIORITY_AUDIT, PRIORITY_BULK, new_id, priority_of
from agent.redact import Redactor
from agent.schema import SchemaError, validate_event
from agent.spool import NewBatch, Spool
from agent.typing import Checkpoint, Event, Processor

log = structlog.get_logger("pipeline")


class DropEvent(Exception):  # noqa: N818 - named like structlog's
    """Raised by a processor to drop an event on purpose; ``reason`` becomes a metric label."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class InvalidEvent(Exception):  # noqa: N818
    """An event that does not match the schema."""


class Enrich:
    """Adds ``server`` and, where the source gave none, a fresh ``id``."""

    def __init__(self, server: str) -> None:
        self.server = server

    def __call__(self, event: Event) -> Event:
        event["server"] = self.server
        if "id" not in event:
            event["id"] = new_id()
        return event


class Filter:
    """Drops configured kinds and system logs below the minimum level."""

    def __init__(self, drop_kinds: Iterable[str] = (), min_level: str = "debug") -> None:
        self.drop_kinds = frozenset(drop_kinds)
        self.max_rank = LEVELS.index(min_level)
        self._rank = {lvl: i for i, lvl in enumerate(LEVELS)}

    def __call__(self, event: Event) -> Event:
        kind = event["kind"]
        if kind in self.drop_kinds:
            raise DropEvent("kind")
        if kind == "system_log" and self._rank.get(event["data"].get("level"), 0) > self.max_rank:
            raise DropEvent("level")
        return event


class Validate:
    """Checks an event against the wire schema, so that a batch is never refused for one bad event."""

    def __call__(self, event: Event) -> Event:
        try:
            validate_event(event)
        except SchemaError as exc:
            raise InvalidEvent(str(exc)) from None
        return event


def build_chain(cfg: AgentConfig) -> list[Processor]:
    """The processor chain for a config."""
    r = cfg.redact
    return [
        Enrich(cfg.server),
        Filter(cfg.filter.drop_kinds, cfg.filter.min_level),
        Redactor(r.patterns, builtin=r.builtin, replacement=r.replacement),
        Validate(),
    ]


@dataclass
class _Lane:
    name: str
    fail_fast: bool
    buffers: dict[int, list[bytes]] = field(default_factory=lambda: {PRIORITY_BULK: [], PRIORITY_AUDIT: []})
    kinds: dict[int, dict[str, int]] = field(default_factory=lambda: {PRIORITY_BULK: {}, PRIORITY_AUDIT: {}})
    nbytes: int = 0
    nevents: int = 0
    checkpoints: dict[str, str] = field(default_factory=dict)
    flushed: asyncio.Future[None] | None = None
    first_at: float | None = None
    flush_scheduled: bool = False

    def take(self) -> tuple[list[NewBatch], list[Checkpoint], asyncio.Future[None] | None]:
        batches = []
        for prio, items in self.buffers.items():
            if items:
                body = b"[" + b",".join(items) + b"]"
                batches.append(NewBatch(new_id("b"), prio, len(items), self.kinds[prio], body))
        cps = [Checkpoint(s, p) for s, p in self.checkpoints.items()]
        fut = self.flushed
        self.buffers = {PRIORITY_BULK: [], PRIORITY_AUDIT: []}
        self.kinds = {PRIORITY_BULK: {}, PRIORITY_AUDIT: {}}
        self.nbytes = self.nevents = 0
        self.checkpoints = {}
        self.flushed = None
        self.first_at = None
        return batches, cps, fut


class Batcher:
    """Buffers processed events and writes them to the spool as batches."""

    def __init__(
        self,
        spool: Spool,
        executor: Executor,
        chain: list[Processor],
        *,
        max_events: int,
        max_bytes: int,
        max_wait_ms: int,
        push_max_wait_ms: int = 50,
        on_event: Callable[[str, str, str], None] | None = None,
        on_flush: Callable[[list[NewBatch], list[Any]], None] | None = None,
    ) -> None:
        self.spool = spool
        self.executor = executor
        self.chain = chain
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_wait = max_wait_ms / 1000
        self.push_max_wait = min(push_max_wait_ms, max_wait_ms) / 1000
        self.on_event = on_event or (lambda kind, what, detail: None)
        self.on_flush = on_flush or (lambda batches, evictions: None)
        self.pull = _Lane("pull", fail_fast=False)
        self.push = _Lane("push", fail_fast=True)
        self._locks = {"pull": asyncio.Lock(), "push": asyncio.Lock()}
        self._space = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def chain(self) -> list[Processor]:
        return self._chain

    @chain.setter
    def chain(self, chain: list[Processor]) -> None:
        self._chain = chain
        # the hook API validates what it accepts before submitting; only collectors' events
        # need the schema check here
        self._push_chain = [p for p in chain if not isinstance(p, Validate)]

    # -- processing ------------------------------------------------------------------------
    def process(self, event: Event, collector: str) -> bytes | None:
        """Run the chain on one event; its JSON, or None when dropped (counted, and logged if invalid)."""
        try:
            for proc in self.chain:
                event = proc(event)
        except DropEvent as exc:
            self.on_event(event.get("kind", "?"), "dropped", exc.reason)
            return None
        except InvalidEvent as exc:
            self._dead_letter_event(event, str(exc), collector)
            return None
        self.on_event(event["kind"], "received", collector)
        return orjson.dumps(event)

    def _dead_letter_event(self, event: Event, reason: str, collector: str) -> None:
        kind = event.get("kind") if event.get("kind") in KINDS else "unknown"
        log.error("invalid event dead-lettered", collector=collector, kind=kind, reason=reason)
        self.on_event(str(kind), "dead_lettered", collector)
        try:
            body = b"[" + orjson.dumps(event, default=str) + b"]"
        except TypeError:
            body = b"[" + orjson.dumps(repr(event)) + b"]"
        self.spool.add_dead_letter(NewBatch(new_id("b"), PRIORITY_BULK, 1, {str(kind): 1}, body), reason, None)

    def _add(self, lane: _Lane, blob: bytes, kind: str) -> None:
        prio = priority_of(kind)
        lane.buffers[prio].append(blob)
        k = lane.kinds[prio]
        k[kind] = k.get(kind, 0) + 1
        lane.nbytes += len(blob)
        lane.nevents += 1
        if lane.first_at is None:
            lane.first_at = time.monotonic()
            self._arm_timer()

    def _full(self, lane: _Lane) -> bool:
        return lane.nevents >= self.max_events or lane.nbytes >= self.max_bytes

    # -- the two entry points ----------------------------------------------------------------
    async def emit(self, events: list[Event], checkpoint: Checkpoint | None, collector: str = "collector") -> None:
        """Pull lane: waits while the spool is full; returns once the events are buffered."""
        lane = self.pull
        for ev in events:
            blob = self.process(ev, collector)
            if blob is not None:
                self._add(lane, blob, ev["kind"])
            if self._full(lane):
                await self.flush_lane(lane)
        if checkpoint is not None:
            lane.checkpoints[checkpoint.source] = checkpoint.position
            if not lane.nevents:
                # nothing buffered (all filtered): the position can still move on
                self._arm_timer()
        if self._full(lane):
            await self.flush_lane(lane)

    def submit(self, event: Event, collector: str = "hook") -> tuple[str, asyncio.Future[None]] | str:
        """Push lane: the event's id and a future resolved when it is durably spooled
        (or failed with SpoolFull), or a reason string when the event is refused outright."""
        lane = self.push
        try:
            for proc in self._push_chain:
                event = proc(event)
        except DropEvent as exc:
            self.on_event(event.get("kind", "?"), "dropped", exc.reason)
            return f"dropped by filter ({exc.reason})"
        except InvalidEvent as exc:
            return str(exc)
        self.on_event(event["kind"], "received", collector)
        blob = orjson.dumps(event)
        if lane.flushed is None:
            lane.flushed = asyncio.get_running_loop().create_future()
        fut = lane.flushed
        self._add(lane, blob, event["kind"])
        if not lane.flush_scheduled and self._full(lane):
            lane.flush_scheduled = True
            asyncio.ensure_future(self.flush_lane(lane))
        return event["id"], fut

    # -- flushing ------------------------------------------------------------------------------
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

    async def flush_lane(self, lane: _Lane, wait_for_space: bool = True) -> None:
        """Write the lane's buffers (and checkpoints) to the spool.

        Pull lane: while the spool is full the buffers are kept and this waits (or raises
        SpoolFull when ``wait_for_space`` is False). Push lane: a full spool fails the waiting
        producers' future with SpoolFull and the buffer is discarded (they were told *busy*).
        """
        async with self._locks[lane.name]:
            lane.flush_scheduled = False
            loop = asyncio.get_running_loop()
            while lane.nevents or lane.checkpoints:
                batches, cps, fut = lane.take()
                try:
                    evictions = await loop.run_in_executor(self.executor, self.spool.append, batches, cps)
                except SpoolFull as exc:
                    if lane.fail_fast:
                        if fut is not None and not fut.done():
                            fut.set_exception(exc)
                            fut.exception()  # retrieved: each waiter reads it itself
                        return
                    self._restore(lane, batches, cps)
                    if not wait_for_space:
                        raise
                    await self.wait_for_space(1.0)
                    continue
                except BaseException as exc:
                    if fut is not None and not fut.done():
                        fut.set_exception(exc)
                    if not lane.fail_fast:
                        self._restore(lane, batches, cps)
                    raise
                if fut is not None and not fut.done():
                    fut.set_result(None)
                self.on_flush(batches, evictions)
                return

    def _restore(self, lane: _Lane, batches: list[NewBatch], cps: list[Checkpoint]) -> None:
        """Put a batch that could not be written back at the head of the lane."""
        old_cps = lane.checkpoints
        lane.checkpoints = {c.source: c.position for c in cps}
        lane.checkpoints.update(old_cps)
        for b in batches:
            items = orjson.loads(b.body)
            blobs = [orjson.dumps(e) for e in items]
            lane.buffers[b.priority][:0] = blobs
            k = lane.kinds[b.priority]
            for kind, n in b.kinds.items():
                k[kind] = k.get(kind, 0) + n
            lane.nevents += len(blobs)
            lane.nbytes += sum(len(x) for x in blobs)
        if lane.first_at is None:
            lane.first_at = time.monotonic()

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
            await self.flush_lane(self.pull)

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

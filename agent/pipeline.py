"""The pipeline: enrich -> filter -> redact -> validate -> batch -> spool.

Processors are small callables ``(event) -> event``; a filter raises :class:`DropEvent`,
which only the chain's loop catches (and counts). The :class:`Batcher` collects processed
events in two lanes, ``pull`` (collectors: their emits wait while the spool is full, so the
source's data stays where it is) and ``push`` (the hook API: a full spool answers *busy*).
A flush writes a lane's oldest events as one batch per eviction class, together with the
checkpoints they lead up to, to the spool in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from agent.config import LEVELS, AgentConfig
from agent.errors import DropEvent, InvalidEvent, SpoolFull
from agent.events import KINDS, PRIORITY_AUDIT, PRIORITY_BULK, new_id, priority_of
from agent.redact import Redactor, changed_each
from agent.schema import SchemaError, validate_data, validate_event
from agent.spool import NewBatch, Spool
from agent.typing import Checkpoint, Event, Item, Processor

log = structlog.get_logger("pipeline")

#: full batches a pull lane may hold while a spool write is in progress (then its collector
#: waits), all written in the next transaction
WRITE_AHEAD = 4
#: bodies smaller than this are deflated on the event loop, larger ones in a thread
_PACK_INLINE_BYTES = 16 * 1024


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

    _TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
    _ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{7,127}")

    def __call__(self, event: Event) -> Event:
        # the envelope by hand (the same rules as the schema's, several times cheaper), then
        # the kind's data by the schema; anything unusual goes through the full check
        ts, ev_id, kind = event.get("ts"), event.get("id"), event.get("kind")
        simple = (
            len(event) == 5
            and type(ts) is str
            and type(ev_id) is str
            and kind in KINDS
            and self._TS.fullmatch(ts) is not None
            and self._ID.fullmatch(ev_id) is not None
            and type(event.get("server")) is str
            and 0 < len(event["server"]) <= 256
        )
        try:
            if simple:
                validate_data(kind, event["data"])  # type: ignore[arg-type]
            else:
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


@dataclass(frozen=True, slots=True)
class Prepared:
    """The pipeline's settings for collectors that build finished events (``emit_prepared``)."""

    server: str
    redact: Callable[[str], str]
    filter: Filter
    #: redaction of many texts at once: ``(texts joined by newlines) -> {index: redacted}`` for
    #: the texts it changes (None: ``redact`` on each)
    redact_lines: Callable[[str], dict[int, str]] | None = None
    #: the most events and bytes a segment item should hold, so that batches fill well
    segment_events: int = 250
    segment_bytes: int = 256 * 1024

    def changed_lines(self, joined: str) -> dict[int, str]:
        """``{index: redacted text}`` for the lines of ``joined`` (no line holds a newline) that
        redaction changes."""
        if self.redact_lines is not None:
            return self.redact_lines(joined)
        return changed_each(self.redact, joined)

    def accepts(self, kind: str, level: str | None = None) -> bool:
        """Whether the configured filter keeps an event of this kind (and system_log level)."""
        f = self.filter
        if kind in f.drop_kinds:
            return False
        return not (kind == "system_log" and level is not None and f._rank.get(level, 0) > f.max_rank)


@dataclass
class _Lane:
    """Events waiting to be spooled, in arrival order, with the checkpoints they lead up to.

    An item is ``(priority, kind, JSON, n)``: one event, or a segment of ``n`` events of one kind
    joined by commas (from :meth:`Batcher.emit_prepared`); segments are never split."""

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


def _to_batches(taken: list[tuple[int, str, bytes, int]]) -> list[NewBatch]:
    """One spool batch per eviction class, events in their order."""
    out = []
    for prio in (PRIORITY_AUDIT, PRIORITY_BULK):
        blobs = []
        kinds: dict[str, int] = {}
        for p, k, blob, n in taken:
            if p == prio:
                blobs.append(blob)
                kinds[k] = kinds.get(k, 0) + n
        if blobs:
            out.append(NewBatch(new_id("b"), prio, sum(kinds.values()), kinds, b"[" + b",".join(blobs) + b"]"))
    return out


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
        on_event: Callable[[str, str, str, int], None] | None = None,
        on_flush: Callable[[list[NewBatch], list[Any]], None] | None = None,
        pack_level: int | None = 1,
    ) -> None:
        self.spool = spool
        #: deflate level of spooled bodies (agent.wire.pack); None: spooled as JSON
        self.pack_level = pack_level
        self.executor = executor
        self.chain = chain
        self.max_events = max_events
        # a batch must fit in the spool with room to spare, or a full spool could never take it
        self.max_bytes = min(max_bytes, spool.max_bytes // 4)
        self.max_wait = max_wait_ms / 1000
        self.push_max_wait = min(push_max_wait_ms, max_wait_ms) / 1000
        self.on_event = on_event or (lambda kind, what, detail, n: None)
        self.on_flush = on_flush or (lambda batches, evictions: None)
        self.pull = _Lane("pull", fail_fast=False)
        self.push = _Lane("push", fail_fast=True)
        self._locks = {"pull": asyncio.Lock(), "push": asyncio.Lock()}
        self._space = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None
        self._behind: asyncio.Future[None] | None = None
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

    def _add(self, lane: _Lane, blob: bytes, kind: str, n: int = 1) -> None:
        first = lane.first_at is None
        lane.add(priority_of(kind), kind, blob, n)
        if first:
            self._arm_timer()

    def _full(self, lane: _Lane) -> bool:
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
        server, redactor, filt = "", None, None
        for proc in self._chain:
            if isinstance(proc, Enrich):
                server = proc.server
            elif isinstance(proc, Redactor):
                redactor = proc
            elif isinstance(proc, Filter):
                filt = proc
        return Prepared(server,
                        redactor.redact_text if redactor else lambda text: text,
                        filt or Filter(),
                        redactor.changed_lines if redactor else lambda joined: {},
                        max(1, self.max_events // 4), max(1, self.max_bytes // 4))

    async def emit_prepared(self, items: list[Item], checkpoint: Checkpoint | None, collector: str = "collector") -> None:
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
                items = self._checked(items, collector)
        await self._buffer(items, checkpoint, collector)

    def _checked(self, items: list[Item], collector: str) -> list[Item]:
        good: list[Item] = []
        for kind, blob, n in items:
            try:
                events = orjson.loads(b"[" + blob + b"]") if n > 1 else [orjson.loads(blob)]
                if len(events) != n:
                    raise orjson.JSONDecodeError(f"{len(events)} events in a segment of {n}", "", 0)
            except orjson.JSONDecodeError as exc:
                self._dead_letter_event({"kind": kind, "raw": blob.decode("utf-8", "replace")}, str(exc), collector)  # type: ignore[typeddict-item]
                continue
            for ev in events:
                try:
                    validate_event(ev)
                except SchemaError as exc:
                    self._dead_letter_event(ev, str(exc), collector)
                    continue
                good.append((kind, orjson.dumps(ev), 1) if n > 1 else (kind, blob, 1))
        return good

    async def _flush_behind(self, lane: _Lane) -> None:
        """Write a full pull lane while the collector goes on reading into a fresh buffer.

        At most one such write is outstanding: the lane goes on filling meanwhile, up to
        WRITE_AHEAD full batches, and then waits for it, which is the back-pressure a collector
        feels when the spool is slow or full. Writes stay in order
        (one lock), so a checkpoint never commits before the events it covers.
        """
        prev = self._behind
        if prev is not None and not prev.done():
            if lane.nevents < self.max_events * WRITE_AHEAD and lane.nbytes < self.max_bytes * WRITE_AHEAD:
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
                    except Exception as exc:  # noqa: BLE001 - a failed write (disk full, I/O
                        # error) must not end the timer: the other lane still needs it, and this
                        # one is retried (its events were kept)
                        log.error("writing to the spool failed; retrying", lane=lane.name, error=str(exc))
                        await asyncio.sleep(1.0)

    async def flush_lane(self, lane: _Lane, wait_for_space: bool = True, drain: bool = False) -> None:
        """Write the lane's buffers (and checkpoints) to the spool.

        Pull lane: one batch, or up to WRITE_AHEAD full ones in one transaction (``drain``: all
        of them); while the spool is full the events are
        kept and this waits (or raises SpoolFull when ``wait_for_space`` is False). Push lane:
        everything; a full spool fails the producers' future with SpoolFull and the events are
        discarded (the producers were told *busy* and still hold them).
        """
        async with self._locks[lane.name]:
            lane.flush_scheduled = False
            loop = asyncio.get_running_loop()
            one_batch = False  # after a full spool: one batch per write, the most that may fit
            while lane.nevents or lane.checkpoints:
                if lane.fail_fast:
                    taken, cps, fut = lane.take()
                    batches = _to_batches(taken)
                else:
                    # a pull lane may have grown past one batch while a write was waiting: up
                    # to WRITE_AHEAD full batches go in one transaction
                    taken, cps, fut = lane.take(self.max_events, self.max_bytes)
                    batches = _to_batches(taken)
                    while not one_batch and not cps and len(batches) < WRITE_AHEAD and self._full(lane):
                        more, cps, _ = lane.take(self.max_events, self.max_bytes)
                        taken += more
                        batches += _to_batches(more)
                if self.pack_level is not None:
                    batches = await self._packed(batches)
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
                    fut.set_result(None)
                self.on_flush(batches, evictions)
                if lane.fail_fast or (not drain and not self._full(lane)):
                    return

    async def _packed(self, batches: list[NewBatch]) -> list[NewBatch]:
        """The batches with deflated bodies; large ones are compressed in a worker thread (zlib
        lets go of the GIL), beside the spool's own thread."""
        level = self.pack_level or 1
        if sum(len(b.body) for b in batches) < _PACK_INLINE_BYTES:
            return [b.packed(level) for b in batches]
        return await asyncio.get_running_loop().run_in_executor(None, lambda: [b.packed(level) for b in batches])

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

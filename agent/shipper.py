"""The shipper: reads spooled batches in order, sends them through the sink, deletes them on ack.

Retryable failures are retried forever with exponential backoff and jitter (tenacity),
honouring Retry-After; 401/403 pause shipping (the data stays, retried slowly); 413 splits
the batch; other refusals move it to the dead-letter table with the reason (invariant 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import orjson
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
    wait_exponential_jitter,
)

from agent import wire
from agent.config import SinkConfig
from agent.errors import AuthError, Rejected, RetryableShipError, ShipError, TooLarge
from agent.metrics import AgentMetrics
from agent.sinks import Sink
from agent.spool import NewBatch, Spool, SpoolBatch

log = structlog.get_logger("shipper")

#: spooled batches read ahead of the ones in flight, so that a send never waits for the spool's
#: thread (busy with a write) to hand over the next batch; they are small (deflated)
PREFETCH = 8


def _events_json(body: NewBatch | SpoolBatch) -> bytes:
    """A batch's JSON events; a stored body that cannot be read is refused (dead-lettered with
    the reason) rather than retried for ever in front of every batch after it."""
    try:
        return body.json()
    except (zlib.error, ValueError) as exc:
        raise Rejected(f"the spooled body cannot be read ({body.codec}): {exc}") from None


class Shipper:
    """Moves batches from the spool to the sink, in spool order."""

    def __init__(
        self,
        spool: Spool,
        executor: Executor,
        sink: Sink,
        agent_info: dict[str, str],
        cfg: SinkConfig,
        metrics: AgentMetrics,
        on_space: Callable[[], None] = lambda: None,
    ) -> None:
        self.spool = spool
        self.executor = executor
        self.sink = sink
        self.cfg = cfg
        self.metrics = metrics
        self.on_space = on_space
        self._agent_json = orjson.dumps(agent_info)
        self._wake = asyncio.Event()
        self._settling: set[asyncio.Future[None]] = set()
        self._idle = asyncio.Event()
        self.paused_reason: str | None = None
        self.last_error: str | None = None
        self.last_success: float | None = None
        self.permanent_failures: list[str] = []
        self._backoff = wait_exponential_jitter(
            multiplier=cfg.backoff_initial_s, max=cfg.backoff_max_s, jitter=cfg.backoff_initial_s
        )

    # -- wiring -------------------------------------------------------------------------------
    def wake(self) -> None:
        """New batches were spooled."""
        self._wake.set()

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def payload(self, batch_id: str, body: bytes) -> bytes:
        """The wire-protocol document for a batch's JSON events; ``sent_at`` is fresh for every attempt."""
        return wire.document(self._agent_json, batch_id, body)

    # -- the loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Dispatch batches to ``in_flight`` workers, oldest first, until cancelled."""
        queue: asyncio.Queue[tuple[SpoolBatch, asyncio.Future[bytes] | None]] = asyncio.Queue(
            maxsize=self.cfg.in_flight
        )
        in_progress: set[int] = set()
        workers = [asyncio.create_task(self._worker(queue, in_progress)) for _ in range(self.cfg.in_flight)]
        after = 0
        try:
            while True:
                batches = await self._db(self.spool.pending, self.cfg.in_flight + PREFETCH, after)
                if not batches:
                    if not in_progress and queue.empty():
                        after = 0  # start over: catches requeued dead letters and anything skipped
                        await self._db(self.spool.resync)
                        more = await self._db(self.spool.pending, 1, 0)
                        if not more:
                            self._idle.set()
                    self._wake.clear()
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await self._wake.wait()
                    continue
                self._idle.clear()
                for b in batches:
                    after = max(after, b.seq)
                    if b.seq in in_progress:
                        continue
                    in_progress.add(b.seq)
                    # the request body is made (gzip, in a thread) while the batch before it is
                    # still in flight; the send itself waits its turn, so order is kept
                    await queue.put((b, self._prepare(b)))
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            # acknowledgements already under way are finished, so that a clean stop does not
            # leave stored batches to be sent again
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def drained(self) -> None:
        """Wait until the spool has nothing left to ship."""
        self.wake()
        await self._idle.wait()

    def _prepare(self, batch: SpoolBatch) -> asyncio.Future[bytes] | None:
        """The request body of a JSON-spooled batch, gzipped in a thread while the batch before
        it is in flight (a deflate-spooled one needs no compression: see :meth:`_attempt`)."""
        encode = getattr(self.sink, "encode", None)
        if encode is None or (batch.codec == wire.CODEC_DEFLATE and self._gzip_level() is not None):
            return None
        payload = self.payload(batch.batch_id, batch.json())
        return asyncio.get_running_loop().run_in_executor(None, encode, payload)

    def _gzip_level(self) -> int | None:
        return getattr(self.sink, "gzip_level", None)

    async def _attempt(self, batch_id: str, body: NewBatch | SpoolBatch, n_events: int) -> None:
        """One send of a batch: a deflate-spooled body goes out as gzip without being inflated."""
        level = self._gzip_level()
        if body.codec == wire.CODEC_DEFLATE and level is not None:
            encoded = wire.gzip_document(self._agent_json, batch_id, body.packed_body(), level)
            await self.sink.send_encoded(batch_id, encoded, n_events)  # type: ignore[attr-defined]
        else:
            await self.sink.send(batch_id, self.payload(batch_id, _events_json(body)), n_events)

    async def _worker(
        self, queue: asyncio.Queue[tuple[SpoolBatch, asyncio.Future[bytes] | None]], in_progress: set[int]
    ) -> None:
        while True:
            batch, encoded = await queue.get()
            delay = 1.0
            while True:
                try:
                    await self.ship(batch, encoded, on_done=lambda b=batch: in_progress.discard(b.seq))
                    break
                except asyncio.CancelledError:
                    in_progress.discard(batch.seq)
                    raise
                except Exception:  # noqa: BLE001 - a bug must not stop shipping for good
                    log.exception("shipping a batch failed unexpectedly; trying it again", batch_id=batch.batch_id)
                    self.metrics.retries.labels("internal_error").inc()
                    encoded = None
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.cfg.backoff_max_s)

    # -- one batch -----------------------------------------------------------------------------
    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, AuthError):
            return self.cfg.auth_pause_s
        base = self._backoff(state)
        if isinstance(exc, ShipError) and exc.retry_after is not None:
            # never sooner than the backend asked, nor sooner than our own backoff: a backend
            # answering "Retry-After: 0" to everything must not get a tight loop
            return max(exc.retry_after, base)
        return base

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = "unknown"
        if isinstance(exc, AuthError):
            reason = "auth"
            if self.paused_reason is None:
                log.error(
                    "backend refuses the credentials: shipping paused, data kept",
                    reason=str(exc),
                    retry_in_s=self.cfg.auth_pause_s,
                )
            self.paused_reason = str(exc)
            self.metrics.shipping_paused.set(1)
        elif isinstance(exc, ShipError):
            reason = "no_answer" if exc.status is None else str(exc.status)
            log.warning("send failed, will retry", reason=str(exc), attempt=state.attempt_number)
        self.last_error = str(exc)
        self.metrics.retries.labels(reason).inc()

    async def _send(
        self,
        batch_id: str,
        body: NewBatch | SpoolBatch,
        n_events: int,
        seq: int | None = None,
        encoded: asyncio.Future[bytes] | None = None,
    ) -> bool:
        """Send until stored; False when the batch was evicted from the spool while being retried.

        ``encoded`` is the request body made ahead of time for the first attempt; a retry makes
        a fresh one (its ``sent_at`` is the time of that attempt)."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((RetryableShipError, AuthError)),
            wait=self._wait,
            stop=stop_never,
            before_sleep=self._before_sleep,
            reraise=True,
        ):
            with attempt:
                if seq is not None and attempt.retry_state.attempt_number > 1:
                    if not await self._db(self.spool.exists, seq):
                        return False
                if encoded is not None and attempt.retry_state.attempt_number == 1:
                    await self.sink.send_encoded(batch_id, await encoded, n_events)  # type: ignore[attr-defined]
                else:
                    await self._attempt(batch_id, body, n_events)
        return True

    async def ship(
        self,
        batch: SpoolBatch,
        encoded: asyncio.Future[bytes] | None = None,
        on_done: Callable[[], None] = lambda: None,
    ) -> None:
        """Send one batch until it is stored, split or dead-lettered.

        Returns once the backend has answered; removing the batch from the spool (and
        ``on_done``) follows in the background, so the next batch goes out meanwhile.
        """
        started = time.monotonic()
        dead: list[tuple[NewBatch, str, int | None]] = []
        ok = await self._ship_part(batch.batch_id, batch, batch.n_events, batch.priority, dead, batch.seq, encoded)
        task = asyncio.ensure_future(self._settle(batch, dead, ok, started))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        task.add_done_callback(lambda _: on_done())

    async def _settle(
        self, batch: SpoolBatch, dead: list[tuple[NewBatch, str, int | None]], ok: bool, started: float
    ) -> None:
        if not ok:
            log.info("batch was evicted while being retried; dropped from the shipper", batch_id=batch.batch_id)
            self.on_space()
            return
        if dead and len(dead) == 1 and dead[0][0].batch_id == batch.batch_id:
            _, reason, status = dead[0]
            await self._db(self.spool.dead_letter, batch.seq, reason, status)
            self._count_kinds(batch.kinds, "dead_lettered")
        else:
            for part, reason, status in dead:
                await self._db(self.spool.add_dead_letter, part, reason, status)
                self._count_kinds(part.kinds, "dead_lettered")
            await self._db(self.spool.ack, batch.seq)
            shipped = dict(batch.kinds)
            for part, _, _ in dead:
                for k, n in part.kinds.items():
                    shipped[k] = shipped.get(k, 0) - n
            self._count_kinds(shipped, "shipped")
            self.metrics.ship_latency.observe(time.monotonic() - started)
        self.on_space()

    async def _ship_part(
        self,
        batch_id: str,
        body: NewBatch | SpoolBatch,
        n_events: int,
        priority: int,
        dead: list[tuple[NewBatch, str, int | None]],
        seq: int | None = None,
        encoded: asyncio.Future[bytes] | None = None,
    ) -> bool:
        try:
            if not await self._send(batch_id, body, n_events, seq, encoded):
                return False
        except TooLarge as exc:
            try:
                events = orjson.loads(_events_json(body))
            except Rejected as bad:
                dead.append((self._as_stored(batch_id, body, priority, n_events), str(bad), exc.status))
                return True
            if len(events) <= 1:
                dead.append((self._part(batch_id, events, priority), f"too large even alone: {exc}", exc.status))
                log.error("event too large for the backend, dead-lettered", batch_id=batch_id)
                return True
            half = len(events) // 2
            log.warning("backend says batch too large, splitting", batch_id=batch_id, events=len(events))
            for i, chunk in enumerate((events[:half], events[half:]), 1):
                part = self._part(f"{batch_id}.{i}", chunk, priority)
                await self._ship_part(part.batch_id, part, part.n_events, priority, dead)
            return True
        except Rejected as exc:
            log.error("backend refused batch, moved to dead letters", batch_id=batch_id, reason=str(exc))
            if len(self.permanent_failures) < 100:  # the first ones: for run --once's report
                self.permanent_failures.append(f"batch {batch_id}: {exc}")
            try:
                part = self._part(batch_id, orjson.loads(_events_json(body)), priority)
            except (Rejected, orjson.JSONDecodeError):  # dead-lettered as it is stored
                part = self._as_stored(batch_id, body, priority, n_events)
            dead.append((part, str(exc), exc.status))
            return True
        if self.paused_reason is not None:
            log.info("backend accepts the credentials again: shipping resumed")
            self.paused_reason = None
            self.metrics.shipping_paused.set(0)
        self.last_success = time.time()
        self.last_error = None
        self.metrics.last_ship.set(self.last_success)
        return True

    @staticmethod
    def _as_stored(batch_id: str, body: NewBatch | SpoolBatch, priority: int, n_events: int) -> NewBatch:
        return NewBatch(batch_id, priority, n_events, dict(body.kinds), body.body, body.codec, body.raw_bytes, body.crc)

    @staticmethod
    def _part(batch_id: str, events: list[dict[str, Any]], priority: int) -> NewBatch:
        kinds: dict[str, int] = {}
        for e in events:
            k = e.get("kind", "unknown")
            kinds[k] = kinds.get(k, 0) + 1
        return NewBatch(batch_id, priority, len(events), kinds, orjson.dumps(events))

    def _count_kinds(self, kinds: dict[str, int], outcome: str) -> None:
        for k, n in kinds.items():
            if n > 0:
                self.metrics.events.labels(k, outcome, "shipper").inc(n)

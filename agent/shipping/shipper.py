"""The shipper: reads spooled batches in order, sends them through the sink, deletes them on ack.

Every send's :class:`~agent.shipping.retry.SendOutcome` goes through ``retry.decide()``, and
the resulting ``RetryAction`` is acted on in one place (``Shipper._act``): retryable failures
are retried forever with exponential backoff and jitter (tenacity's schedule), honouring
Retry-After; 401/403 pause shipping (the data stays, retried slowly); 413 splits the batch;
other refusals move it to the dead-letter table with the reason (invariant 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import zlib
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

import orjson
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_result, stop_never, wait_exponential_jitter

from agent import wire
from agent.config import SinkConfig
from agent.metrics import AgentMetrics
from agent.shipping.parts import Part, Refused, as_stored, events_part, part_batch, partial_refusal
from agent.shipping.retry import Action, RetryAction, decide
from agent.shipping.sinks import Sink
from agent.spool import Spool, SpoolBatch

log = structlog.get_logger("shipper")

#: attempts at a batch whose shipping raises (a bug, MemoryError) before it is dead-lettered
MEMORY_ERROR_ATTEMPTS, INTERNAL_ERROR_ATTEMPTS = 3, 10

#: spooled batches read ahead of the ones in flight, so that a send never waits for the spool's
#: thread (busy with a write) to hand over the next batch; they are small (deflated)
PREFETCH = 8


def _needs_another_attempt(action: RetryAction) -> bool:
    return action.action in (Action.RETRY, Action.PAUSE)


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
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.spool = spool
        self.executor = executor
        self.sink = sink
        self.cfg = cfg
        self.metrics = metrics
        self.on_space = on_space
        self._sleep = sleep  # how the backoff waits (a test records the waits instead)
        self._agent_json = orjson.dumps(agent_info)
        self._wake = asyncio.Event()
        self._settling: set[asyncio.Future[None]] = set()
        self._idle = asyncio.Event()
        self.paused_reason: str | None = None
        self.last_error: str | None = None
        self.last_success: float | None = None
        self.permanent_failures: list[str] = []
        #: when the loop or an attempt last moved (monotonic): health and the watchdog read it
        self.last_progress = time.monotonic()
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
        queue: asyncio.Queue[tuple[SpoolBatch, asyncio.Future[bytes] | None, int]] = asyncio.Queue(
            maxsize=self.cfg.in_flight
        )
        in_progress: set[int] = set()
        workers = [asyncio.create_task(self._worker(queue, in_progress)) for _ in range(self.cfg.in_flight)]
        after = 0
        try:
            while True:
                self.last_progress = time.monotonic()
                # read before the batches: an eviction after it makes the first attempt ask the
                # spool whether a batch read ahead is still there
                evictions = self.spool.evictions
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
                    await queue.put((b, self._prepare(b), evictions))
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            # acknowledgements already under way are finished, so that a clean stop does not
            # leave stored batches to be sent again
            await asyncio.gather(*self._settling, return_exceptions=True)

    def stalled_for(self) -> float:
        """Seconds since the shipper last moved beyond what its longest legitimate wait explains (a
        backoff, the credentials pause, a request's timeout); 0 while it is moving."""
        longest = max(self.cfg.backoff_max_s, self.cfg.auth_pause_s) + self.cfg.timeout_s + 30.0
        return max(0.0, time.monotonic() - self.last_progress - longest)

    async def drained(self) -> None:
        """Wait until the spool has nothing left to ship."""
        self.wake()
        await self._idle.wait()

    def _prepare(self, batch: SpoolBatch) -> asyncio.Future[bytes] | None:
        """The request body of a batch, made in a thread while the batch before it is in flight
        (None: a deflate-spooled batch for a gzip sink needs no work, see :meth:`_attempt`; or a
        body that cannot be read, which the attempt reports)."""
        if batch.codec == wire.CODEC_DEFLATE and self.sink.gzip_level is not None:
            return None
        try:
            payload = self.payload(batch.batch_id, batch.json())
        except (zlib.error, ValueError):
            return None
        return asyncio.get_running_loop().run_in_executor(None, self.sink.encode, payload, batch.created)

    async def _attempt(self, part: Part, encoded: asyncio.Future[bytes] | None) -> RetryAction:
        """One send of a batch, and the decision on its outcome. A deflate-spooled body goes to a
        gzip sink without being inflated; ``encoded`` is a body made ahead of time."""
        batch_id, body, n_events = part.batch_id, part.body, part.n_events
        if encoded is not None:
            return decide(await self.sink.send_encoded(batch_id, await encoded, n_events))
        level = self.sink.gzip_level
        if body.codec == wire.CODEC_DEFLATE and level is not None:
            document = wire.gzip_document(self._agent_json, batch_id, body.packed_body(), level)
            return decide(await self.sink.send_encoded(batch_id, document, n_events))
        try:
            events = body.json()
        except (zlib.error, ValueError) as exc:
            # refused rather than retried for ever in front of every batch after it
            return RetryAction(Action.DEAD_LETTER, f"the spooled body cannot be read ({body.codec}): {exc}")
        return decide(await self.sink.send(batch_id, self.payload(batch_id, events), n_events, part.spooled_at))

    async def _worker(
        self, queue: asyncio.Queue[tuple[SpoolBatch, asyncio.Future[bytes] | None, int]], in_progress: set[int]
    ) -> None:
        while True:
            batch, encoded, evictions = await queue.get()
            delay = 1.0
            failures = 0
            while True:
                try:
                    await self.ship(batch, encoded, on_done=functools.partial(in_progress.discard, batch.seq),
                                    read_at_evictions=evictions)
                    break
                except asyncio.CancelledError:
                    in_progress.discard(batch.seq)
                    raise
                except Exception as exc:  # noqa: BLE001 - a bug must not stop shipping for good
                    failures += 1
                    encoded = None
                    self.metrics.retries.labels("internal_error").inc()
                    if failures >= (MEMORY_ERROR_ATTEMPTS if isinstance(exc, MemoryError) else INTERNAL_ERROR_ATTEMPTS):
                        # a batch that keeps failing must not block every batch behind it: it is
                        # kept among the dead letters (spool requeue-dead) and the queue moves on
                        reason = f"shipping failed {failures} times: {type(exc).__name__}: {exc}"[:1000]
                        log.error("a batch cannot be shipped; moved to dead letters", batch_id=batch.batch_id,
                                  reason=reason)
                        await self._db(self.spool.dead_letter, batch.seq, reason, None)
                        self._count_kinds(batch.kinds, "dead_lettered")
                        in_progress.discard(batch.seq)
                        self.on_space()
                        break
                    if isinstance(exc, MemoryError):
                        log.error("out of memory shipping a batch; trying it again", batch_id=batch.batch_id)
                    else:
                        log.exception("shipping a batch failed unexpectedly; trying it again", batch_id=batch.batch_id)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.cfg.backoff_max_s)

    # -- one batch -----------------------------------------------------------------------------
    def _wait(self, state: RetryCallState) -> float:
        """The backoff before the next attempt (tenacity's schedule), given the last decision."""
        action: RetryAction = state.outcome.result() if state.outcome else RetryAction(Action.RETRY)
        if action.action is Action.PAUSE:
            return self.cfg.auth_pause_s
        base = self._backoff(state)
        if action.retry_after is not None:
            # never sooner than the backend asked, nor sooner than our own backoff: a backend
            # answering "Retry-After: 0" to everything must not get a tight loop
            return max(action.retry_after, base)
        return base

    async def _deliver(self, part: Part, dead: list[Refused], seq: int | None = None,
                       encoded: asyncio.Future[bytes] | None = None, read_at_evictions: int | None = None) -> bool:
        """Send a batch (or a part of one) until the decision is final, acting on each decision;
        False when the batch was evicted from the spool while it waited or was being retried.

        Before a retry, and before the first attempt when the spool has evicted anything since the
        batch was read (``read_at_evictions``), the spool is asked whether the batch is still
        there: an evicted batch counts as evicted and must not be delivered as well.

        ``encoded`` is the request body made ahead of time for the first attempt; a retry makes
        a fresh one (its ``sent_at`` is the time of that attempt)."""
        async for attempt in AsyncRetrying(
            retry=retry_if_result(_needs_another_attempt), wait=self._wait, stop=stop_never, sleep=self._sleep,
            reraise=True,
        ):
            n = attempt.retry_state.attempt_number
            self.last_progress = time.monotonic()
            evicted_since = read_at_evictions is not None and self.spool.evictions != read_at_evictions
            if seq is not None and (n > 1 or evicted_since) and not await self._db(self.spool.exists, seq):
                return False
            if self.paused_reason is not None:
                self.sink.reload_token()  # the token may have been put right during the pause
            with attempt:
                action = await self._attempt(part, encoded if n == 1 else None)
            if attempt.retry_state.outcome is not None and not attempt.retry_state.outcome.failed:
                attempt.retry_state.set_result(action)
                await self._act(action, part, dead, n)
        return True

    async def _act(self, action: RetryAction, part: Part, dead: list[Refused], attempt: int) -> None:
        """The one place a decision is acted on (the wait before a retry is :meth:`_wait`'s)."""
        match action.action:
            case Action.SUCCESS:
                self._stored()
            case Action.PARTIAL:
                self._stored()
                log.error("backend stored the batch but refused part of it: to the dead letters",
                          batch_id=part.batch_id, reason=action.reason)
                self._note_permanent(part.batch_id, action.reason)
                dead.append(partial_refusal(part, action))
            case Action.RETRY:
                log.warning("send failed, will retry", reason=action.reason, attempt=attempt)
                self.last_error = action.reason
                self.metrics.retries.labels("no_answer" if action.status is None else str(action.status)).inc()
            case Action.PAUSE:
                if self.paused_reason is None:
                    log.error("backend refuses the credentials: shipping paused, data kept",
                              reason=action.reason, retry_in_s=self.cfg.auth_pause_s)
                self.paused_reason = self.last_error = action.reason
                self.metrics.shipping_paused.set(1)
                self.metrics.retries.labels("auth").inc()
            case Action.SPLIT:
                await self._split(part, action, dead)
            case Action.DEAD_LETTER:
                log.error("backend refused batch, moved to dead letters", batch_id=part.batch_id, reason=action.reason)
                self._note_permanent(part.batch_id, action.reason)
                dead.append(Refused(events_part(part), action.reason, action.status))

    async def _split(self, part: Part, action: RetryAction, dead: list[Refused]) -> None:
        """413: halve the batch and deliver each half, until an event is too large alone."""
        try:
            events = orjson.loads(part.body.json())
        except (zlib.error, ValueError) as bad:
            if "memory" in str(bad).lower():  # orjson's own out-of-memory: retried, then dead-lettered
                raise MemoryError(f"splitting {part.batch_id}: {bad}") from None
            dead.append(Refused(as_stored(part), f"the spooled body cannot be read: {bad}", action.status))
            return
        if len(events) <= 1:
            dead.append(Refused(part_batch(part.batch_id, events, part.priority),
                                 f"too large even alone: {action.reason}", action.status))
            log.error("event too large for the backend, dead-lettered", batch_id=part.batch_id)
            return
        half = len(events) // 2
        log.warning("backend says batch too large, splitting", batch_id=part.batch_id, events=len(events))
        # both halves as JSON, and the parsed events let go, before either is sent: what a split
        # holds while its halves are delivered (and split again) is one batch's bytes, not its objects
        halves = [part_batch(f"{part.batch_id}.{i}", chunk, part.priority)
                  for i, chunk in enumerate((events[:half], events[half:]), 1)]
        del events
        while halves:
            body = halves.pop(0)
            await self._deliver(Part(body.batch_id, body, body.n_events, part.priority, part.spooled_at), dead)

    def _stored(self) -> None:
        if self.paused_reason is not None:
            log.info("backend accepts the credentials again: shipping resumed")
            self.paused_reason = None
            self.metrics.shipping_paused.set(0)
        self.last_success = time.time()
        self.last_error = None
        self.metrics.last_ship.set(self.last_success)

    def _note_permanent(self, batch_id: str, reason: str) -> None:
        if len(self.permanent_failures) < 100:  # the first ones: for run --once's report
            self.permanent_failures.append(f"batch {batch_id}: {reason}")

    async def ship(
        self,
        batch: SpoolBatch,
        encoded: asyncio.Future[bytes] | None = None,
        on_done: Callable[[], None] = lambda: None,
        read_at_evictions: int | None = None,
    ) -> None:
        """Send one batch until it is stored, split or dead-lettered.

        Returns once the backend has answered; removing the batch from the spool (and
        ``on_done``) follows in the background, so the next batch goes out meanwhile.
        """
        started = time.monotonic()
        dead: list[Refused] = []
        part = Part(batch.batch_id, batch, batch.n_events, batch.priority, batch.created)
        ok = await self._deliver(part, dead, batch.seq, encoded, read_at_evictions)
        task = asyncio.ensure_future(self._settle(batch, dead, ok, started))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        task.add_done_callback(lambda _: on_done())

    async def _settle(self, batch: SpoolBatch, dead: list[Refused], ok: bool, started: float) -> None:
        if not ok:
            log.info("batch was evicted while being retried; dropped from the shipper", batch_id=batch.batch_id)
            self.on_space()
            return
        if len(dead) == 1 and not dead[0].copy and dead[0].part.batch_id == batch.batch_id:
            await self._db(self.spool.dead_letter, batch.seq, dead[0].reason, dead[0].status)
            self._count_kinds(batch.kinds, "dead_lettered")
        else:
            shipped = dict(batch.kinds)
            for r in dead:
                await self._db(self.spool.add_dead_letter, r.part, r.reason, r.status)
                if not r.copy:  # a copy's events were stored as well
                    self._count_kinds(r.part.kinds, "dead_lettered")
                    for k, n in r.part.kinds.items():
                        shipped[k] = shipped.get(k, 0) - n
            await self._db(self.spool.ack, batch.seq)
            self._count_kinds(shipped, "shipped")
            self.metrics.ship_latency.observe(time.monotonic() - started)
        self.on_space()

    def _count_kinds(self, kinds: dict[str, int], outcome: str) -> None:
        for k, n in kinds.items():
            if n > 0:
                self.metrics.events.labels(k, outcome, "shipper").inc(n)

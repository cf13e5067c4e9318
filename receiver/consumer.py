"""``--consume nats://…``: read the agents' JetStream stream into the store, ack only after commit.

Each message is one event as JSON (subject ``alpacon.<server>.<kind>``, header
``Nats-Msg-Id: <event id>``). Every receiver started with the same consumer name pulls from one
durable pull consumer, so the stream's messages are spread over them; a message is acknowledged
only after the transaction holding its event has committed. A receiver killed before acking
leaves its messages to be redelivered (after ``ack_wait``) to whichever receiver pulls next, and
a redelivered event is a duplicate the store skips by id. A message that is not a valid event is
terminated (never redelivered) and counted, so one bad producer cannot stall the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import nats
import orjson
import structlog
from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import NotFoundError

from agent.schema import SchemaError
from receiver.errors import ReceiverError, StoreError
from receiver.store import EventStore
from receiver.validation import check_event

log = structlog.get_logger("receiver")

DEFAULT_STREAM = "ALPACON"
DEFAULT_SUBJECTS = "alpacon.>"
DEFAULT_CONSUMER = "alpacon-receiver"


class ConsumeError(ReceiverError):
    """The stream cannot be reached or its consumer cannot be made."""


@dataclass(frozen=True, slots=True)
class ConsumeSettings:
    """Where to consume from and how much to hold unacknowledged."""

    url: str
    stream: str = DEFAULT_STREAM
    subjects: str = DEFAULT_SUBJECTS
    consumer: str = DEFAULT_CONSUMER
    batch: int = 500
    ack_wait_s: float = 30.0
    max_ack_pending: int = 20_000


@dataclass
class ConsumeStats:
    """Counters of the consumer, shown under ``consumer`` in ``/api/v1/stats``."""

    messages: int = 0
    stored: int = 0
    duplicates: int = 0
    redelivered: int = 0
    rejected: int = 0
    store_failures: int = 0
    #: fetches that failed in an unexpected way (acks lost with the connection …)
    failures: int = 0
    last_error: str | None = None
    rejected_reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages, "stored": self.stored, "duplicates": self.duplicates,
            "redelivered": self.redelivered, "rejected": self.rejected, "store_failures": self.store_failures,
            "failures": self.failures,
            "last_error": self.last_error, "rejected_reasons": dict(self.rejected_reasons),
        }


def parse_message(data: bytes) -> dict[str, Any]:
    """The event a message carries; :class:`SchemaError` naming what is wrong otherwise."""
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SchemaError(f"message is not valid JSON: {exc}") from None
    check_event(event)
    return event


class JetStreamConsumer:
    """One receiver's share of the durable pull consumer, writing into ``store``."""

    def __init__(self, settings: ConsumeSettings, store: EventStore) -> None:
        self.settings = settings
        self.store = store
        self.stats = ConsumeStats()
        self._nc: Any = None
        self._sub: Any = None

    async def connect(self) -> None:
        """Connect, add the stream if it does not exist yet, bind to (or create) the durable consumer."""
        s = self.settings
        try:
            # a few tries at start (a wrong URL is an error), reconnecting for ever once connected
            self._nc = await nats.connect(s.url, connect_timeout=5, max_reconnect_attempts=2,
                                          reconnect_time_wait=0.5, name=s.consumer)
            self._nc.options["max_reconnect_attempts"] = -1
            js = self._nc.jetstream()
            try:
                await js.stream_info(s.stream)
            except NotFoundError:
                await js.add_stream(name=s.stream, subjects=[s.subjects])
            config = api.ConsumerConfig(
                durable_name=s.consumer, ack_policy=api.AckPolicy.EXPLICIT, ack_wait=s.ack_wait_s,
                max_ack_pending=s.max_ack_pending, filter_subject=s.subjects,
            )
            self._sub = await js.pull_subscribe(s.subjects, durable=s.consumer, stream=s.stream, config=config)
        except (OSError, nats.errors.Error) as exc:
            await self.close()
            raise ConsumeError(f"--consume {s.url}: {type(exc).__name__}: {exc}") from exc
        log.info("consuming", stream=s.stream, consumer=s.consumer, subjects=s.subjects)

    async def close(self) -> None:
        """Drop the connection (unacked messages go back to the stream after ``ack_wait``)."""
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None

    async def run(self) -> None:
        """Pull, store and ack until cancelled."""
        while True:
            try:
                msgs = await self._sub.fetch(self.settings.batch, timeout=1)
            except nats.errors.TimeoutError:
                continue
            except nats.errors.Error as exc:
                self.stats.last_error = str(exc)
                log.warning("fetch failed", error=str(exc))
                await asyncio.sleep(0.5)
                continue
            try:
                await self.handle(msgs)
            except Exception as exc:  # noqa: BLE001 - the loop must outlive one bad fetch; unacked ones come back
                self.stats.failures += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.error("consuming failed; unacked messages will be redelivered", error=self.stats.last_error)
                await asyncio.sleep(0.5)

    async def handle(self, msgs: list[Msg]) -> None:
        """Store the events of one fetch in one transaction, then ack them; terminate the invalid."""
        good: list[Msg] = []
        events: list[dict[str, Any]] = []
        for msg in msgs:
            self.stats.messages += 1
            with contextlib.suppress(Exception):
                if msg.metadata.num_delivered > 1:
                    self.stats.redelivered += 1
            try:
                events.append(parse_message(msg.data))
            except SchemaError as exc:
                reason = str(exc)[:200]
                self.stats.rejected += 1
                key = reason.split(":", 1)[0]
                self.stats.rejected_reasons[key] = self.stats.rejected_reasons.get(key, 0) + 1
                log.warning("message rejected", subject=msg.subject[:200], reason=reason)
                await msg.term()
                continue
            good.append(msg)
        if not events:
            return
        first = good[0].metadata.sequence.stream
        batch = {
            "batch_id": f"js-{self.settings.stream}-{first}",
            "agent": {"id": f"jetstream:{self.settings.consumer}", "server": "-"},
            "events": events,
        }
        try:
            result = await self.store.store_batch(batch, None)
        except StoreError as exc:
            self.stats.store_failures += 1
            self.stats.last_error = str(exc)
            log.error("store failed; messages left for redelivery", error=str(exc), messages=len(good))
            await asyncio.gather(*(m.nak(delay=1.0) for m in good), return_exceptions=True)
            await asyncio.sleep(0.5)
            return
        self.stats.stored += result.stored
        self.stats.duplicates += result.duplicates
        await asyncio.gather(*(m.ack() for m in good))

"""What the receiver's handlers share: the application state, its keys and the JSON answers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from receiver.consumer import JetStreamConsumer
from receiver.count_sink import CountSink
from receiver.faults import FaultInjector
from receiver.store import EventStore

INGEST_PATH = "/api/v1/agent/events"
API = "/api/v1"


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """``body`` as an ``application/json`` answer."""
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def error_response(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    """``{"error": reason}`` with ``status``."""
    return json_response({"error": reason}, status=status, headers=headers)


@dataclass
class ReceiverState:
    """Everything the handlers share: auth, store or counter, faults and counters."""

    token: str | None
    mode: str
    store: EventStore | None
    counter: CountSink | None
    faults: FaultInjector
    consumer: JetStreamConsumer | None = None
    requests_by_status: dict[str, int] = field(default_factory=dict)
    batches_accepted: int = 0
    events_received: int = 0
    bytes_in: int = 0
    bytes_decompressed: int = 0
    first_accept: float | None = None
    last_accept: float | None = None
    events_accepted: int = 0
    started: float = field(default_factory=time.monotonic)

    def count_status(self, status: int | str) -> None:
        key = str(status)
        self.requests_by_status[key] = self.requests_by_status.get(key, 0) + 1


STATE: web.AppKey[ReceiverState] = web.AppKey("receiver_state", ReceiverState)
DROPPED: web.RequestKey[bool] = web.RequestKey("receiver_dropped", bool)

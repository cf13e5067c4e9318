"""A backend on 127.0.0.1 that answers from a script, for driving the shipper through a real HttpSink.

It runs in the test's own event loop (aiohttp.web), records every request it saw (the decoded
wire document, headers, arrival time) and answers each with the next scripted answer; when the
script is used up it stores everything (200).
"""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from agent.config import SinkConfig
from agent.events import PRIORITY_AUDIT
from agent.metrics import AgentMetrics
from agent.shipping.shipper import Shipper
from agent.shipping.sinks.http import HttpSink
from agent.spool import NewBatch, Spool

#: an answer: a status and headers, or a function of the decoded document (None: unreadable) giving one
Answer = tuple[int, dict[str, str]] | Callable[[dict[str, Any] | None, web.Request], tuple[int, dict[str, str]]]


@dataclass
class Seen:
    """One request as the backend received it."""

    doc: dict[str, Any] | None
    headers: dict[str, str]
    at: float
    status: int


@dataclass
class ScriptedBackend:
    answers: list[Answer] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        doc: dict[str, Any] | None
        try:
            raw = await request.read()  # aiohttp inflates a gzip body itself
            doc = orjson.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
        except (RequestPayloadError, OSError, EOFError, zlib.error, orjson.JSONDecodeError):
            doc = None
        answer: Answer = self.answers.pop(0) if self.answers else (200 if doc is not None else 400, {})
        status, headers = answer(doc, request) if callable(answer) else answer
        self.seen.append(Seen(doc, dict(request.headers), time.monotonic(), status))
        return web.Response(status=status, headers=headers, text="scripted answer")

    def stored_ids(self) -> list[str]:
        """Event ids of the requests answered 2xx, in the order they arrived."""
        return [e["id"] for s in self.seen if 200 <= s.status < 300 and s.doc for e in s.doc["events"]]

    async def start(self, port: int = 0) -> None:
        """Listen on 127.0.0.1 (``port`` 0: any free one)."""
        app = web.Application()
        app.router.add_post("/events", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        host, bound = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{bound}/events"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ScriptedBackend:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def spool_with(path: Path, n: int, events_per_batch: int = 1, corrupt: int | None = None,
               packed: bool = True) -> Spool:
    """A spool holding ``n`` batches ``b-00000000`` … with events ``ev-<batch>-<i>``; batch
    ``corrupt`` is spooled deflated, then damaged."""
    spool = Spool(path, 1 << 24)
    for b in range(n):
        events = [{"id": f"ev-{b:04d}-{i:04d}", "kind": "command"} for i in range(events_per_batch)]
        body = NewBatch(f"b-{b:08d}", PRIORITY_AUDIT, len(events), {"command": len(events)}, orjson.dumps(events))
        if packed or b == corrupt:
            body = body.packed(1)
        if b == corrupt:
            body = NewBatch(body.batch_id, body.priority, body.n_events, body.kinds, b"\xff\x00 not deflate",
                            body.codec, body.raw_bytes, body.crc)
        spool.append([body])
    return spool


@dataclass
class ShipRun:
    """What a shipping run left behind."""

    metrics: AgentMetrics
    shipper: Shipper
    spool: Spool
    waits: list[float]


async def ship_all(spool: Spool, backend: ScriptedBackend, timeout: float = 30.0,
                   session: aiohttp.ClientSession | None = None, record_waits: bool = False,
                   on_wait: Callable[[float], None] = lambda s: None, **cfg: Any) -> ShipRun:
    """Run a real shipper with a real HttpSink (on an injected session) until the spool is empty.

    ``record_waits``: the backoff's waits are recorded and not slept (so that a 30 s Retry-After
    is checked without waiting 30 s)."""
    ex = ThreadPoolExecutor(1)
    waits: list[float] = []

    async def recording_sleep(seconds: float) -> None:
        waits.append(seconds)
        on_wait(seconds)
        await asyncio.sleep(0)

    own = session is None
    session = session or aiohttp.ClientSession()
    sc = SinkConfig(url=backend.url, **{"backoff_initial_s": 0.01, "backoff_max_s": 0.05, **cfg})
    sink = HttpSink(sc, "test", session=session)
    metrics = AgentMetrics()
    shipper = Shipper(spool, ex, sink, {"id": "a", "server": "s", "hostname": "h", "version": "0"}, sc, metrics,
                      **({"sleep": recording_sleep} if record_waits else {}))
    task = asyncio.ensure_future(shipper.run())
    try:
        async with asyncio.timeout(timeout):
            while await asyncio.get_running_loop().run_in_executor(ex, lambda: spool.stats().batches):
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sink.close()
        if own:
            await session.close()
        ex.shutdown()
    return ShipRun(metrics, shipper, spool, waits)

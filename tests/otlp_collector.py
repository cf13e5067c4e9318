"""An OTLP/HTTP logs endpoint on 127.0.0.1 that decodes every request with opentelemetry-proto.

It runs aiohttp in a thread of the test process (the agent is a child process), keeps each
decoded ``ExportLogsServiceRequest`` with the status it was answered, and injects faults:
a share of 503s, of 429 + Retry-After, and partial successes at chosen requests.
"""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from tests.support import free_port


def record_id(rec: Any) -> str:
    return next(a.value.string_value for a in rec.attributes if a.key == "alpacon.event.id")


@dataclass
class Received:
    """One request: what it carried and how it was answered."""

    request: ExportLogsServiceRequest
    headers: dict[str, str]
    status: int
    rejected: int = 0

    def records(self) -> list[Any]:
        return [r for rl in self.request.resource_logs for sl in rl.scope_logs for r in sl.log_records]


@dataclass
class OtlpCollector:
    error_rate: float = 0.0
    throttle_rate: float = 0.0
    retry_after: int = 1
    #: request numbers (1-based, counting only decodable requests) answered with a partial success
    partial_at: set[int] = field(default_factory=set)
    partial_rejects: int = 3
    #: request numbers answered with a refusal: number -> status (with a google.rpc.Status body)
    refuse_at: dict[int, int] = field(default_factory=dict)
    seed: int = 1
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    undecodable: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()  # aiohttp inflates Content-Encoding: gzip
        as_json = request.content_type == "application/json"
        req = ExportLogsServiceRequest()
        try:
            if as_json:
                json_format.Parse(body, req)
            else:
                req.ParseFromString(body)
        except Exception:  # noqa: BLE001 - an undecodable request is counted and refused
            with self._lock:
                self.undecodable += 1
            return self._answer(400, Status(code=3, message="cannot decode"), as_json)
        with self._lock:
            n = len(self.received) + 1
            roll = self._rng.random()
            if n in self.partial_at:
                resp = ExportLogsServiceResponse(partial_success=ExportLogsPartialSuccess(
                    rejected_log_records=self.partial_rejects, error_message="records rejected by the test"))
                self.received.append(Received(req, dict(request.headers), 200, self.partial_rejects))
                return self._answer(200, resp, as_json)
            if n in self.refuse_at:
                self.received.append(Received(req, dict(request.headers), self.refuse_at[n]))
                return self._answer(self.refuse_at[n], Status(code=3, message="refused by the test"), as_json)
            status = 503 if roll < self.error_rate else 429 if roll < self.error_rate + self.throttle_rate else 200
            self.received.append(Received(req, dict(request.headers), status))
        if status == 429:
            return self._answer(429, Status(code=8, message="slow down"), as_json,
                                {"Retry-After": str(self.retry_after)})
        if status == 503:
            return self._answer(503, Status(code=14, message="unavailable"), as_json)
        return self._answer(200, ExportLogsServiceResponse(), as_json)

    @staticmethod
    def _answer(status: int, msg: Any, as_json: bool, headers: dict[str, str] | None = None) -> web.Response:
        if as_json:
            return web.Response(status=status, body=json_format.MessageToJson(msg).encode(),
                                content_type="application/json", headers=headers)
        return web.Response(status=status, body=msg.SerializeToString(), content_type="application/x-protobuf",
                            headers=headers)

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/logs", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def start(self) -> OtlpCollector:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def stored_ids(self) -> list[str]:
        """Ids of the records in requests answered 2xx (a partial success included)."""
        with self._lock:
            return [record_id(r) for x in self.received if x.status == 200 for r in x.records()]

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)

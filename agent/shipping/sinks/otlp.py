"""The OTLP/HTTP logs sink: ``POST {sink.url}/v1/logs``, protobuf (or JSON), gzip.

Answers are read as the OTLP specification says: 2xx is stored, unless its
``ExportLogsServiceResponse`` reports a partial success (those records go to the dead letters
with the server's message); 429, 502, 503 and 504 are retried, honouring Retry-After; any other
status is not retried (401/403 still pause and 413 still splits, as for every sink). Headers,
TLS, the token and the session come from the http sink.
"""

from __future__ import annotations

import asyncio

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from agent.shipping.retry import SendOutcome
from agent.shipping.sinks.http import HttpSink, gzip_bytes
from agent.shipping.sinks.otlp_logs import export_request

#: the statuses the OTLP specification retries
RETRYABLE = frozenset({429, 502, 503, 504})


def logs_url(url: str) -> str:
    """The logs endpoint of an OTLP/HTTP base URL (an URL already ending in /v1/logs is kept)."""
    url = url.rstrip("/")
    return url if url.endswith("/v1/logs") else f"{url}/v1/logs"


class OtlpSink(HttpSink):
    """Sends each batch as one ``ExportLogsServiceRequest``."""

    @property
    def gzip_level(self) -> int | None:
        return None  # the request is made from the document (see encode), never from the spooled body

    @property
    def _json(self) -> bool:
        return self.cfg.otlp.encoding == "json"

    def encode(self, document: bytes, spooled_at: float = 0.0) -> bytes:
        """The request body for a wire document; thread-safe."""
        req = export_request(document, spooled_at)
        if self._json:  # OTLP/JSON: enums as integers, field names in lowerCamelCase
            body = json_format.MessageToJson(req, indent=None, use_integers_for_enums=True).encode()
        else:
            body = req.SerializeToString()
        return gzip_bytes(body, self.cfg.gzip_level) if self.cfg.compression == "gzip" else body

    async def send(self, batch_id: str, document: bytes, n_events: int, spooled_at: float = 0.0) -> SendOutcome:
        body = await asyncio.get_running_loop().run_in_executor(None, self.encode, document, spooled_at)
        return await self.send_encoded(batch_id, body, n_events)

    def _decode(self, body: bytes, message: Message) -> bool:
        try:
            if self._json:
                json_format.Parse(body or b"{}", message, ignore_unknown_fields=True)
            else:
                message.ParseFromString(body)
        except (DecodeError, json_format.ParseError, UnicodeDecodeError):
            return False
        return True

    async def send_encoded(self, batch_id: str, body: bytes, n_events: int) -> SendOutcome:
        content_type = "application/json" if self._json else "application/x-protobuf"
        answer = await self.exchange(logs_url(self.cfg.url), body, self.request_headers(content_type))
        if isinstance(answer, str):
            return SendOutcome.no_answer(answer)
        if 200 <= answer.status < 300:
            resp = ExportLogsServiceResponse()
            if not self._decode(answer.body, resp):
                return SendOutcome.stored()  # the status is the answer; a garbled body does not undo it
            partial = resp.partial_success
            if partial.rejected_log_records > 0:
                reason = (f"OTLP partial success: {partial.rejected_log_records} of {n_events} log records "
                          f"rejected: {partial.error_message[:1000] or '(no message)'}")
                return SendOutcome(answer.status, reason, rejected=int(partial.rejected_log_records))
            return SendOutcome.stored()
        status = Status()
        said = status.message if self._decode(answer.body, status) and status.message else ""
        if not said:
            said = answer.body[:512].decode("utf-8", "replace").strip() if not self._is_binary(answer.body) else ""
        reason = f"OTLP HTTP {answer.status}: {said[:1000]}" if said else f"OTLP HTTP {answer.status}"
        return SendOutcome(answer.status, reason, answer.headers.get("Retry-After"),
                           retryable=answer.status in RETRYABLE)

    @staticmethod
    def _is_binary(body: bytes) -> bool:
        return any(b < 9 for b in body[:64])

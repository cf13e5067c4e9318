"""The workspace backend sink: one POST per batch (wire protocol version 1), gzip, keep-alive."""

from __future__ import annotations

import asyncio
import ssl
import zlib
from dataclasses import dataclass

import aiohttp
import structlog
from multidict import CIMultiDictProxy

from agent.config import SinkConfig
from agent.shipping.retry import SendOutcome

log = structlog.get_logger("sink")

#: the most of an answer's body that is read: a hostile backend cannot make the agent hold more
MAX_ANSWER_BYTES = 65536


def gzip_bytes(data: bytes, level: int) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """An answer as received: status, headers and at most :data:`MAX_ANSWER_BYTES` of the body."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class HttpSink:
    """POSTs batches to ``sink.url``; translates every failure into a SendOutcome at this one boundary.

    ``session``: an aiohttp session to send with (a test hands one in with its own connector);
    the sink then leaves closing it to whoever made it. Without one, the sink makes its own.
    """

    def __init__(self, cfg: SinkConfig, version: str, session: aiohttp.ClientSession | None = None) -> None:
        self.cfg = cfg
        self.version = version
        self._session = session
        self._owns_session = session is None
        self._token = cfg.token()
        if cfg.token_in_clear():
            log.warning("sink.url is plain http to another host: the token and the audit data "
                        "cross the network unencrypted; use an https:// URL", url=cfg.url)

    def _ssl(self) -> ssl.SSLContext | bool:
        t = self.cfg.tls
        if not self.cfg.url.startswith("https://"):
            return True
        if not t.verify:
            return False
        ctx = ssl.create_default_context(cafile=t.ca_file)
        if t.cert_file:
            ctx.load_cert_chain(t.cert_file, t.key_file)
        return ctx

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or (self._owns_session and self._session.closed):
            connector = aiohttp.TCPConnector(limit=self.cfg.in_flight + 2, ssl=self._ssl(), keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
                auto_decompress=True,
            )
        return self._session

    def reload_token(self) -> None:
        """Read ``token_file`` again."""
        self._token = self.cfg.token()

    @property
    def gzip_level(self) -> int | None:
        """The gzip level of request bodies; None when they are sent uncompressed."""
        return self.cfg.gzip_level if self.cfg.compression == "gzip" else None

    def encode(self, document: bytes, spooled_at: float = 0.0) -> bytes:
        """The request body for a wire document (gzip unless compression is off); thread-safe."""
        if self.cfg.compression == "gzip":
            return gzip_bytes(document, self.cfg.gzip_level)
        return document

    async def send(self, batch_id: str, document: bytes, n_events: int, spooled_at: float = 0.0) -> SendOutcome:
        if self.cfg.compression == "gzip" and len(document) > 65536:
            body = await asyncio.get_running_loop().run_in_executor(None, self.encode, document, spooled_at)
        else:
            body = self.encode(document, spooled_at)
        return await self.send_encoded(batch_id, body, n_events)

    def request_headers(self, content_type: str) -> dict[str, str]:
        """The headers of every request: the configured ones, then the agent's own."""
        headers = dict(self.cfg.headers)
        headers.update({"Content-Type": content_type, "User-Agent": f"alpacon-agent/{self.version}"})
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if self.cfg.compression == "gzip":
            headers["Content-Encoding"] = "gzip"
        return headers

    async def exchange(self, url: str, body: bytes, headers: dict[str, str]) -> HttpAnswer | str:
        """POST ``body``: the answer, or why there was none (connection error, timeout)."""
        try:
            # never follow a redirect: a 301/302/303 turns the POST into a GET whose 200 is not a
            # store, and a 307/308 would hand the batch to whichever host the answer names
            async with self._get_session().post(
                url, data=body, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
            ) as resp:
                # a little of the body lets a small answer free the connection for reuse; a huge
                # one is not read into memory (closed instead)
                return HttpAnswer(resp.status, resp.headers, await resp.content.read(MAX_ANSWER_BYTES))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    async def send_encoded(self, batch_id: str, body: bytes, n_events: int) -> SendOutcome:
        """POST a body made by :meth:`encode`."""
        headers = self.request_headers("application/json")
        headers["Idempotency-Key"] = batch_id
        answer = await self.exchange(self.cfg.url, body, headers)
        if isinstance(answer, str):
            return SendOutcome.no_answer(answer)
        if 200 <= answer.status < 300:
            return SendOutcome.stored()
        text = answer.body[:2048].decode("utf-8", "replace").strip()
        reason = f"HTTP {answer.status}: {text}" if text else f"HTTP {answer.status}"
        return SendOutcome(answer.status, reason, answer.headers.get("Retry-After"))

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

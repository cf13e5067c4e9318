"""The workspace backend sink: one POST per batch (wire protocol version 1), gzip, keep-alive."""

from __future__ import annotations

import asyncio
import ssl
import zlib

import aiohttp
import structlog

from agent.config import SinkConfig
from agent.shipping.retry import SendOutcome

log = structlog.get_logger("sink")


def _gzip(data: bytes, level: int) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


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

    def encode(self, payload: bytes) -> bytes:
        """The request body for a payload (gzip unless compression is off); thread-safe."""
        if self.cfg.compression == "gzip":
            return _gzip(payload, self.cfg.gzip_level)
        return payload

    async def send(self, batch_id: str, document: bytes, n_events: int) -> SendOutcome:
        if self.cfg.compression == "gzip" and len(document) > 65536:
            body = await asyncio.get_running_loop().run_in_executor(None, self.encode, document)
        else:
            body = self.encode(document)
        return await self.send_encoded(batch_id, body, n_events)

    async def send_encoded(self, batch_id: str, body: bytes, n_events: int) -> SendOutcome:
        """POST a body made by :meth:`encode`."""
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": batch_id,
            "User-Agent": f"alpacon-agent/{self.version}",
        }
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if self.cfg.compression == "gzip":
            headers["Content-Encoding"] = "gzip"
        try:
            # never follow a redirect: a 301/302/303 turns the POST into a GET whose 200 is not a
            # store, and a 307/308 would hand the batch to whichever host the answer names
            async with self._get_session().post(
                self.cfg.url, data=body, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
            ) as resp:
                status = resp.status
                if 200 <= status < 300:
                    # the status is the answer; a little of the body lets a small answer free the
                    # connection for reuse, a huge one is not read into memory (closed instead)
                    await resp.content.read(65536)
                    return SendOutcome.stored()
                text = (await resp.content.read(2048)).decode("utf-8", "replace").strip()
                reason = f"HTTP {status}: {text}" if text else f"HTTP {status}"
                return SendOutcome(status, reason, resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return SendOutcome.no_answer(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

"""The NATS JetStream sink: one message per event, ``Nats-Msg-Id`` its id, the event JSON its body.

The stream's duplicate window turns a replayed batch (after a crash or a lost ack) into
duplicates JetStream drops. A batch is stored only when every publish ack arrived; at most
``sink.nats.max_pending`` publishes await their ack at once. No responders, timeouts, a lost
connection and a 503 from JetStream are retried; a publish the stream refuses (its limits, a
subject it does not take) is permanent, with the server's reason.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import nats
import nats.errors
import nats.js.errors
import orjson
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext

from agent.config import NatsConfig, SinkConfig
from agent.errors import CredentialsRefused
from agent.shipping.retry import SendOutcome

log = structlog.get_logger("sink")

#: a batch refused for a reason that retrying cannot change is reported with this status
REFUSED = 400
#: JetStream is there but cannot take the message now (no leader, no responders …)
TRY_LATER = 503


def subject_token(value: str) -> str:
    """A value made safe as one subject token: no dots, spaces or wildcards."""
    out = "".join(c if c.isalnum() or c in "_-" else "_" for c in value)
    return out or "_"


def stream_subjects(cfg: NatsConfig) -> list[str]:
    """The subjects a stream the agent creates listens on: the template with wildcards."""
    return [cfg.subject.format(server="*", kind="*")]


def tls_context(cfg: SinkConfig) -> ssl.SSLContext | None:
    """The TLS context for ``tls://`` servers or a configured CA/client certificate; None: plain."""
    t = cfg.tls
    if not (any(s.startswith("tls://") for s in cfg.nats.servers) or t.ca_file or t.cert_file):
        return None
    ctx = ssl.create_default_context(cafile=t.ca_file)
    if not t.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if t.cert_file:
        ctx.load_cert_chain(t.cert_file, t.key_file)
    return ctx


def _is_auth_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "authorization" in text or "authentication" in text or "permissions violation" in text


async def connect(cfg: SinkConfig, name: str = "alpacon-agent") -> Client:
    """A connection to the configured servers; raises :class:`CredentialsRefused` when they refuse the
    credentials, nats errors or OSError when none answers."""
    opts: dict[str, Any] = {
        "servers": cfg.nats.servers, "name": name, "connect_timeout": min(cfg.timeout_s, 10.0),
        # a connection that cannot be restored within a few tries is closed; the next send makes a new one
        "allow_reconnect": True, "max_reconnect_attempts": 3, "reconnect_time_wait": 0.5,
    }
    token = cfg.token()
    if token:
        opts["token"] = token
    if cfg.nats.creds_file:
        opts["user_credentials"] = cfg.nats.creds_file
    ctx = tls_context(cfg)
    if ctx is not None:
        opts["tls"] = ctx

    seen: list[Exception] = []

    async def note(exc: Exception) -> None:  # the client reconnects by itself; the sink reports
        if len(seen) < 16:
            seen.append(exc)

    opts["error_cb"] = note
    nc = Client()
    try:
        await nc.connect(**opts)
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        refused = next((e for e in [exc, *seen] if _is_auth_error(e)), None)
        if refused is not None:
            raise CredentialsRefused(str(refused)) from exc
        raise
    return nc


async def ensure_stream(js: JetStreamContext, cfg: NatsConfig) -> str | None:
    """Create the stream when it is missing and allowed; None when it is there, else why not."""
    try:
        await js.stream_info(cfg.stream)
        return None
    except nats.js.errors.NotFoundError:
        if not cfg.auto_create_stream:
            return f"stream {cfg.stream!r} does not exist and sink.nats.auto_create_stream is off"
    await js.add_stream(name=cfg.stream, subjects=stream_subjects(cfg), num_replicas=cfg.replicas,
                        duplicate_window=cfg.duplicate_window_s, max_age=cfg.max_age_s or None)
    log.info("created the JetStream stream", stream=cfg.stream, replicas=cfg.replicas,
             duplicate_window_s=cfg.duplicate_window_s)
    return None


class NatsSink:
    """Publishes each event of a batch to JetStream and reports once every ack is in."""

    #: takes the wire document itself
    gzip_level: int | None = None

    def __init__(self, cfg: SinkConfig, server: str) -> None:
        self.cfg = cfg
        self.server_token = subject_token(server)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._pending = asyncio.Semaphore(cfg.nats.max_pending)

    def encode(self, document: bytes, spooled_at: float = 0.0) -> bytes:
        return document

    def reload_token(self) -> None:
        """Nothing to do: every new connection reads token_file and creds_file again."""

    def subject(self, kind: str) -> str:
        return self.cfg.nats.subject.format(server=self.server_token, kind=subject_token(kind))

    async def _jetstream(self) -> JetStreamContext | SendOutcome:
        if self._js is not None and self._nc is not None and not self._nc.is_closed:
            return self._js
        try:
            nc = await connect(self.cfg)
        except CredentialsRefused as exc:
            return SendOutcome(401, f"connecting: the servers refuse the credentials: {exc}")
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            return _no_answer("connecting", exc)
        js = nc.jetstream(timeout=self.cfg.timeout_s)
        try:
            missing = await ensure_stream(js, self.cfg.nats)
        except nats.js.errors.APIError as exc:
            # a stream that cannot be made is the operator's to fix: loud, retried, nothing refused
            await nc.close()
            log.error("cannot ship: the JetStream stream cannot be created", reason=_said(exc))
            return SendOutcome(TRY_LATER, f"creating stream {self.cfg.nats.stream!r}: {_said(exc)}")
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            await nc.close()
            return _no_answer("looking up the stream", exc)
        if missing is not None:
            await nc.close()
            log.error("cannot ship: the JetStream stream is missing", reason=missing)
            return SendOutcome(TRY_LATER, missing)
        self._nc, self._js = nc, js
        return js

    async def _publish(self, js: JetStreamContext, event: dict[str, Any]) -> None:
        try:
            await js.publish(self.subject(str(event.get("kind", "unknown"))), orjson.dumps(event),
                             timeout=self.cfg.timeout_s, headers={"Nats-Msg-Id": str(event["id"])})
        finally:
            self._pending.release()

    async def send(self, batch_id: str, document: bytes, n_events: int, spooled_at: float = 0.0) -> SendOutcome:
        return await self.send_encoded(batch_id, document, n_events)

    async def send_encoded(self, batch_id: str, body: bytes, n_events: int) -> SendOutcome:
        js = await self._jetstream()
        if isinstance(js, SendOutcome):
            return js
        events = orjson.loads(body)["events"]
        tasks: list[asyncio.Future[None]] = []
        try:
            for event in events:  # tasks start in order, so the publishes go out in order
                await self._pending.acquire()
                tasks.append(asyncio.ensure_future(self._publish(js, event)))
            results = await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        failures = [(e, r) for e, r in zip(events, results, strict=True) if isinstance(r, BaseException)]
        if not failures:
            return SendOutcome.stored()
        retryable = [r for _, r in failures if not _is_refusal(r)]
        if retryable:
            return _no_answer(f"{len(retryable)} of {len(events)} publishes unacknowledged", retryable[0])
        first = failures[0][1]
        assert isinstance(first, nats.js.errors.APIError)
        reason = f"{len(failures)} of {len(events)} events refused by stream {self.cfg.nats.stream!r}: {_said(first)}"
        if len(failures) == len(events):
            return SendOutcome(REFUSED, reason, retryable=False)
        return SendOutcome(200, reason, rejected=len(failures), rejected_ids=tuple(str(e["id"]) for e, _ in failures))

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.drain(), 5)
            except (nats.errors.Error, OSError, TimeoutError):
                await nc.close()


def _said(exc: nats.js.errors.APIError) -> str:
    return f"{exc.description} (code {exc.code}, err_code {exc.err_code})"


#: JetStream's "the store refused it" error; with "... exceeded" it is a stream limit (discard: new)
_STORE_FAILED = 10077


def _is_refusal(exc: BaseException) -> bool:
    """A JetStream answer refusing the message itself: a 4xx (too large for the stream, a subject
    it does not take) or a stream limit reached; any other 503 means "not now"."""
    if not isinstance(exc, nats.js.errors.APIError) or exc.code is None:
        return False
    if exc.err_code == _STORE_FAILED and "exceeded" in (exc.description or ""):
        return True
    return 400 <= exc.code < 500


def _no_answer(doing: str, exc: BaseException) -> SendOutcome:
    what = type(exc).__name__ + (f": {exc}" if str(exc) else "")
    if isinstance(exc, nats.js.errors.NoStreamResponseError | nats.errors.NoRespondersError):
        return SendOutcome(TRY_LATER, f"{doing}: no responders (is JetStream up and the stream's leader elected?)")
    return SendOutcome.no_answer(f"{doing}: {what}")

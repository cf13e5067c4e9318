"""The NATS JetStream sink: one message per event, ``Nats-Msg-Id`` its id, the event JSON its body.

The stream's duplicate window turns a replayed batch (after a crash or a lost ack) into
duplicates JetStream drops. A batch is stored only when every publish ack arrived; at most
``sink.nats.max_pending`` publishes await their ack at once. No responders, timeouts, a lost
connection and a 503 from JetStream are retried; a publish the stream refuses (its limits, a
subject it does not take) is permanent, with the server's reason.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import urllib.parse
from collections import deque
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
import orjson
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from agent.config_sink import NatsConfig, SinkConfig
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


@dataclass(frozen=True, slots=True)
class Failure:
    """Why one publish was not stored: ``refused`` by the stream itself, or not (yet) acknowledged."""

    refused: bool
    why: str


def ack_failure(msg: Msg) -> Failure | None:
    """None for a publish ack; else what the answer says went wrong."""
    if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
        return Failure(False, "no responders (is JetStream up and the stream's leader elected?)")
    try:
        error = orjson.loads(msg.data).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return Failure(False, f"an answer that is not a publish ack: {msg.data[:200]!r}")
    if error is None:
        return None
    code, err_code, description = error.get("code"), error.get("err_code"), str(error.get("description", ""))
    why = f"{description} (code {code}, err_code {err_code})"
    return Failure(is_refusal(code, err_code, description), why)


class NatsSink:
    """Publishes each event of a batch to JetStream and reports once every ack is in.

    Publishes go out in order on one connection with a reply subject each, under one wildcard
    subscription for the acks, at most ``max_pending`` unacknowledged at a time; a batch whose
    acks stop coming for ``timeout_s`` is reported unacknowledged (and retried whole).
    """

    #: takes the wire document itself
    gzip_level: int | None = None

    def __init__(self, cfg: SinkConfig, server: str) -> None:
        self.cfg = cfg
        self.server_token = subject_token(server)
        self._nc: Client | None = None
        self._inbox = ""
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._next = itertools.count()
        if (cfg.token_file or cfg.nats.creds_file) and tls_context(cfg) is None and any(
                (urllib.parse.urlsplit(u).hostname or "") not in ("127.0.0.1", "localhost", "::1")
                for u in cfg.nats.servers):
            log.warning("sink.nats.servers are plain nats:// to another host: the credentials and the audit "
                        "data cross the network unencrypted; use tls:// servers", servers=cfg.nats.servers)

    def encode(self, document: bytes, spooled_at: float = 0.0) -> bytes:
        return document

    def reload_token(self) -> None:
        """Nothing to do: every new connection reads token_file and creds_file again."""

    def subject(self, kind: str) -> str:
        return self.cfg.nats.subject.format(server=self.server_token, kind=subject_token(kind))

    async def _on_ack(self, msg: Msg) -> None:
        fut = self._waiting.pop(msg.subject[len(self._inbox):], None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def _connection(self) -> Client | SendOutcome:
        if self._nc is not None and not self._nc.is_closed:
            return self._nc
        try:
            nc = await connect(self.cfg)
        except CredentialsRefused as exc:
            return SendOutcome(401, f"connecting: the servers refuse the credentials: {exc}")
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            return _no_answer("connecting", exc)
        try:
            missing = await ensure_stream(nc.jetstream(timeout=self.cfg.timeout_s), self.cfg.nats)
            inbox = nc.new_inbox() + "."
            await nc.subscribe(inbox + "*", cb=self._on_ack, pending_msgs_limit=-1, pending_bytes_limit=-1)
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
        self._nc, self._inbox, self._waiting = nc, inbox, {}
        return nc

    async def _publish_all(self, nc: Client, events: list[dict[str, Any]]) -> list[Failure | None]:
        """Publish every event in order; each one's failure, or None where its ack arrived."""
        loop = asyncio.get_running_loop()
        window: deque[asyncio.Future[Msg]] = deque()
        acks: list[asyncio.Future[Msg]] = []
        tokens: list[str] = []
        try:
            for event in events:
                while len(window) >= self.cfg.nats.max_pending:
                    oldest = window.popleft()
                    if not oldest.done():
                        await asyncio.wait([oldest], timeout=self.cfg.timeout_s)
                        if not oldest.done():
                            raise TimeoutError(f"no publish ack for {self.cfg.timeout_s:.0f}s")
                token = str(next(self._next))
                fut: asyncio.Future[Msg] = loop.create_future()
                self._waiting[token] = fut
                tokens.append(token)
                await nc.publish(self.subject(str(event.get("kind", "unknown"))), orjson.dumps(event),
                                 reply=self._inbox + token,
                                 headers={"Nats-Msg-Id": str(event["id"])})
                acks.append(fut)
                window.append(fut)
            for f in window:  # oldest first: until every ack is in, or one is timeout_s late
                if not f.done():
                    await asyncio.wait([f], timeout=self.cfg.timeout_s)
                    if not f.done():
                        break
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            gone = Failure(False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            return [ack_failure(f.result()) if f.done() else gone for f in acks] + [gone] * (len(events) - len(acks))
        finally:
            for f in acks:
                if not f.done():
                    f.cancel()
            for token in tokens:
                self._waiting.pop(token, None)
        lost = Failure(False, f"no publish ack within {self.cfg.timeout_s:.0f}s")
        return [ack_failure(f.result()) if f.done() and not f.cancelled() else lost for f in acks]

    async def send(self, batch_id: str, document: bytes, n_events: int, spooled_at: float = 0.0) -> SendOutcome:
        return await self.send_encoded(batch_id, document, n_events)

    async def send_encoded(self, batch_id: str, body: bytes, n_events: int) -> SendOutcome:
        nc = await self._connection()
        if isinstance(nc, SendOutcome):
            return nc
        events = orjson.loads(body)["events"]
        results = await self._publish_all(nc, events)
        failures = [(e, r) for e, r in zip(events, results, strict=True) if r is not None]
        if not failures:
            return SendOutcome.stored()
        retryable = [r for _, r in failures if not r.refused]
        if retryable:
            return SendOutcome.no_answer(f"{len(retryable)} of {len(events)} publishes unacknowledged: "
                                         f"{retryable[0].why}")
        reason = (f"{len(failures)} of {len(events)} events refused by stream {self.cfg.nats.stream!r}: "
                  f"{failures[0][1].why}")
        if len(failures) == len(events):
            return SendOutcome(REFUSED, reason, retryable=False)
        return SendOutcome(200, reason, rejected=len(failures), rejected_ids=tuple(str(e["id"]) for e, _ in failures))

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.drain(), 5)
            except (nats.errors.Error, OSError, TimeoutError):
                await nc.close()


def _said(exc: nats.js.errors.APIError) -> str:
    return f"{exc.description} (code {exc.code}, err_code {exc.err_code})"


#: JetStream's "the store refused it" error; with "... exceeded" it is a stream limit (discard: new)
_STORE_FAILED = 10077
NO_RESPONDERS = "503"


def is_refusal(code: int | None, err_code: int | None, description: str) -> bool:
    """A JetStream answer refusing the message itself: a 4xx (too large for the stream, a subject
    it does not take) or a stream limit reached; any other 503 means "not now"."""
    if code is None:
        return False
    if err_code == _STORE_FAILED and "exceeded" in description:
        return True
    return 400 <= code < 500


def _no_answer(doing: str, exc: BaseException) -> SendOutcome:
    what = type(exc).__name__ + (f": {exc}" if str(exc) else "")
    if isinstance(exc, nats.js.errors.NoStreamResponseError | nats.errors.NoRespondersError):
        return SendOutcome(TRY_LATER, f"{doing}: no responders (is JetStream up?)")
    return SendOutcome.no_answer(f"{doing}: {what}")

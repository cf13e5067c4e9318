"""The reference receiver's HTTP side: ingest endpoint, views, stats, fault control and the CLI.

``make_app`` builds the aiohttp application; ``start`` serves it on a real socket (with the
server's own request decompression off, so gzip is inflated here, incrementally and capped);
``main`` is the ``alpacon-agent-receiver`` command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import hmac
import os
import re
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from typing import Any

import orjson
import structlog
from aiohttp import web

from agent.events import KINDS
from agent.schema import MAX_JSON_DEPTH, SchemaError, json_depth_exceeds
from receiver.faults import FaultInjector, FaultSettings, FaultSettingsError
from receiver.store import EventStore, Query
from receiver.validation import check_batch as validate_batch
from receiver.views import VIEWS, ParamError, parse_common, parse_int, query_view, reject_unknown

INGEST_PATH = "/api/v1/agent/events"
API = "/api/v1"
GZIP_ENCODINGS = frozenset({"gzip", "x-gzip"})
IDENTITY_ENCODINGS = frozenset({"", "identity"})

log = structlog.get_logger("receiver")


class IngestError(Exception):
    """A request refused with ``status`` and a reason for the JSON ``error`` body."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def error_response(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"error": reason}, status=status, headers=headers)


# -- body reading ----------------------------------------------------------------------------


async def read_body(request: web.Request, max_compressed: int, max_body: int) -> bytes:
    """The request body, gunzipped if so encoded; 413 past either cap, without inflating more.

    Decompression is incremental with an output limit, so a gzip bomb costs at most
    ``max_body`` bytes of memory before it is refused.
    """
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding in GZIP_ENCODINGS:
        inflater: Any = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding in IDENTITY_ENCODINGS:
        inflater = None
    else:
        raise IngestError(
            415, f"Content-Encoding {encoding[:64]!r} is not supported (gzip or identity)"
        )
    length = request.content_length
    if length is not None and length > max_compressed:
        raise IngestError(413, f"body of {length} bytes exceeds {max_compressed} bytes")
    out = bytearray()
    received = 0
    async for chunk in request.content.iter_any():
        received += len(chunk)
        if received > max_compressed:
            raise IngestError(413, f"body exceeds {max_compressed} bytes")
        if inflater is None:
            out += chunk
        else:
            if inflater.eof:
                raise IngestError(
                    400, "Content-Encoding gzip: data after the end of the gzip stream"
                )
            try:
                out += inflater.decompress(chunk, max_body + 1 - len(out))
            except zlib.error as exc:
                raise IngestError(
                    400, f"Content-Encoding gzip: corrupt gzip data ({exc})"
                ) from None
            if inflater.unconsumed_tail or len(out) > max_body:
                raise IngestError(413, f"decompressed body exceeds {max_body} bytes")
        if len(out) > max_body:
            raise IngestError(413, f"body exceeds {max_body} bytes")
    if inflater is not None:
        if not inflater.eof:
            raise IngestError(400, "Content-Encoding gzip: truncated gzip stream")
        if inflater.unused_data:
            raise IngestError(400, "Content-Encoding gzip: data after the end of the gzip stream")
    return bytes(out)


async def drain(request: web.Request, limit: int) -> None:
    """Read and discard up to ``limit`` bytes of the body (so a fault answers a whole request)."""
    seen = 0
    async for chunk in request.content.iter_any():
        seen += len(chunk)
        if seen > limit:
            return


#: a batch > its events > an event: two levels above an event's own, which may nest as deep as a
#: hook message (agent.schema.MAX_JSON_DEPTH)
MAX_BATCH_DEPTH = MAX_JSON_DEPTH + 2


def parse_batch(body: bytes) -> Any:
    """The batch parsed, or a 400 saying why not (not JSON, nested deeper than MAX_BATCH_DEPTH)."""
    try:
        batch = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise IngestError(400, f"body is not valid JSON: {exc}") from None
    if json_depth_exceeds(batch, MAX_BATCH_DEPTH):
        raise IngestError(400, f"body nests deeper than {MAX_BATCH_DEPTH} levels")
    return batch


def check_batch(batch: Any) -> None:
    """Validate against the wire schema; 400 with a reason naming the field and the kind."""
    try:
        validate_batch(batch)
    except SchemaError as exc:
        raise IngestError(400, f"schema: {exc}") from None


# -- count mode ------------------------------------------------------------------------------

# "seq=" is a literal prefix on purpose: a leading ``\b`` makes the regex engine try every
# position and costs this sink ten times more per batch
_SEQ_RE = re.compile(r"(?:\bsrc=(\S+)\s+)?seq=(\d+)")
_SEQ_NUM_RE = re.compile(r"seq=(\d+)")
_ID, _KIND, _DATA = itemgetter("id"), itemgetter("kind"), itemgetter("data")


@dataclass
class SourceSeq:
    """Sequence numbers seen from one source (``seq=N`` in event messages)."""

    received: int = 0
    out_of_order: int = 0
    last: int = -1
    seen: set[int] = field(default_factory=set)
    #: the smallest number seen (kept as they come: ``stats`` is polled while millions arrive)
    lo: int | None = None

    def add(self, n: int) -> None:
        self.received += 1
        if n < self.last:
            self.out_of_order += 1
        self.last = max(self.last, n)
        self.lo = n if self.lo is None else min(self.lo, n)
        self.seen.add(n)

    def add_many(self, ns: list[int]) -> None:
        last, ooo = self.last, 0
        if ns and ns[0] >= last and ns == sorted(ns):  # in order, the common case: no loop
            last = ns[-1]
        else:
            for n in ns:
                if n < last:
                    ooo += 1
                else:
                    last = n
        self.received += len(ns)
        self.out_of_order += ooo
        self.last = last
        if ns:
            low = min(ns)
            self.lo = low if self.lo is None else min(self.lo, low)
        self.seen.update(ns)

    def summary(self) -> dict[str, int]:
        distinct = len(self.seen)
        lo = self.lo if self.lo is not None else 0
        hi = self.last  # the largest seen: ``last`` only ever grows
        return {
            "received": self.received,
            "distinct": distinct,
            "duplicates": self.received - distinct,
            "min": lo,
            "max": hi,
            "missing": (hi - lo + 1) - distinct,
            "out_of_order": self.out_of_order,
        }


class CountSink:
    """The benchmark sink: counts events per kind, duplicate ids and per-source sequence gaps."""

    def __init__(self) -> None:
        self.by_kind: dict[str, int] = {}
        self.received = 0
        self.duplicates = 0
        self.ids: set[str] = set()
        self.sources: dict[str, SourceSeq] = {}
        self._keep_out_of_gc()

    @staticmethod
    def _keep_out_of_gc() -> None:
        """The sets here grow to millions of entries and hold no reference cycles, but every full
        collection walks them (and the parsed batches trigger many): freezing them moves them
        out of the collector's generations for good, their later entries included."""
        gc.freeze()

    def _source(self, key: str) -> SourceSeq:
        src = self.sources.get(key)
        if src is None:
            src = self.sources[key] = SourceSeq()
            self._keep_out_of_gc()
        return src

    def add(self, batch: Any) -> tuple[int, int]:
        if not isinstance(batch, dict) or not isinstance(batch.get("events"), list):
            raise IngestError(400, "schema: events: must be a list")
        fast = self._add_uniform(batch["events"])
        if fast is not None:
            return fast
        return self._add_each(batch["events"])

    def _add_uniform(self, events: list[Any]) -> tuple[int, int] | None:
        """The common batch — new ids, one kind and server, at most one ``seq=`` per message and no
        ``src=`` — counted with whole-batch operations (this sink must cost far less than the
        agent it measures); None when the batch is anything else, for the per-event path."""
        try:  # map() over C callables: one pass each, no Python frame per event
            ids = list(map(_ID, events))
            kinds = set(map(_KIND, events))
            servers = set(map(dict.get, events, repeat("server")))
            msgs = list(map(dict.get, map(_DATA, events), repeat("message")))
        except (TypeError, KeyError):
            return None
        if len(kinds) != 1 or len(servers) != 1 or set(map(type, ids)) != {str} or set(map(type, msgs)) != {str}:
            return None
        fresh = set(ids)
        if len(fresh) != len(ids) or not self.ids.isdisjoint(fresh):
            return None  # duplicates: counted one by one
        joined = "\x00".join(msgs)
        seqs = _SEQ_NUM_RE.findall(joined)
        if "src=" in joined or len(seqs) != sum(map(str.__contains__, msgs, repeat("seq="))):
            return None
        self.ids |= fresh
        kind = str(next(iter(kinds)))
        self.received += len(ids)
        self.by_kind[kind] = self.by_kind.get(kind, 0) + len(ids)
        if seqs:
            src = self._source(f"{next(iter(servers))}/{kind}")
            src.add_many(list(map(int, seqs)))
        return len(ids), 0

    def _add_each(self, events: list[Any]) -> tuple[int, int]:
        stored = 0
        for i, ev in enumerate(events):
            if not isinstance(ev, dict) or not isinstance(ev.get("id"), str):
                raise IngestError(400, f"schema: events[{i}].id: must be a string")
            self.received += 1
            if ev["id"] in self.ids:
                self.duplicates += 1
                continue
            self.ids.add(ev["id"])
            stored += 1
            kind = str(ev.get("kind"))
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
            data = ev.get("data")
            msg = data.get("message") if isinstance(data, dict) else None
            if isinstance(msg, str) and "seq=" in msg:
                m = _SEQ_RE.search(msg)
                if m:
                    key = f"{ev.get('server')}/{m.group(1) or kind}"
                    self._source(key).add(int(m.group(2)))
        return stored, len(events) - stored

    def stats(self) -> dict[str, Any]:
        return {
            "stored_by_kind": dict(self.by_kind),
            "stored": sum(self.by_kind.values()),
            "duplicates": self.duplicates,
            "sources": {k: v.summary() for k, v in self.sources.items()},
        }


# -- application state -------------------------------------------------------------------------


@dataclass
class ReceiverState:
    """Everything the handlers share: auth, store or counter, faults and counters."""

    token: str | None
    mode: str
    store: EventStore | None
    counter: CountSink | None
    faults: FaultInjector
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


def authorized(state: ReceiverState, request: web.Request) -> bool:
    if state.token is None:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), state.token.encode())


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer auth for ``/api/v1/*`` and per-status counting of ingest requests."""
    state = request.app[STATE]
    ingest = request.path == INGEST_PATH and request.method == "POST"
    try:
        if request.path.startswith(API + "/") and not authorized(state, request):
            log.info("unauthorized", path=request.path, peer=request.remote)
            if ingest:
                await drain(request, state.faults.settings.max_compressed_bytes)
            resp: web.StreamResponse = error_response(
                401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"}
            )
        else:
            resp = await handler(request)
    except web.HTTPException as exc:
        if ingest:
            state.count_status("dropped" if request.get(DROPPED) else exc.status)
        raise
    if ingest:
        state.count_status(resp.status)
    return resp


# -- handlers ------------------------------------------------------------------------------


async def ingest(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/agent/events``: faults, checks, validation, store; 200 with counts."""
    state = request.app[STATE]
    settings = state.faults.settings
    decision = state.faults.decide()
    if decision.delay_s:
        await asyncio.sleep(decision.delay_s)
    if decision.drop or decision.status is not None:
        await drain(request, settings.max_compressed_bytes)
        if decision.drop:
            log.info("fault", fault="drop")
            request[DROPPED] = True
            if request.transport is not None:
                request.transport.close()
            raise web.HTTPServiceUnavailable()
        log.info("fault", fault=decision.reason, status=decision.status)
        headers = (
            {"Retry-After": str(decision.retry_after)} if decision.retry_after is not None else None
        )
        return error_response(decision.status or 503, f"injected fault: {decision.reason}", headers)
    try:
        ctype = request.content_type
        if ctype != "application/json":
            raise IngestError(415, f"Content-Type {ctype[:64]!r} is not application/json")
        body = await read_body(request, settings.max_compressed_bytes, settings.max_body_bytes)
        state.bytes_in += request.content_length or len(body)
        state.bytes_decompressed += len(body)
        batch = parse_batch(body)
        if state.counter is not None:
            stored, duplicates = state.counter.add(batch)
        else:
            check_batch(batch)
            assert state.store is not None
            result = await state.store.store_batch(batch, request.headers.get("Idempotency-Key"))
            stored, duplicates = result.stored, result.duplicates
    except IngestError as exc:
        log.info("rejected", status=exc.status, reason=exc.reason)
        return error_response(exc.status, exc.reason)
    except sqlite3.Error as exc:
        log.error("store failed", error=str(exc))
        return error_response(500, f"store: {exc}")
    n = stored + duplicates
    now = time.monotonic()
    state.batches_accepted += 1
    state.events_received += n
    state.events_accepted += n
    state.first_accept = state.first_accept or now
    state.last_accept = now
    log.debug("stored", batch_id=batch.get("batch_id"), stored=stored, duplicates=duplicates)
    if decision.after_store_status is not None:
        log.info("fault", fault="fail_after_store", stored=stored)
        return error_response(decision.after_store_status, "injected fault: fail_after_store")
    return json_response({"stored": stored, "duplicates": duplicates})


async def healthz(request: web.Request) -> web.StreamResponse:
    return json_response({"ok": True, "mode": request.app[STATE].mode})


NO_STORE = "not available in count mode"


def _kinds(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    for k in kinds:
        if k not in KINDS:
            raise ParamError(f"kind: {k[:64]!r} is not one of {', '.join(KINDS)}")
    return kinds


def _store_query(
    fn: Callable[[web.Request, EventStore, dict[str, str]], Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A read endpoint of the store: 404 in count mode, 400 for a bad query parameter; ``fn``
    gets the store and the query parameters (a copy it may consume)."""

    @functools.wraps(fn)
    async def handler(request: web.Request) -> web.StreamResponse:
        store = request.app[STATE].store
        if store is None:
            return error_response(404, NO_STORE)
        try:
            return await fn(request, store, dict(request.query))
        except ParamError as exc:
            return error_response(400, str(exc))

    return handler


@_store_query
async def events(request: web.Request, store: EventStore, params: dict[str, str]) -> web.StreamResponse:
    """``GET /api/v1/events``: raw events in arrival order with their receive ``seq``."""
    kinds = _kinds(params.pop("kind", None))
    common = parse_common(params, ("server", "since", "until", "limit", "after"), "events")
    rows = await store.select(Query(kinds=kinds, **common))
    return json_response(
        {
            "events": rows,
            "count": len(rows),
            "next_after": rows[-1]["seq"] if rows else common["after"],
        }
    )


@_store_query
async def ids(request: web.Request, store: EventStore, params: dict[str, str]) -> web.StreamResponse:
    """``GET /api/v1/ids?kind=``: every stored event id in arrival order (for exact-set checks)."""
    kinds = _kinds(params.pop("kind", None))
    reject_unknown(params, ("kind",), "ids")
    all_ids = await store.ids(kinds)
    return json_response({"ids": all_ids, "count": len(all_ids)})


@_store_query
async def batches(request: web.Request, store: EventStore, params: dict[str, str]) -> web.StreamResponse:
    """``GET /api/v1/batches?limit=``: the latest batch receipts with their Idempotency-Key."""
    limit = parse_int("limit", params.pop("limit", "1000"), 1, 100_000)
    reject_unknown(params, ("limit",), "batches")
    rows = await store.batches(limit)
    return json_response({"batches": rows, "count": len(rows)})


async def stats(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/stats``: stored per kind, duplicates, batches, requests by status, faults."""
    state = request.app[STATE]
    body: dict[str, Any] = {"mode": state.mode}
    if state.store is not None:
        body.update(await state.store.counts())
    else:
        assert state.counter is not None
        body.update(state.counter.stats())
        body["batches_distinct"] = None
    window = (
        state.last_accept - state.first_accept
        if state.first_accept is not None and state.last_accept is not None
        else 0.0
    )
    body.update(
        {
            "received": state.events_received,
            "batches_accepted": state.batches_accepted,
            "requests_by_status": dict(state.requests_by_status),
            "faults_injected": dict(state.faults.injected),
            "bytes_in": state.bytes_in,
            "bytes_decompressed": state.bytes_decompressed,
            "ingest_window_s": window,
            "ingest_events_per_s": state.events_accepted / window if window > 0 else None,
            "cpu_s": time.process_time(),
            "uptime_s": time.monotonic() - state.started,
        }
    )
    return json_response(body)


async def get_faults(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/_faults``: the current fault settings and what was injected so far."""
    faults = request.app[STATE].faults
    return json_response({"settings": faults.settings.model_dump(), "injected": faults.injected})


async def set_faults(request: web.Request) -> web.StreamResponse:
    """``POST /api/v1/_faults``: change fault settings (``{"reset": true}`` restores the start)."""
    faults = request.app[STATE].faults
    try:
        body = await read_body(request, 1024 * 1024, 1024 * 1024)
        changes = orjson.loads(body) if body else {}
        faults.update(changes)
    except IngestError as exc:
        return error_response(exc.status, exc.reason)
    except orjson.JSONDecodeError as exc:
        return error_response(400, f"body is not valid JSON: {exc}")
    except FaultSettingsError as exc:
        return error_response(400, str(exc))
    log.info("faults changed", settings=faults.settings.model_dump())
    return json_response({"settings": faults.settings.model_dump(), "injected": faults.injected})


async def view(request: web.Request) -> web.StreamResponse:
    """``GET /api/v1/<view>``: one of the audit views (see :mod:`receiver.views`)."""
    name = request.match_info["view"]
    if name not in VIEWS:
        return error_response(404, f"no view {name[:64]!r}; views: {', '.join(VIEWS)}")
    return await _view(request)


@_store_query
async def _view(request: web.Request, store: EventStore, params: dict[str, str]) -> web.StreamResponse:
    return json_response(await query_view(store, request.match_info["view"], params))


# -- app and server --------------------------------------------------------------------------


def make_app(
    *,
    token: str | None,
    db_path: str = ":memory:",
    mode: str = "store",
    faults: FaultSettings | None = None,
) -> web.Application:
    """The receiver application; the store opens on startup and closes on cleanup."""
    if mode not in ("store", "count"):
        raise ValueError(f"mode must be 'store' or 'count', not {mode!r}")
    store = EventStore(db_path) if mode == "store" else None
    state = ReceiverState(
        token=token,
        mode=mode,
        store=store,
        counter=CountSink() if mode == "count" else None,
        faults=FaultInjector(faults),
    )
    app = web.Application(middlewares=[api_middleware], client_max_size=1024 * 1024)
    app[STATE] = state

    async def open_store(_: web.Application) -> None:
        if store is not None:
            await store.open()

    async def close_store(_: web.Application) -> None:
        if store is not None:
            await store.close()

    app.on_startup.append(open_store)
    app.on_cleanup.append(close_store)
    app.router.add_get("/healthz", healthz)
    app.router.add_post(INGEST_PATH, ingest)
    app.router.add_get(f"{API}/events", events)
    app.router.add_get(f"{API}/ids", ids)
    app.router.add_get(f"{API}/batches", batches)
    app.router.add_get(f"{API}/stats", stats)
    app.router.add_get(f"{API}/_faults", get_faults)
    app.router.add_post(f"{API}/_faults", set_faults)
    app.router.add_get(API + "/{view}", view)
    return app


async def start(
    app: web.Application, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on host:port (0 picks a free port); returns the runner and the real port.

    The server's own request decompression is off: :func:`read_body` inflates with a cap.
    """
    runner = web.AppRunner(app, auto_decompress=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    server = site._server
    assert server is not None and server.sockets
    return runner, server.sockets[0].getsockname()[1]


# -- CLI ---------------------------------------------------------------------------------------


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="alpacon-agent-receiver",
        description="Reference workspace-backend ingest: validates, dedups by event id, stores, "
        "serves the audit views; injects faults for tests.",
    )
    p.add_argument(
        "--listen",
        type=parse_listen,
        default=("127.0.0.1", 8765),
        metavar="HOST:PORT",
        help="address to listen on; port 0 picks a free one (default 127.0.0.1:8765)",
    )
    p.add_argument(
        "--db",
        default=None,
        metavar="PATH",
        help="SQLite file (default: a temporary file removed at exit; ':memory:' works)",
    )
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--token", default=None, help="bearer token agents must send")
    tok.add_argument("--token-file", default=None, metavar="FILE", help="file holding the token")
    p.add_argument(
        "--mode",
        choices=("store", "count"),
        default="store",
        help="store: SQLite and views; count: benchmark sink that only counts",
    )
    p.add_argument(
        "--log-level",
        default="warning",
        choices=("debug", "info", "warning", "error"),
        help="stderr log level",
    )
    f = p.add_argument_group("faults (also settable at run time: POST /api/v1/_faults)")
    f.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered 503")
    f.add_argument("--error-status", type=int, default=503, help="status of --error-rate answers")
    f.add_argument("--throttle-rate", type=float, default=0.0, help="share answered 429")
    f.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds of 429 answers")
    f.add_argument("--slow-rate", type=float, default=0.0, help="share of slow answers")
    f.add_argument("--slow-ms", type=int, default=0, help="delay of a slow answer")
    f.add_argument(
        "--drop-rate", type=float, default=0.0, help="share of connections dropped unanswered"
    )
    f.add_argument(
        "--force-status", type=int, default=None, help="answer every request with this status"
    )
    f.add_argument(
        "--fail-after-store-rate",
        type=float,
        default=0.0,
        help="share of batches stored and then answered 503 (causes replays)",
    )
    f.add_argument("--seed", type=int, default=None, help="seed of the fault draws")
    f.add_argument(
        "--max-body-bytes",
        type=int,
        default=32 * 1024 * 1024,
        help="cap on the decompressed body (413 above)",
    )
    f.add_argument(
        "--max-compressed-bytes",
        type=int,
        default=32 * 1024 * 1024,
        help="cap on the body as sent (413 above)",
    )
    return p


def configure_logging(level: str) -> None:
    import logging

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(serializer=lambda o, **_: orjson.dumps(o).decode()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


async def serve(
    args: argparse.Namespace, token: str | None, faults: FaultSettings, db: str
) -> None:
    app = make_app(token=token, db_path=db, mode=args.mode, faults=faults)
    host, port = args.listen
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner, real_port = await start(app, host, port)
    shown = f"[{host}]" if ":" in host else host
    print(f"listening on http://{shown}:{real_port}", flush=True)
    log.info("listening", host=host, port=real_port, mode=args.mode, db=db)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """The ``alpacon-agent-receiver`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    token = args.token
    if args.token_file is not None:
        try:
            with open(args.token_file, encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as exc:
            print(
                f"alpacon-agent-receiver: --token-file: {exc.strerror}: {args.token_file}",
                file=sys.stderr,
            )
            return 2
        if not token:
            print(
                f"alpacon-agent-receiver: --token-file: {args.token_file} is empty", file=sys.stderr
            )
            return 2
    if token is None:
        log.warning("no token given: every request is accepted without authentication")
    try:
        faults = FaultSettings(
            error_rate=args.error_rate,
            error_status=args.error_status,
            throttle_rate=args.throttle_rate,
            retry_after=args.retry_after,
            slow_rate=args.slow_rate,
            slow_ms=args.slow_ms,
            drop_rate=args.drop_rate,
            force_status=args.force_status,
            fail_after_store_rate=args.fail_after_store_rate,
            seed=args.seed,
            max_body_bytes=args.max_body_bytes,
            max_compressed_bytes=args.max_compressed_bytes,
        )
    except ValueError as exc:
        from pydantic import ValidationError

        from receiver.faults import describe_validation_error

        msg = describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
        print(f"alpacon-agent-receiver: {msg}", file=sys.stderr)
        return 2
    tmpdir = None
    db = args.db
    if db is None:
        tmpdir = tempfile.mkdtemp(prefix="alpacon-receiver-")
        db = os.path.join(tmpdir, "receiver.db")
    try:
        asyncio.run(serve(args, token, faults, db))
    except sqlite3.Error as exc:
        print(f"alpacon-agent-receiver: --db {db}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"alpacon-agent-receiver: cannot listen on {args.listen[0]}:{args.listen[1]}: {exc}",
            file=sys.stderr,
        )
        return 1
    finally:
        if tmpdir is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(tmpdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The reference receiver's HTTP application: the app factory, its routes and the read endpoints.

``make_app`` builds the aiohttp application; ``start`` serves it on a real socket (with the
server's own request decompression off, so gzip is inflated by :mod:`receiver.ingest`,
incrementally and capped). The command line is :mod:`receiver.cli`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web

from agent.events import KINDS
from receiver.auth import api_middleware
from receiver.backends import open_store
from receiver.consumer import ConsumeSettings, JetStreamConsumer
from receiver.count_sink import CountSink
from receiver.errors import FaultSettingsError, IngestError, ParamError, StoreError
from receiver.faults import FaultInjector, FaultSettings
from receiver.ingest import ingest, read_body
from receiver.state import API, INGEST_PATH, STATE, ReceiverState, error_response, json_response
from receiver.store import EventStore, Query
from receiver.views import VIEWS, parse_common, parse_int, query_view, reject_unknown

__all__ = ["INGEST_PATH", "CountSink", "IngestError", "make_app", "start"]

log = structlog.get_logger("receiver")


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
        except StoreError as exc:
            log.error("store failed", error=str(exc))
            return error_response(500, f"store: {exc}")

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
    """``GET /api/v1/ids?kind=&after=&limit=``: stored event ids in arrival order, a page at a time."""
    kinds = _kinds(params.pop("kind", None))
    common = parse_common(params, ("limit", "after"), "ids")
    rows = await store.ids(kinds, common["after"], common["limit"])
    return json_response(
        {"ids": [r[1] for r in rows], "count": len(rows), "next_after": rows[-1][0] if rows else common["after"]}
    )


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
    if state.consumer is not None:
        body["consumer"] = state.consumer.stats.as_dict()
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
    retention_days: int | None = None,
    consume: ConsumeSettings | None = None,
) -> web.Application:
    """The receiver application; the store (SQLite path or ``postgresql://`` URL) opens on startup
    and closes on cleanup; with ``consume`` a JetStream consumer feeds the store as well."""
    if mode not in ("store", "count"):
        raise ValueError(f"mode must be 'store' or 'count', not {mode!r}")
    store = open_store(db_path, retention_days=retention_days) if mode == "store" else None
    state = ReceiverState(
        token=token,
        mode=mode,
        store=store,
        counter=CountSink() if mode == "count" else None,
        faults=FaultInjector(faults),
    )
    app = web.Application(middlewares=[api_middleware], client_max_size=1024 * 1024)
    app[STATE] = state

    if consume is not None and store is None:
        raise ValueError("consuming a stream needs mode 'store'")
    consumer_task: list[asyncio.Task[None]] = []

    async def open_db(_: web.Application) -> None:
        if store is not None:
            await store.open()
        if consume is not None and store is not None:
            state.consumer = JetStreamConsumer(consume, store)
            try:
                await state.consumer.connect()
            except BaseException:
                await store.close()
                raise
            consumer_task.append(asyncio.get_running_loop().create_task(state.consumer.run()))

    async def close_store(_: web.Application) -> None:
        for task in consumer_task:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if state.consumer is not None:
            await state.consumer.close()
        if store is not None:
            await store.close()

    app.on_startup.append(open_db)
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
    sockets = getattr(site._server, "sockets", None)
    assert sockets, "the site has no listening socket"
    return runner, int(sockets[0].getsockname()[1])

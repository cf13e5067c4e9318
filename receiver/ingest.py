"""The ingest endpoint: reading the body (gzip inflated incrementally, capped), parsing,
checking against the wire schema, and storing or counting the batch.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from typing import Any

import orjson
import structlog
from aiohttp import web

from agent.schema import MAX_JSON_DEPTH, SchemaError, json_depth_exceeds
from receiver.errors import IngestError, StoreError
from receiver.state import DROPPED, STATE, error_response, json_response
from receiver.validation import check_batch as validate_batch

__all__ = ["IngestError", "check_batch", "drain", "ingest", "parse_batch", "read_body"]

GZIP_ENCODINGS = frozenset({"gzip", "x-gzip"})
IDENTITY_ENCODINGS = frozenset({"", "identity"})

log = structlog.get_logger("receiver")


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
    except StoreError as exc:
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

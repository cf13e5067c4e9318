"""Bearer-token authentication of ``/api/v1/*`` and the per-status count of ingest requests."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from receiver.ingest import drain
from receiver.state import API, DROPPED, INGEST_PATH, STATE, ReceiverState, error_response

log = structlog.get_logger("receiver")


def authorized(state: ReceiverState, request: web.Request) -> bool:
    """Whether the request carries the bearer token (always, when the receiver has none)."""
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

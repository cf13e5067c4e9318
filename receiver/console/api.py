"""The read endpoints the console needs beyond the views: activity counts and session recordings.

``GET /api/v1/user-activity/summary`` counts user activity per hour by action and result and
names the top users and source IPs, in the database (never over the whole table in Python).
``GET /api/v1/websh-recordings/{session_id}`` joins a session's ``websh_recording`` chunks, in
order, into the asciicast file the player reads.
"""

from __future__ import annotations

from aiohttp import web

from receiver.errors import ParamError
from receiver.state import API, STATE, error_response, json_response
from receiver.store import Query
from receiver.views import parse_common, parse_int

SUMMARY_FILTERS = ("user", "action", "result", "ip")
#: at most this many chunks make one recording (the agent caps a recording's size as well)
MAX_CHUNKS = 4096


async def activity_summary(request: web.Request) -> web.StreamResponse:
    store = request.app[STATE].store
    if store is None:
        return error_response(404, "not available in count mode")
    params = dict(request.query)
    try:
        common = parse_common(params, ("server", "since", "until", "top", *SUMMARY_FILTERS), "user-activity/summary")
        top = parse_int("top", params["top"], 1, 100) if "top" in params else 10
        eq = tuple(
            (k, parse_int(k, params[k], -(2**62), 2**62) if k == "result" else params[k])
            for k in SUMMARY_FILTERS
            if k in params
        )
    except ParamError as exc:
        return error_response(400, str(exc))
    q = Query(server=common["server"], since=common["since"], until=common["until"], data_eq=eq)
    return json_response(await store.activity_summary(q, top))


async def recording(request: web.Request) -> web.StreamResponse:
    store = request.app[STATE].store
    if store is None:
        return error_response(404, "not available in count mode")
    sid = request.match_info["session_id"]
    rows = await store.select(Query(kinds=("websh_recording",), keys=[sid], limit=MAX_CHUNKS))
    if not rows:
        return error_response(404, "no recording for this session")
    chunks = sorted(rows, key=lambda ev: (ev["data"]["seq"], ev["seq"]))
    seen: set[int] = set()
    parts = []
    for ev in chunks:
        n = ev["data"]["seq"]
        if n not in seen:  # the same chunk sent twice (another id) is shown once
            seen.add(n)
            parts.append(ev["data"]["data"])
    return web.Response(text="".join(parts), content_type="application/x-asciicast", charset="utf-8",
                        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


def add_console_api(app: web.Application) -> None:
    app.router.add_get(f"{API}/user-activity/summary", activity_summary)
    app.router.add_get(f"{API}/websh-recordings/{{session_id}}", recording)

"""One hook message, from its bytes to an event: a depth-capped parse, then the emit envelope and
the kind's schema. Each function returns the result or the reason it is refused (a string the
producer is answered with), and raises nothing for any input."""

from __future__ import annotations

import re
from typing import Any

import orjson

from agent.events import KINDS, format_ts, parse_ts
from agent.schema import MAX_JSON_DEPTH, SchemaError, json_depth_exceeds, validate_data

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{7,127}")
EMIT_FIELDS = frozenset({"op", "kind", "data", "ts", "id", "ref", "sender"})
#: what a producer may not say about itself: the agent writes it from the socket's credentials
SENDER_FIELDS = ("sender", "provenance")
_TOO_DEEP = f"nested deeper than {MAX_JSON_DEPTH} levels"


def parse_message(line: bytes | bytearray) -> dict[str, Any] | str:
    """The message as an object, or why it is not one (not JSON, nested too deep, not an object)."""
    try:
        msg = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        deep = "depth limit" in str(exc) or "recursion" in str(exc)  # orjson stops at 1024 levels
        return _TOO_DEEP if deep else f"not JSON: {exc}"
    # only a line with that many brackets can be that deep: the walk is skipped for the others
    if line.count(b"[") + line.count(b"{") > MAX_JSON_DEPTH and json_depth_exceeds(msg, MAX_JSON_DEPTH):
        return _TOO_DEEP
    if not isinstance(msg, dict):
        return "a message must be a JSON object"
    return msg


def message_ref(msg: dict[str, Any]) -> int | str | None:
    """The producer's ``ref`` to echo (one that is not a number or a string is not echoed)."""
    ref = msg.get("ref")
    return ref if isinstance(ref, int | str) and not isinstance(ref, bool) else None


def event_from_emit(msg: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any] | str:
    """The event an ``emit`` message asks for (``kind``, ``data``, ``ts`` and its ``id`` if given), or
    why it is refused. Its ``data.provenance`` is ``provenance`` (the peer as the kernel names it):
    a ``sender`` or ``provenance`` the producer sent is dropped."""
    if not EMIT_FIELDS.issuperset(msg):
        return f"unknown fields: {', '.join(sorted(str(k)[:64] for k in set(msg) - EMIT_FIELDS))}"[:300]
    kind = msg.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        return f"unknown kind {str(kind)[:64]!r}; one of {', '.join(KINDS)}"
    data = msg.get("data")
    if not isinstance(data, dict):
        return "'data' must be an object"
    for f in SENDER_FIELDS:  # the producer does not say who it is: the socket does
        data.pop(f, None)
    data["provenance"] = provenance
    try:
        validate_data(kind, data)
    except SchemaError as exc:
        return str(exc)[:1000]
    event: dict[str, Any] = {"kind": kind, "data": data}
    ts = msg.get("ts")
    if ts is not None:
        if not isinstance(ts, str):
            return "'ts' must be an RFC 3339 string"
        try:
            event["ts"] = format_ts(parse_ts(ts))
        except (ValueError, OverflowError, OSError):
            return f"'ts' is not an RFC 3339 timestamp: {ts[:64]!r}"
    else:
        event["ts"] = format_ts()
    ev_id = msg.get("id")
    if ev_id is not None:
        if not isinstance(ev_id, str) or _ID_RE.fullmatch(ev_id) is None:
            return "'id' must be 8-128 characters of [A-Za-z0-9._:-], starting with a letter or digit"
        event["id"] = ev_id
    return event

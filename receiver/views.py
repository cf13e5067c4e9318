"""The receiver's read side: query parameters of each view and how stored events become view rows.

Simple views (system logs, WebFTP transfers, user activity, metrics) are one row per event.
Merged views fold several events into one record: a Websh session is its open/closed events
merged (closed wins) plus its commands ordered by their ``seq``; a command is its status events
merged, the latest status winning, with a ``history`` of every status change in order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.events import format_ts, parse_ts
from receiver.errors import ParamError
from receiver.store import GROUP_KEYS, EventStore, Query

DEFAULT_LIMIT = 1000
MAX_LIMIT = 100_000
COMMON_PARAMS = ("server", "since", "until", "limit", "after")

#: order of command statuses when two changes share a timestamp
STATUS_RANK = {"scheduled": 0, "running": 1, "stuck": 2, "success": 3, "failed": 3}


@dataclass(frozen=True, slots=True)
class ViewSpec:
    """One view: the kind it shows and its kind-specific filters (name -> type)."""

    kind: str
    filters: Mapping[str, type] = field(default_factory=dict)
    #: filters matching a substring of a data field (param -> field)
    contains: Mapping[str, str] = field(default_factory=dict)
    merged: bool = False


VIEWS: dict[str, ViewSpec] = {
    "system-logs": ViewSpec(
        "system_log",
        {"program": str, "level": str, "pid": int, "facility": str, "hostname": str},
        {"q": "message"},
    ),
    "websh-sessions": ViewSpec(
        "websh_session",
        {
            "session_id": str,
            "username": str,
            "groupname": str,
            "operator": str,
            "remote_ip": str,
            "state": str,
        },
        merged=True,
    ),
    "webftp-transfers": ViewSpec(
        "webftp_transfer",
        {
            "username": str,
            "groupname": str,
            "type": str,
            "status": str,
            "remote_ip": str,
            "session_id": str,
            "object_name": str,
            "path": str,
        },
    ),
    "commands": ViewSpec(
        "command",
        {"command_id": str, "shell": str, "status": str, "operator": str, "user": str},
        merged=True,
    ),
    "user-activity": ViewSpec(
        "user_activity", {"user": str, "action": str, "result": int, "ip": str}
    ),
    "metrics": ViewSpec("metrics"),
}


def parse_int(name: str, text: str, lo: int, hi: int) -> int:
    """An integer query parameter within [lo, hi]; :class:`ParamError` naming it otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise ParamError(f"{name}: {text[:64]!r} is not an integer") from None
    if not lo <= value <= hi:
        raise ParamError(f"{name}: {value} is out of range {lo}..{hi}")
    return value


def parse_time(name: str, text: str) -> str:
    """An RFC 3339 timestamp or epoch seconds, normalised to the wire format for comparison."""
    try:
        epoch = float(text)
    except ValueError:
        try:
            epoch = parse_ts(text)
        except ValueError:
            raise ParamError(
                f"{name}: {text[:64]!r} is not an RFC 3339 time or epoch seconds"
            ) from None
    try:
        return format_ts(epoch)
    except (OverflowError, ValueError, OSError):
        raise ParamError(f"{name}: {text[:64]!r} is out of range") from None


def reject_unknown(params: Mapping[str, str], allowed: tuple[str, ...], what: str) -> None:
    """ParamError naming the first query parameter that ``what`` does not take."""
    for name in params:
        if name not in allowed:
            raise ParamError(
                f"unknown query parameter {name[:64]!r} for {what}; allowed: {', '.join(allowed)}"
            )


def parse_common(params: Mapping[str, str], allowed: tuple[str, ...], what: str) -> dict[str, Any]:
    """Check for unknown parameters and parse server/since/until/limit/after."""
    reject_unknown(params, allowed, what)
    out: dict[str, Any] = {
        "server": params.get("server"),
        "since": parse_time("since", params["since"]) if "since" in params else None,
        "until": parse_time("until", params["until"]) if "until" in params else None,
        "limit": parse_int("limit", params["limit"], 1, MAX_LIMIT)
        if "limit" in params
        else DEFAULT_LIMIT,
        "after": parse_int("after", params["after"], 0, 2**62) if "after" in params else None,
    }
    return out


def flatten(ev: Mapping[str, Any]) -> dict[str, Any]:
    """A simple view row: the envelope (receive sequence as ``received_seq``) plus the data."""
    row: dict[str, Any] = {
        "id": ev["id"],
        "received_seq": ev["seq"],
        "server": ev["server"],
        "ts": ev["ts"],
    }
    for k, v in ev["data"].items():
        row.setdefault(k, v)
    return row


def _overlay(into: dict[str, Any], data: Mapping[str, Any]) -> None:
    for k, v in data.items():
        if v is not None or k not in into:
            into[k] = v


def merge_session(events: list[dict[str, Any]]) -> dict[str, Any]:
    """One Websh session from its open/closed events: closed wins, later non-null fields win."""
    ordered = sorted(events, key=lambda e: (e["data"].get("state") == "closed", e["ts"], e["seq"]))
    first = min(events, key=lambda e: e["seq"])
    merged: dict[str, Any] = {
        "session_id": first["data"]["session_id"],
        "server": first["server"],
        "ts": min(e["ts"] for e in events),
        "received_seq": first["seq"],
        "last_received_seq": max(e["seq"] for e in events),
        "event_ids": [e["id"] for e in sorted(events, key=lambda e: e["seq"])],
    }
    data: dict[str, Any] = {}
    for ev in ordered:
        _overlay(data, ev["data"])
    if data.get("duration_ms") is None and data.get("ended_at") and data.get("started_at"):
        data["duration_ms"] = int(
            round((parse_ts(data["ended_at"]) - parse_ts(data["started_at"])) * 1000)
        )
    for k, v in data.items():
        merged.setdefault(k, v)
    return merged


def session_command(ev: Mapping[str, Any]) -> dict[str, Any]:
    """One entry of a session's ``commands`` list (``seq`` is the command's order in the session)."""
    row = dict(ev["data"])
    row.pop("session_id", None)
    row.update({"id": ev["id"], "ts": ev["ts"], "received_seq": ev["seq"]})
    return row


def merge_command(events: list[dict[str, Any]]) -> dict[str, Any]:
    """One command from its status events: the latest status wins, with the full history."""
    ordered = sorted(
        events,
        key=lambda e: (e["ts"], STATUS_RANK.get(e["data"].get("status"), 0), e["seq"]),
    )
    first = min(events, key=lambda e: e["seq"])
    merged: dict[str, Any] = {
        "command_id": first["data"]["command_id"],
        "server": first["server"],
        "ts": ordered[0]["ts"],
        "received_seq": first["seq"],
        "last_received_seq": max(e["seq"] for e in events),
    }
    data: dict[str, Any] = {}
    history = []
    for ev in ordered:
        _overlay(data, ev["data"])
        d = ev["data"]
        history.append(
            {
                "status": d.get("status"),
                "ts": ev["ts"],
                "id": ev["id"],
                "received_seq": ev["seq"],
                "exit_code": d.get("exit_code"),
                "reason": d.get("reason"),
            }
        )
    data["status"] = ordered[-1]["data"].get("status")
    for k, v in data.items():
        merged.setdefault(k, v)
    merged["history"] = history
    return merged


def _matches(row: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    return all(row.get(k) == v for k, v in filters.items())


def _in_window(ts: str, since: str | None, until: str | None) -> bool:
    return (since is None or ts >= since) and (until is None or ts < until)


async def query_view(store: EventStore, name: str, params: Mapping[str, str]) -> dict[str, Any]:
    """The answer of ``GET /api/v1/<name>``; raises :class:`ParamError` or KeyError (no view)."""
    spec = VIEWS[name]
    allowed = COMMON_PARAMS + tuple(spec.filters) + tuple(spec.contains)
    common = parse_common(params, allowed, name)
    filters: dict[str, Any] = {}
    for key, typ in spec.filters.items():
        if key in params:
            filters[key] = (
                parse_int(key, params[key], -(2**62), 2**62) if typ is int else params[key]
            )
    contains = [(spec.contains[k], params[k]) for k in spec.contains if k in params]
    if not spec.merged:
        rows = await store.select(
            Query(
                kinds=(spec.kind,),
                server=common["server"],
                since=common["since"],
                until=common["until"],
                after=common["after"],
                limit=common["limit"],
                data_eq=tuple(filters.items()),
                data_like=tuple(contains),
            )
        )
        items = [flatten(ev) for ev in rows]
    else:
        items = await _merged_page(store, spec.kind, common, filters)
        if spec.kind == "websh_session" and items:
            await _attach_commands(store, items)
    return {
        "view": name,
        "items": items,
        "count": len(items),
        "next_after": items[-1]["received_seq"] if items else common["after"],
    }


#: merged records read per database page when filters may drop some of them
FILTERED_PAGE = 256


async def _merged_page(
    store: EventStore, kind: str, common: Mapping[str, Any], filters: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Up to ``limit`` merged records after the cursor, read a page of records at a time.

    The store lists records by first arrival (:meth:`EventStore.groups`); each page's events are
    fetched by key and merged here, then the filters on merged fields apply. Without such filters
    one page of exactly ``limit`` records is all that is read.
    """
    merge: Callable[[list[dict[str, Any]]], dict[str, Any]] = (
        merge_session if kind == "websh_session" else merge_command
    )
    key_field = GROUP_KEYS[kind]
    limit: int = common["limit"]
    filtered = bool(filters) or common["since"] is not None or common["until"] is not None
    page = min(max(limit, FILTERED_PAGE), 1000) if filtered else limit
    after: int | None = common["after"]
    items: list[dict[str, Any]] = []
    while len(items) < limit:
        refs = await store.groups(kind, common["server"], after, page)
        if not refs:
            break
        groups: dict[str, list[dict[str, Any]]] = {ref.key: [] for ref in refs}
        for i in range(0, len(refs), 500):
            keys = [ref.key for ref in refs[i : i + 500]]
            for ev in await store.select(Query(kinds=(kind,), server=common["server"], keys=keys)):
                groups[store.key_text(ev["data"][key_field])].append(ev)
        for ref in refs:
            group = groups[ref.key]
            if not group:  # its events are gone (retention)
                continue
            item = merge(group)
            if not _in_window(item["ts"], common["since"], common["until"]) or not _matches(item, filters):
                continue
            items.append(item)
            if len(items) >= limit:
                break
        if len(refs) < page:
            break
        after = refs[-1].first_seq
    return items


async def _attach_commands(store: EventStore, sessions: list[dict[str, Any]]) -> None:
    ids = [store.key_text(s["session_id"]) for s in sessions]
    by_session: dict[str, list[dict[str, Any]]] = {sid: [] for sid in ids}
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        for ev in await store.select(Query(kinds=("websh_command",), keys=chunk)):
            by_session[store.key_text(ev["data"]["session_id"])].append(session_command(ev))
    for s in sessions:
        cmds = by_session[store.key_text(s["session_id"])]
        cmds.sort(key=lambda c: (c["seq"], c["received_seq"]))
        s["commands"] = cmds
        s["commands_recorded"] = len(cmds)

"""Tests of the reference receiver, driven over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from agent.events import format_ts, new_id
from receiver.app import INGEST_PATH, IngestError, make_app, start
from receiver.faults import FaultInjector, FaultSettings
from tests.services import PostgresServer

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = 1_790_000_000.0


def ev(
    kind: str,
    data: dict[str, Any],
    *,
    id: str | None = None,
    ts: float | None = None,
    server: str = "web-01",
) -> dict[str, Any]:
    return {
        "id": id or new_id(),
        "kind": kind,
        "ts": format_ts(T0 if ts is None else ts),
        "server": server,
        "data": data,
    }


def log_ev(
    message: str,
    *,
    ts: float | None = None,
    server: str = "web-01",
    program: str = "sshd",
    level: str = "info",
    id: str | None = None,
) -> dict[str, Any]:
    return ev(
        "system_log",
        {"program": program, "level": level, "pid": 1, "message": message},
        ts=ts,
        server=server,
        id=id,
    )


def batch(events: list[dict[str, Any]], batch_id: str | None = None) -> dict[str, Any]:
    return {
        "schema": 1,
        "agent": {"id": "agent-1", "server": "web-01", "hostname": "web-01", "version": "0.1.0"},
        "batch_id": batch_id or new_id("b"),
        "sent_at": format_ts(T0),
        "events": events,
    }


@dataclass
class Receiver:
    url: str
    http: aiohttp.ClientSession

    async def post(
        self,
        body: Any,
        *,
        gz: bool = True,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        data = raw if raw is not None else orjson.dumps(body)
        h = {"Content-Type": "application/json", **AUTH}
        if gz and raw is None:
            data = gzip.compress(data)
            h["Content-Encoding"] = "gzip"
        if isinstance(body, dict) and "batch_id" in body:
            h["Idempotency-Key"] = body["batch_id"]
        h.update(headers or {})
        async with self.http.post(self.url + INGEST_PATH, data=data, headers=h) as resp:
            text = await resp.read()
            return resp.status, orjson.loads(text) if text else None, resp

    async def get(
        self, path: str, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        async with self.http.get(
            self.url + path, params=params, headers=AUTH if headers is None else headers
        ) as r:
            return r.status, orjson.loads(await r.read())

    async def ok(self, path: str, **params: Any) -> Any:
        status, body = await self.get(path, {k: str(v) for k, v in params.items()})
        assert status == 200, body
        return body

    async def faults(self, **changes: Any) -> Any:
        async with self.http.post(self.url + "/api/v1/_faults", json=changes, headers=AUTH) as r:
            return r.status, await r.json()


async def _serve(db: str, mode: str = "store", **faults: Any) -> AsyncIterator[Receiver]:
    app = make_app(token=TOKEN, db_path=db, mode=mode, faults=FaultSettings(**faults))
    runner, port = await start(app, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            yield Receiver(f"http://127.0.0.1:{port}", http)
    finally:
        await runner.cleanup()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """Every store test runs on both backends: a SQLite file, and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "r.db")
    pg: PostgresServer = request.getfixturevalue("postgres")
    return pg.new_database()


@pytest.fixture
async def rx(db: str) -> AsyncIterator[Receiver]:
    async for r in _serve(db):
        yield r


@pytest.fixture
async def counter(tmp_path: Any) -> AsyncIterator[Receiver]:
    async for r in _serve(str(tmp_path / "r.db"), mode="count"):
        yield r


class TestReceiverIngest:
    async def test_stores_a_batch_and_answers_counts(self, rx: Receiver) -> None:
        """A valid gzip batch is stored and answered with stored/duplicates counts."""
        status, body, _ = await rx.post(batch([log_ev("a"), log_ev("b")]))
        assert (status, body) == (200, {"stored": 2, "duplicates": 0})
        events = (await rx.ok("/api/v1/events"))["events"]
        assert [e["data"]["message"] for e in events] == ["a", "b"]
        assert events[0]["seq"] < events[1]["seq"]

    async def test_identity_encoding_is_accepted(self, rx: Receiver) -> None:
        """An uncompressed body (no Content-Encoding) is accepted as well."""
        status, body, _ = await rx.post(batch([log_ev("plain")]), gz=False)
        assert (status, body["stored"]) == (200, 1)

    async def test_auth_is_required(self, rx: Receiver) -> None:
        """Missing, wrong or non-bearer credentials get 401 and store nothing."""
        b = batch([log_ev("x")])
        for headers in (
            {"Authorization": ""},
            {"Authorization": "Bearer nope"},
            {"Authorization": f"Basic {TOKEN}"},
        ):
            status, body, resp = await rx.post(b, headers=headers)
            assert status == 401 and "token" in body["error"]
            assert resp.headers["WWW-Authenticate"] == "Bearer"
        assert (await rx.ok("/api/v1/stats"))["stored"] == 0
        status, _ = await rx.get("/api/v1/system-logs", headers={})
        assert status == 401
        assert (await rx.ok("/api/v1/stats"))["requests_by_status"] == {"401": 3}

    async def test_healthz_needs_no_token(self, rx: Receiver) -> None:
        """/healthz answers without credentials."""
        assert await rx.get("/healthz", headers={}) == (200, {"ok": True, "mode": "store"})

    async def test_replayed_batch_is_stored_once(self, rx: Receiver) -> None:
        """The same batch sent twice is stored once; the replay counts as duplicates."""
        b = batch([log_ev("one"), log_ev("two"), log_ev("three")])
        assert (await rx.post(b))[1] == {"stored": 3, "duplicates": 0}
        assert (await rx.post(b))[1] == {"stored": 0, "duplicates": 3}
        stats = await rx.ok("/api/v1/stats")
        assert stats["stored"] == 3 and stats["duplicates"] == 3
        assert stats["batches_accepted"] == 2 and stats["batches_distinct"] == 1
        assert stats["received"] == 6
        receipts = (await rx.ok("/api/v1/batches"))["batches"]
        assert [r["idempotency_key"] for r in receipts] == [b["batch_id"]] * 2
        assert [(r["stored"], r["duplicates"]) for r in receipts] == [(3, 0), (0, 3)]

    async def test_overlapping_batches_and_repeats_within_a_batch(self, rx: Receiver) -> None:
        """Ids repeated inside a batch or across different batches are stored once."""
        a, b, c = log_ev("a"), log_ev("b"), log_ev("c")
        assert (await rx.post(batch([a, a, b])))[1] == {"stored": 2, "duplicates": 1}
        assert (await rx.post(batch([b, c])))[1] == {"stored": 1, "duplicates": 1}
        ids = (await rx.ok("/api/v1/ids"))["ids"]
        assert ids == [a["id"], b["id"], c["id"]]

    async def test_schema_error_names_the_field(self, rx: Receiver) -> None:
        """An invalid event gets 400 with a reason naming the event, kind and field; nothing stored."""
        bad = ev("command", {"command_id": "c1", "shell": "system", "line": "ls"})
        status, body, _ = await rx.post(batch([log_ev("fine"), bad]))
        assert status == 400
        assert "events[1]" in body["error"] and "status" in body["error"]
        assert "(command)" in body["error"]
        assert (await rx.ok("/api/v1/stats"))["stored"] == 0

    @pytest.mark.parametrize(
        ("mutate", "field"),
        [
            (lambda b: b.pop("agent"), "agent"),
            (lambda b: b.update(schema=2), "schema"),
            (lambda b: b.update(batch_id="x"), "batch_id"),
            (lambda b: b.update(events=[]), "events"),
            (lambda b: b["events"][0].update(kind="nope"), "kind"),
            (lambda b: b["events"][0].update(ts="yesterday"), "ts"),
            (lambda b: b["events"][0]["data"].update(level="loud"), "level"),
            (lambda b: b.update(extra=1), "extra"),
        ],
    )
    async def test_invalid_batches_are_rejected(
        self, rx: Receiver, mutate: Any, field: str
    ) -> None:
        """Each kind of schema violation is a 400 whose reason names the field."""
        b = batch([log_ev("x")])
        mutate(b)
        status, body, _ = await rx.post(b)
        assert status == 400 and field in body["error"], body

    @pytest.mark.parametrize(
        ("raw", "headers", "status", "words"),
        [
            (b"\x00\xffnot json at all", {}, 400, "JSON"),
            (b"[1, 2, 3]", {}, 400, "schema"),
            (b'{"schema": 1', {}, 400, "JSON"),
            (b"", {}, 400, "JSON"),
            (b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}, 400, "gzip"),
            (gzip.compress(b'{"a": 1}')[:-6], {"Content-Encoding": "gzip"}, 400, "truncated"),
            (gzip.compress(b"{}") + b"tail", {"Content-Encoding": "gzip"}, 400, "after the end"),
            (b"[" * 5000 + b"]" * 5000, {}, 400, "JSON"),
            (b'{"schema": 1, "events": "' + b"x" * 100_000 + b'"}', {}, 400, "schema"),
            (b"{}", {"Content-Encoding": "br"}, 415, "Content-Encoding"),
            (b"{}", {"Content-Type": "text/plain"}, 415, "Content-Type"),
            ('{"é": "\udcff"}'.encode("utf-8", "surrogatepass"), {}, 400, "JSON"),
        ],
    )
    async def test_garbage_bodies_are_refused(
        self, rx: Receiver, raw: bytes, headers: dict[str, str], status: int, words: str
    ) -> None:
        """Non-JSON, corrupt gzip, unknown encodings and content types get a reasoned error."""
        got, body, _ = await rx.post(None, raw=raw, headers=headers)
        assert got == status and words in body["error"], body
        # the receiver keeps serving
        assert (await rx.post(batch([log_ev("after")])))[0] == 200

    async def test_gzip_bomb_is_refused_without_inflating_it(self, rx: Receiver) -> None:
        """A small gzip body inflating past the cap gets 413 and the receiver stays up."""
        comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        chunk = b"\0" * (1 << 20)
        bomb = b"".join(comp.compress(chunk) for _ in range(256)) + comp.flush()  # 256 MiB
        assert len(bomb) < 1 << 20
        status, body, _ = await rx.post(None, raw=bomb, headers={"Content-Encoding": "gzip"})
        assert status == 413 and "decompressed" in body["error"]
        assert (await rx.post(batch([log_ev("alive")])))[0] == 200

    async def test_oversize_bodies_get_413(self, rx: Receiver) -> None:
        """Bodies over the sent or the decompressed cap get 413; under the caps they pass."""
        await rx.faults(max_body_bytes=20_000, max_compressed_bytes=10_000)
        big = batch([log_ev("x" * 1000) for _ in range(30)])
        status, body, _ = await rx.post(big, gz=False)
        assert status == 413 and "exceeds" in body["error"]
        status, body, _ = await rx.post(big)  # compresses small, inflates past 20 kB
        assert status == 413 and "decompressed" in body["error"]
        assert (await rx.post(batch([log_ev("x" * 1000) for _ in range(5)])))[0] == 200

    async def test_chunked_oversize_body_gets_413(self, rx: Receiver) -> None:
        """A body sent without Content-Length is still capped while it streams in."""
        await rx.faults(max_compressed_bytes=50_000)

        async def gen() -> AsyncIterator[bytes]:
            for _ in range(100):
                yield b"x" * 1000

        h = {"Content-Type": "application/json", **AUTH}
        async with rx.http.post(rx.url + INGEST_PATH, data=gen(), headers=h) as resp:
            assert resp.status == 413


def _variants() -> list[Any]:
    """Valid and invalid batches covering each kind, for the validation cross-check."""
    good = [
        log_ev("x"),
        ev(
            "websh_session",
            {"session_id": "s1", "username": "u", "started_at": format_ts(T0), "state": "open"},
        ),
        ev("websh_command", {"session_id": "s1", "seq": 0, "command": "ls"}),
        ev(
            "webftp_transfer",
            {"username": "u", "type": "upload", "path": "/a", "status": "success"},
        ),
        ev("command", {"command_id": "c", "shell": "system", "line": "ls", "status": "running"}),
        ev("user_activity", {"user": "u", "action": "login", "result": 200}),
        ev("metrics", {"cpu": {}, "memory": {}}),
    ]
    out: list[Any] = [batch(good), [], "x", None, {}, batch([])]
    breakers = [
        lambda e: e.pop("id"),
        lambda e: e.update(id="!bad id"),
        lambda e: e.update(kind="nope"),
        lambda e: e.update(server=""),
        lambda e: e.update(data=[]),
        lambda e: e["data"].update(unknown_field=1),
        lambda e: e["data"].clear(),
        lambda e: e.update(extra=True),
    ]
    for i, g in enumerate(good):
        for br in breakers:
            e = orjson.loads(orjson.dumps(g))
            br(e)
            out.append(batch([good[(i + 1) % len(good)], e]))
    b = batch(good)
    b["agent"]["version"] = "v" * 65
    out.append(b)
    return out


class TestReceiverValidation:
    def test_kind_dispatch_agrees_with_the_full_schema(self) -> None:
        """The receiver's per-kind validation accepts and rejects exactly what the schema does."""
        from agent.schema import SchemaError, validate_batch
        from receiver.validation import check_batch

        for b in _variants():
            try:
                validate_batch(b)
                expected = True
            except SchemaError:
                expected = False
            try:
                check_batch(b)
                got = True
            except SchemaError:
                got = False
            assert got == expected, b


class TestReceiverViews:
    async def test_system_logs_shape_and_filters(self, rx: Receiver) -> None:
        """system-logs rows flatten the event; server/since/until/limit/program/level/q filter."""
        evs = [
            log_ev("boot ok", ts=T0, server="web-01", program="kernel"),
            log_ev("disk error", ts=T0 + 10, server="web-02", level="error"),
            log_ev("login from 10.0.0.1", ts=T0 + 20, server="web-01"),
            log_ev("late", ts=T0 + 30, server="web-01"),
        ]
        await rx.post(batch(evs))
        body = await rx.ok("/api/v1/system-logs")
        assert body["view"] == "system-logs" and body["count"] == 4
        row = body["items"][0]
        assert {"id", "received_seq", "server", "ts", "program", "level", "pid", "message"} <= set(
            row
        )
        assert row["program"] == "kernel" and row["ts"] == format_ts(T0)

        def msgs(b: Any) -> list[str]:
            return [r["message"] for r in b["items"]]

        assert msgs(await rx.ok("/api/v1/system-logs", server="web-02")) == ["disk error"]
        assert msgs(
            await rx.ok("/api/v1/system-logs", since=format_ts(T0 + 10), until=format_ts(T0 + 30))
        ) == ["disk error", "login from 10.0.0.1"]
        assert msgs(await rx.ok("/api/v1/system-logs", since=T0 + 25)) == ["late"]
        assert msgs(await rx.ok("/api/v1/system-logs", limit=2)) == ["boot ok", "disk error"]
        assert msgs(await rx.ok("/api/v1/system-logs", program="kernel")) == ["boot ok"]
        assert msgs(await rx.ok("/api/v1/system-logs", level="error")) == ["disk error"]
        assert msgs(await rx.ok("/api/v1/system-logs", q="10.0.0")) == ["login from 10.0.0.1"]
        page = await rx.ok("/api/v1/system-logs", limit=3)
        rest = await rx.ok("/api/v1/system-logs", after=page["next_after"])
        assert msgs(rest) == ["late"]

    async def test_rows_come_in_arrival_order(self, rx: Receiver) -> None:
        """Rows are ordered by arrival, not by event time."""
        await rx.post(batch([log_ev("second", ts=T0 + 5)]))
        await rx.post(batch([log_ev("first", ts=T0)]))
        items = (await rx.ok("/api/v1/system-logs"))["items"]
        assert [r["message"] for r in items] == ["second", "first"]

    async def test_websh_sessions_merge_with_their_commands(self, rx: Receiver) -> None:
        """A session merges open/closed events and lists its commands ordered by seq."""
        sid = "sess-0001"
        opened = ev(
            "websh_session",
            {
                "session_id": sid,
                "username": "alice",
                "groupname": "dev",
                "operator": "Alice Kim",
                "browser": "Firefox",
                "remote_ip": "10.1.2.3",
                "started_at": format_ts(T0),
                "state": "open",
            },
            ts=T0,
        )
        closed = ev(
            "websh_session",
            {
                "session_id": sid,
                "username": "alice",
                "started_at": format_ts(T0),
                "ended_at": format_ts(T0 + 90),
                "state": "closed",
                "command_count": 3,
                "exit_status": 0,
            },
            ts=T0 + 90,
        )
        cmds = [
            ev(
                "websh_command",
                {"session_id": sid, "seq": n, "command": c, "exit_code": 0, "cwd": "/root"},
                ts=T0 + n,
            )
            for n, c in ((2, "uptime"), (0, "ls -la"), (1, "whoami"))
        ]
        other = ev(
            "websh_session",
            {
                "session_id": "sess-0002",
                "username": "bob",
                "started_at": format_ts(T0 + 100),
                "state": "open",
            },
            ts=T0 + 100,
            server="web-02",
        )
        # closed arrives before open: the merge must still say closed
        await rx.post(batch([cmds[0], closed]))
        await rx.post(batch([opened, cmds[1], cmds[2], other]))
        body = await rx.ok("/api/v1/websh-sessions")
        assert body["count"] == 2
        s = body["items"][0]
        assert s["session_id"] == sid and s["state"] == "closed"
        assert (s["username"], s["groupname"], s["operator"], s["browser"], s["remote_ip"]) == (
            "alice",
            "dev",
            "Alice Kim",
            "Firefox",
            "10.1.2.3",
        )
        assert s["started_at"] == format_ts(T0) and s["duration_ms"] == 90_000
        assert s["server"] == "web-01"
        assert [c["command"] for c in s["commands"]] == ["ls -la", "whoami", "uptime"]
        assert [c["seq"] for c in s["commands"]] == [0, 1, 2]
        assert s["commands_recorded"] == 3 and len(s["event_ids"]) == 2
        assert body["items"][1]["state"] == "open" and body["items"][1]["commands"] == []
        assert (await rx.ok("/api/v1/websh-sessions", username="bob"))["items"][0][
            "session_id"
        ] == "sess-0002"
        assert (await rx.ok("/api/v1/websh-sessions", server="web-02"))["count"] == 1
        assert (await rx.ok("/api/v1/websh-sessions", state="closed"))["count"] == 1
        assert (await rx.ok("/api/v1/websh-sessions", since=T0 + 50))["count"] == 1
        assert (await rx.ok("/api/v1/websh-sessions", limit=1))["count"] == 1

    async def test_commands_merge_with_status_history(self, rx: Receiver) -> None:
        """A command shows its latest status and the history of every change in order."""
        base = {"command_id": "cmd-1", "shell": "system", "line": "apt update", "operator": "alice"}
        sched = ev("command", {**base, "status": "scheduled"}, ts=T0)
        run = ev(
            "command", {**base, "status": "running", "started_at": format_ts(T0 + 1)}, ts=T0 + 1
        )
        done = ev(
            "command", {**base, "status": "success", "exit_code": 0, "result": "done"}, ts=T0 + 5
        )
        internal = ev(
            "command",
            {
                "command_id": "cmd-2",
                "shell": "internal",
                "line": "sync",
                "status": "failed",
                "exit_code": 1,
            },
            ts=T0 + 6,
        )
        # delivered out of order, as retries can do
        await rx.post(batch([done, internal]))
        await rx.post(batch([sched, run]))
        body = await rx.ok("/api/v1/commands")
        c = body["items"][0]
        assert c["command_id"] == "cmd-1" and c["status"] == "success"
        assert [h["status"] for h in c["history"]] == ["scheduled", "running", "success"]
        assert c["exit_code"] == 0 and c["result"] == "done" and c["line"] == "apt update"
        assert c["started_at"] == format_ts(T0 + 1) and c["ts"] == format_ts(T0)
        assert (await rx.ok("/api/v1/commands", status="failed"))["items"][0][
            "command_id"
        ] == "cmd-2"
        assert (await rx.ok("/api/v1/commands", shell="internal"))["count"] == 1
        assert (await rx.ok("/api/v1/commands", operator="alice"))["count"] == 1

    async def test_webftp_activity_and_metrics_views(self, rx: Receiver) -> None:
        """webftp-transfers, user-activity and metrics show their events with kind filters."""
        up = ev(
            "webftp_transfer",
            {
                "username": "alice",
                "type": "upload",
                "path": "/srv/a.txt",
                "object_name": "a.txt",
                "size": 12,
                "status": "success",
                "remote_ip": "10.0.0.9",
            },
        )
        down = ev(
            "webftp_transfer",
            {"username": "bob", "type": "download", "path": "/srv/b", "status": "failed"},
        )
        login = ev(
            "user_activity", {"user": "alice", "action": "login", "result": 200, "ip": "10.0.0.9"}
        )
        bad = ev("user_activity", {"user": "eve", "action": "login_failed", "result": 401})
        m = ev(
            "metrics",
            {"cpu": {"percent": 3.5}, "memory": {"percent": 40.0}, "load": [0.1, 0.2, 0.3]},
        )
        await rx.post(batch([up, down, login, bad, m]))
        ftp = await rx.ok("/api/v1/webftp-transfers")
        assert [
            (r["username"], r["type"], r["size"] if "size" in r else None) for r in ftp["items"]
        ] == [("alice", "upload", 12), ("bob", "download", None)]
        assert (await rx.ok("/api/v1/webftp-transfers", type="download"))["count"] == 1
        assert (await rx.ok("/api/v1/webftp-transfers", status="success"))["items"][0][
            "object_name"
        ] == "a.txt"
        act = await rx.ok("/api/v1/user-activity", result=401)
        assert [(r["user"], r["action"]) for r in act["items"]] == [("eve", "login_failed")]
        assert (await rx.ok("/api/v1/user-activity", user="alice"))["items"][0]["ip"] == "10.0.0.9"
        met = (await rx.ok("/api/v1/metrics"))["items"]
        assert met[0]["cpu"] == {"percent": 3.5} and met[0]["load"] == [0.1, 0.2, 0.3]

    @pytest.mark.parametrize(
        ("path", "params", "status", "words"),
        [
            ("/api/v1/system-logs", {"bogus": "1"}, 400, "bogus"),
            ("/api/v1/system-logs", {"since": "last tuesday"}, 400, "since"),
            ("/api/v1/system-logs", {"until": "1e400"}, 400, "until"),
            ("/api/v1/system-logs", {"limit": "0"}, 400, "limit"),
            ("/api/v1/system-logs", {"limit": "ten"}, 400, "limit"),
            ("/api/v1/system-logs", {"after": "-1"}, 400, "after"),
            ("/api/v1/user-activity", {"result": "ok"}, 400, "result"),
            ("/api/v1/commands", {"program": "x"}, 400, "program"),
            ("/api/v1/events", {"kind": "nope"}, 400, "kind"),
            ("/api/v1/ids", {"x": "1"}, 400, "x"),
            ("/api/v1/no-such-view", {}, 404, "no-such-view"),
        ],
    )
    async def test_bad_query_parameters(
        self, rx: Receiver, path: str, params: dict[str, str], status: int, words: str
    ) -> None:
        """Unknown or malformed query parameters get an error naming them."""
        got, body = await rx.get(path, params)
        assert got == status and words in body["error"], body

    async def test_raw_events_and_ids(self, rx: Receiver) -> None:
        """/events pages raw events in arrival order by kind; /ids lists every id."""
        a = log_ev("a")
        m = ev("metrics", {"cpu": {}, "memory": {}})
        b = log_ev("b")
        await rx.post(batch([a, m, b]))
        evs = (await rx.ok("/api/v1/events", kind="system_log"))["events"]
        assert [e["id"] for e in evs] == [a["id"], b["id"]]
        assert evs[0]["data"] == a["data"] and evs[0]["batch_id"]
        page = await rx.ok("/api/v1/events", limit=1)
        assert page["count"] == 1
        nxt = await rx.ok("/api/v1/events", after=page["next_after"])
        assert [e["id"] for e in nxt["events"]] == [m["id"], b["id"]]
        assert (await rx.ok("/api/v1/ids", kind="metrics"))["ids"] == [m["id"]]
        assert (await rx.ok("/api/v1/ids", kind="metrics,system_log"))["count"] == 3
        stats = await rx.ok("/api/v1/stats")
        assert stats["stored_by_kind"] == {"system_log": 2, "metrics": 1}

    async def test_ids_page_with_limit_and_after(self, rx: Receiver) -> None:
        """/ids honours limit and pages on with next_after until every id was listed once."""
        evs = [log_ev(f"p{i}") for i in range(25)]
        await rx.post(batch(evs))
        seen: list[str] = []
        after = 0
        while True:
            page = await rx.ok("/api/v1/ids", limit=10, after=after)
            assert page["count"] <= 10
            seen += page["ids"]
            if page["count"] < 10:
                break
            after = page["next_after"]
        assert seen == [e["id"] for e in evs]
        assert (await rx.get("/api/v1/ids", {"limit": "0"}))[0] == 400

    async def test_hostile_text_is_stored_exactly(self, rx: Receiver) -> None:
        """NUL, a literal backslash-u0000 and non-BMP text in data, keys and the server survive a round trip."""
        nasty = "a\x00b \\u0000 \U0001f600 \u202e"
        e = ev("command", {"command_id": "c\x00id", "shell": "system", "line": nasty, "status": "running",
                           "result": nasty}, server="srv\x00x")
        m = ev("metrics", {"cpu": {"k\x00": [nasty]}, "memory": {}})
        assert (await rx.post(batch([e, m])))[1] == {"stored": 2, "duplicates": 0}
        got = (await rx.ok("/api/v1/events"))["events"]
        assert [g["data"] for g in got] == [e["data"], m["data"]]
        cmd = (await rx.ok("/api/v1/commands"))["items"][0]
        assert cmd["line"] == nasty and cmd["history"][0]["status"] == "running"
        assert (await rx.ok("/api/v1/commands", status="running"))["count"] == 1
        assert (await rx.post(batch([e])))[1] == {"stored": 0, "duplicates": 1}


class TestReceiverFaults:
    async def test_error_rate_answers_503_and_stores_nothing(self, rx: Receiver) -> None:
        """With error_rate 1 every batch gets 503 and nothing is stored."""
        await rx.faults(error_rate=1.0)
        for _ in range(3):
            assert (await rx.post(batch([log_ev("x")])))[0] == 503
        stats = await rx.ok("/api/v1/stats")
        assert stats["stored"] == 0 and stats["requests_by_status"] == {"503": 3}
        assert stats["faults_injected"] == {"503": 3}

    async def test_throttle_answers_429_with_retry_after(self, rx: Receiver) -> None:
        """With throttle_rate 1 every batch gets 429 carrying Retry-After."""
        await rx.faults(throttle_rate=1.0, retry_after=7)
        status, body, resp = await rx.post(batch([log_ev("x")]))
        assert status == 429 and resp.headers["Retry-After"] == "7"
        assert "429" in body["error"]
        assert (await rx.ok("/api/v1/stats"))["stored"] == 0

    async def test_slow_answers_are_delayed(self, rx: Receiver) -> None:
        """A slow answer arrives no sooner than slow_ms and still stores the batch."""
        await rx.faults(slow_rate=1.0, slow_ms=300)
        t = time.monotonic()
        status, body, _ = await rx.post(batch([log_ev("x")]))
        assert time.monotonic() - t >= 0.3
        assert (status, body["stored"]) == (200, 1)
        assert (await rx.ok("/api/v1/stats"))["faults_injected"] == {"slow": 1}

    async def test_dropped_connections_get_no_answer(self, rx: Receiver) -> None:
        """A dropped request sees the connection close without an answer; nothing is stored."""
        await rx.faults(drop_rate=1.0)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await rx.post(batch([log_ev("x")]))
        stats = await rx.ok("/api/v1/stats")
        assert stats["stored"] == 0 and stats["requests_by_status"] == {"dropped": 1}
        await rx.faults(drop_rate=0.0)
        assert (await rx.post(batch([log_ev("y")])))[0] == 200

    async def test_forced_status_until_cleared(self, rx: Receiver) -> None:
        """force_status answers every request with it until set back to null."""
        b = batch([log_ev("x")])
        await rx.faults(force_status=401)
        assert (await rx.post(b))[0] == 401
        await rx.faults(force_status=400)
        assert (await rx.post(b))[0] == 400
        await rx.faults(force_status=None)
        assert (await rx.post(b))[1] == {"stored": 1, "duplicates": 0}

    async def test_fail_after_store_causes_a_harmless_replay(self, rx: Receiver) -> None:
        """fail-after-store stores then answers 503; the resend is all duplicates."""
        b = batch([log_ev("a"), log_ev("b")])
        await rx.faults(fail_after_store_rate=1.0)
        assert (await rx.post(b))[0] == 503
        assert (await rx.ok("/api/v1/stats"))["stored"] == 2
        await rx.faults(fail_after_store_rate=0.0)
        assert (await rx.post(b))[1] == {"stored": 0, "duplicates": 2}

    async def test_script_gives_an_exact_sequence(self, rx: Receiver) -> None:
        """A script of outcomes is applied one per request, then normal service resumes."""
        await rx.faults(script=[503, 429, "drop", "fail_after_store", "ok"])
        b = batch([log_ev("x")])
        assert (await rx.post(b))[0] == 503
        assert (await rx.post(b))[0] == 429
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await rx.post(b)
        assert (await rx.post(b))[0] == 503
        assert (await rx.post(b))[1] == {"stored": 0, "duplicates": 1}
        assert (await rx.post(b))[0] == 200
        _, current = await rx.get("/api/v1/_faults")
        assert current["settings"]["script"] == []

    async def test_random_faults_hit_their_share(self, rx: Receiver) -> None:
        """With a seed, a 30% 503 share and some 429s land near their shares; oks store."""
        await rx.faults(error_rate=0.3, throttle_rate=0.2, seed=42)
        outcomes: dict[int, int] = {}
        for _ in range(200):
            status = (await rx.post(batch([log_ev("x")])))[0]
            outcomes[status] = outcomes.get(status, 0) + 1
        assert 40 <= outcomes[503] <= 80 and outcomes[429] >= 15
        stats = await rx.ok("/api/v1/stats")
        assert stats["stored"] == outcomes[200]

    async def test_bad_fault_settings_are_refused(self, rx: Receiver) -> None:
        """Invalid fault settings get 400 naming the field and leave the settings unchanged."""
        for bad in (
            {"error_rate": 2},
            {"force_status": 200},
            {"nope": 1},
            {"script": ["explode"]},
            {"reset": "yes"},
        ):
            status, body = await rx.faults(**bad)
            assert status == 400 and next(iter(bad)) in body["error"], body
        async with rx.http.post(rx.url + "/api/v1/_faults", data=b"[", headers=AUTH) as r:
            assert r.status == 400
        async with rx.http.post(rx.url + "/api/v1/_faults", json={}) as r:
            assert r.status == 401
        assert (await rx.post(batch([log_ev("x")])))[0] == 200

    async def test_reset_restores_start_settings(self, db: str) -> None:
        """reset goes back to the settings given at start, not to no faults at all."""
        async for r in _serve(db, throttle_rate=1.0):
            assert (await r.post(batch([log_ev("x")])))[0] == 429
            await r.faults(throttle_rate=0.0)
            assert (await r.post(batch([log_ev("x")])))[0] == 200
            status, body = await r.faults(reset=True)
            assert status == 200 and body["settings"]["throttle_rate"] == 1.0
            assert (await r.post(batch([log_ev("x")])))[0] == 429

    def test_seed_makes_draws_repeatable(self) -> None:
        """Two injectors with the same seed decide the same sequence of faults."""
        s = FaultSettings(error_rate=0.3, throttle_rate=0.2, drop_rate=0.1, seed=7)
        a, b = FaultInjector(s), FaultInjector(s)
        assert [a.decide() for _ in range(100)] == [b.decide() for _ in range(100)]


class TestReceiverCountMode:
    async def test_counts_events_duplicates_and_sequence_gaps(self, counter: Receiver) -> None:
        """Count mode counts per kind, duplicate ids and per-source seq gaps/dups/reorders."""
        evs = [log_ev(f"src=a seq={n}") for n in (0, 1, 2, 4, 3)] + [log_ev("seq=0")]
        evs.append(ev("metrics", {"cpu": {}, "memory": {}}))
        status, body, _ = await counter.post(batch(evs))
        assert (status, body) == (200, {"stored": 7, "duplicates": 0})
        dup = log_ev("src=a seq=4")
        status, body, _ = await counter.post(batch([evs[0], dup]))
        assert body == {"stored": 1, "duplicates": 1}
        stats = await counter.ok("/api/v1/stats")
        assert stats["mode"] == "count"
        assert stats["stored_by_kind"] == {"system_log": 7, "metrics": 1}
        assert stats["duplicates"] == 1 and stats["batches_accepted"] == 2
        a = stats["sources"]["web-01/a"]
        assert (a["distinct"], a["duplicates"], a["missing"], a["out_of_order"]) == (5, 1, 0, 1)
        assert stats["sources"]["web-01/system_log"]["max"] == 0
        assert stats["ingest_events_per_s"] is not None

    async def test_count_mode_reports_missing_sequence_numbers(self, counter: Receiver) -> None:
        """Gaps in a source's seq numbers are reported as missing."""
        await counter.post(batch([log_ev(f"src=b seq={n}") for n in (0, 1, 5)]))
        stats = await counter.ok("/api/v1/stats")
        assert stats["sources"]["web-01/b"]["missing"] == 3

    async def test_count_mode_refuses_garbage_and_has_no_views(self, counter: Receiver) -> None:
        """Count mode still checks auth, gzip and JSON shape; the views are not served."""
        assert (await counter.post(None, raw=b"nope"))[0] == 400
        assert (await counter.post({"events": [{"kind": "x"}]}))[0] == 400
        assert (await counter.post(batch([log_ev("x")]), headers={"Authorization": ""}))[0] == 401
        status, body = await counter.get("/api/v1/system-logs")
        assert status == 404 and "count mode" in body["error"]


def _spawn(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "receiver.cli", "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening on http://127.0.0.1:"):
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"no listening line: {line!r} {err!r}")
    return proc, line.split()[-1]


class TestReceiverCLI:
    async def test_command_serves_with_token_file_and_faults(self, tmp_path: Any) -> None:
        """The command prints its URL, reads the token file, applies fault flags, stops on SIGTERM."""
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        db = tmp_path / "rx.db"
        proc, url = _spawn("--token-file", str(token_file), "--db", str(db), "--error-rate", "1")
        try:
            async with aiohttp.ClientSession() as http:
                r = Receiver(url, http)
                assert (await r.post(batch([log_ev("x")])))[0] == 503
                await r.faults(error_rate=0.0)
                assert (await r.post(batch([log_ev("x")])))[1]["stored"] == 1
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=10)
        assert proc.returncode == 0 and db.exists()

    async def test_memory_db_and_no_token(self) -> None:
        """--db :memory: stores and serves views; without a token no credentials are needed."""
        proc, url = _spawn("--db", ":memory:")
        try:
            async with aiohttp.ClientSession() as http:
                r = Receiver(url, http)
                status, body, _ = await r.post(batch([log_ev("m")]), headers={"Authorization": ""})
                assert (status, body["stored"]) == (200, 1)
                assert (await r.get("/api/v1/system-logs", headers={}))[1]["count"] == 1
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=10)
        assert proc.returncode == 0

    async def test_postgres_db_persists_across_restarts(self, postgres: PostgresServer) -> None:
        """--db postgresql://… stores into PostgreSQL; a restarted receiver serves what was stored."""
        url = postgres.new_database()
        first = log_ev("kept", ts=time.time())  # inside the retention
        for round_ in range(2):
            proc, rx_url = _spawn("--token", TOKEN, "--db", url, "--retention-days", "30")
            try:
                async with aiohttp.ClientSession() as http:
                    r = Receiver(rx_url, http)
                    if round_ == 0:
                        assert (await r.post(batch([first])))[1]["stored"] == 1
                    else:
                        assert (await r.ok("/api/v1/ids"))["ids"] == [first["id"]]
                        assert (await r.post(batch([first])))[1] == {"stored": 0, "duplicates": 1}
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=10)
            assert proc.returncode == 0

    def test_unreachable_postgres_exits_2_without_the_password(self) -> None:
        """A PostgreSQL that cannot be reached exits 2 naming --db, with the password masked."""
        res = subprocess.run(
            [sys.executable, "-m", "receiver.cli", "--listen", "127.0.0.1:0",
             "--db", "postgresql://u:hunter2secret@127.0.0.1:1/x"],
            capture_output=True, text=True, timeout=60,
        )
        assert res.returncode == 2 and "--db postgresql://u:***@127.0.0.1:1/x" in res.stderr, res.stderr
        assert "hunter2secret" not in res.stderr

    def test_default_db_is_temporary_and_removed(self) -> None:
        """Without --db the store lives in a temporary directory removed at exit."""
        proc, url = _spawn("--token", TOKEN, "--log-level", "info")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 0
        db_line = next(line for line in stderr.splitlines() if '"listening"' in line)
        db = orjson.loads(db_line)["db"]
        assert not os.path.exists(os.path.dirname(db))

    @pytest.mark.parametrize(
        ("args", "words"),
        [
            (["--token-file", "/nonexistent/token"], "token-file"),
            (["--error-rate", "1.5"], "error_rate"),
            (["--force-status", "200"], "force_status"),
            (["--db", "/nonexistent/dir/x.db"], "--db"),
            (["--retention-days", "7"], "PostgreSQL"),
            (["--db", "postgresql://u@127.0.0.1:1/x", "--retention-days", "0"], "at least 1"),
            (["--consume", "nats://127.0.0.1:1", "--mode", "count"], "--consume"),
            (["--consume", "nats://127.0.0.1:1"], "--consume nats://127.0.0.1:1"),
        ],
    )
    def test_bad_arguments_exit_2(self, args: list[str], words: str) -> None:
        """Bad flags, a missing token file or an unusable db exit 2 with the reason."""
        res = subprocess.run(
            [sys.executable, "-m", "receiver.cli", "--listen", "127.0.0.1:0", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 2 and words in res.stderr, res.stderr

    def test_port_in_use_fails_clearly(self) -> None:
        """Listening on a port already taken exits non-zero naming the address."""
        proc, url = _spawn("--token", TOKEN)
        try:
            port = url.rsplit(":", 1)[1]
            res = subprocess.run(
                [sys.executable, "-m", "receiver.cli", "--listen", f"127.0.0.1:{port}"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert res.returncode == 1 and f"127.0.0.1:{port}" in res.stderr
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=10)


class TestReceiverStoreFailure:
    async def test_store_error_is_a_500_with_the_reason(self, db: str, request: pytest.FixtureRequest) -> None:
        """When the store fails (here: the table is gone) the answer is 500 naming the store."""
        async for r in _serve(db):
            if db.startswith("postgresql://"):
                pg: PostgresServer = request.getfixturevalue("postgres")
                pg.psql("DROP TABLE events", database=db.rsplit("/", 1)[1])
            else:
                import sqlite3

                conn = sqlite3.connect(db)
                conn.execute("DROP TABLE events")
                conn.commit()
                conn.close()
            status, body, _ = await r.post(batch([log_ev("x")]))
            assert status == 500 and body["error"].startswith("store:")


class TestReceiverConcurrency:
    async def test_concurrent_replays_store_each_id_once(self, rx: Receiver) -> None:
        """Many overlapping batches sent at once still store every id exactly once."""
        pool = [log_ev(f"e{i}") for i in range(500)]
        batches = [batch(pool[i : i + 100]) for i in range(0, 500, 50)]
        results = await asyncio.gather(*(rx.post(b) for b in batches + batches))
        assert all(r[0] == 200 for r in results)
        stored = sum(r[1]["stored"] for r in results)
        assert stored == 500
        ids = (await rx.ok("/api/v1/ids"))["ids"]
        assert sorted(ids) == sorted(e["id"] for e in pool)


class TestCountSinkPaths:
    def test_uniform_path_counts_like_the_per_event_path(self) -> None:
        """Whole-batch counting gives the same stats as counting event by event, gaps and reorders included."""
        from receiver.count_sink import CountSink

        seqs = list(range(3000))
        del seqs[1234]  # a gap
        seqs[10], seqs[11] = seqs[11], seqs[10]  # a reorder
        batches = []
        for b in range(0, len(seqs), 250):
            evs = [{"id": f"e{n}", "kind": "system_log", "server": "s", "data": {"message": f"x seq={n} y"}}
                   for n in seqs[b:b + 250]]
            batches.append({"events": evs})
        batches.append(batches[3])  # a replayed batch
        batches.append({"events": [{"id": "odd", "kind": "metrics", "server": "s", "data": {"cpu": {}}}]})
        # shapes the whole-batch path must hand to the per-event one
        batches.append({"events": [{"id": "d1", "kind": "system_log", "server": "s", "data": []},
                                   {"id": "d2", "kind": "system_log", "server": "s", "data": {"message": 5}}]})
        batches.append({"events": [{"id": "d3", "kind": "system_log", "data": {"message": "seq=9000 seq=9001"}},
                                   {"id": 7, "kind": "system_log", "data": {"message": "no id string"}}]})
        fast, slow = CountSink(), CountSink()
        for batch in batches:
            outcomes = []
            for sink in (fast, slow):
                try:
                    outcomes.append(sink.add(batch) if sink is fast else sink._add_each(batch["events"]))
                except IngestError as exc:
                    outcomes.append(exc.status)
            assert outcomes[0] == outcomes[1], batch
        assert fast.stats() == slow.stats() and fast.received == slow.received
        src = fast.stats()["sources"]["s/system_log"]
        assert src["missing"] == 1 and src["out_of_order"] >= 1
        assert fast.duplicates == 250 and src["duplicates"] == 0  # a replayed id is a duplicate, not a seq

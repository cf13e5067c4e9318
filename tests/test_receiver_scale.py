"""The receiver at scale: views bounded on a large store, PostgreSQL shared by receivers, JetStream.

Real parts only: a PostgreSQL cluster of the tests' own (initdb/pg_ctl as the postgres user),
nats-server with JetStream, the agent process and receiver processes killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import gzip
import signal
import sqlite3
import threading
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import nats
import orjson
import pytest
from aiohttp import web

from agent.events import format_ts, new_id
from receiver.app import INGEST_PATH, make_app, start
from receiver.consumer import ConsumeSettings
from receiver.pg_sql import select_sql as pg_select_sql
from receiver.store import Query
from receiver.store_pg import PostgresStore
from receiver.store_sqlite import select_sql as sqlite_select_sql
from tests.harness import ReceiverProcess
from tests.services import NatsServer, PostgresServer
from tests.support import free_port, wait_until
from tests.test_durability import Producer

TOKEN = "scale-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _batch(events: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "schema": 1,
        "agent": {"id": "agent-1", "server": "web-01", "hostname": "web-01", "version": "0.1.0"},
        "batch_id": new_id("b"),
        "sent_at": format_ts(),
        "events": events,
    }


def _command(i: int, status: str, ts: float) -> dict[str, Any]:
    data: dict[str, Any] = {"command_id": f"cmd-{i:06d}", "shell": "system", "line": f"echo {i}", "status": status}
    if status in ("success", "failed"):
        data["exit_code"] = 0 if status == "success" else 1
    return {"id": new_id(), "kind": "command", "ts": format_ts(ts), "server": f"web-{i % 7:02d}", "data": data}


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "r.db")
    pg: PostgresServer = request.getfixturevalue("postgres")
    return pg.new_database()


async def _get(http: aiohttp.ClientSession, url: str, **params: Any) -> Any:
    async with http.get(url, params={k: str(v) for k, v in params.items()}, headers=AUTH) as r:
        body = orjson.loads(await r.read())
        assert r.status == 200, body
        return body


class TestViewsStayBounded:
    async def test_limit_1_on_100k_command_events_reads_one_record(self, db: str) -> None:
        """100k command events (50k commands): limit=1 merges one command from 2 rows, in bounded memory."""
        app = make_app(token=TOKEN, db_path=db)
        runner, port = await start(app)
        url = f"http://127.0.0.1:{port}"
        t0 = time.time() - 3600
        try:
            async with aiohttp.ClientSession() as http:
                async def post(events: list[dict[str, Any]]) -> None:
                    body = gzip.compress(orjson.dumps(_batch(events)), 1)
                    h = {**AUTH, "Content-Type": "application/json", "Content-Encoding": "gzip"}
                    async with http.post(url + INGEST_PATH, data=body, headers=h) as r:
                        assert r.status == 200, await r.text()

                n = 50_000
                for start_i in range(0, n, 1000):
                    evs = [_command(i, "running", t0 + i * 0.01) for i in range(start_i, start_i + 1000)]
                    evs += [_command(i, "failed" if i == n - 1 else "success", t0 + i * 0.01 + 0.005)
                            for i in range(start_i, start_i + 1000)]
                    await post(evs)
                await post([{"id": new_id(), "kind": "websh_session", "ts": format_ts(t0), "server": "web-01",
                             "data": {"session_id": f"s-{i}", "username": "u", "started_at": format_ts(t0),
                                      "state": "open"}} for i in range(3000)])
                stats = await _get(http, url + "/api/v1/stats")
                assert stats["stored_by_kind"]["command"] == 100_000

                async def measured(path: str, **params: Any) -> tuple[Any, int, int]:
                    before = (await _get(http, url + "/api/v1/stats"))["rows_read"]
                    tracemalloc.start()
                    try:
                        body = await _get(http, url + path, **params)
                        peak = tracemalloc.get_traced_memory()[1]
                    finally:
                        tracemalloc.stop()
                    return body, (await _get(http, url + "/api/v1/stats"))["rows_read"] - before, peak

                body, rows, peak = await measured("/api/v1/commands", limit=1)
                assert body["count"] == 1 and body["items"][0]["command_id"] == "cmd-000000"
                assert [h["status"] for h in body["items"][0]["history"]] == ["running", "success"]
                assert rows == 2, f"limit=1 read {rows} event rows"
                assert peak < 2 * 2**20, f"limit=1 peaked at {peak} bytes"

                body, rows, _ = await measured("/api/v1/commands", limit=50, after=body["next_after"])
                assert [c["command_id"] for c in body["items"]] == [f"cmd-{i:06d}" for i in range(1, 51)]
                assert rows == 100

                # a filter only the last command matches: every page is read, one page at a time
                body, rows, peak = await measured("/api/v1/commands", status="failed", limit=1)
                assert [c["command_id"] for c in body["items"]] == [f"cmd-{n - 1:06d}"]
                assert rows == 100_000
                assert peak < 24 * 2**20, f"a filtered scan peaked at {peak} bytes"

                body, rows, peak = await measured("/api/v1/websh-sessions", limit=1)
                assert body["count"] == 1 and body["items"][0]["session_id"] == "s-0"
                assert rows == 1 and peak < 2 * 2**20

                body, rows, _ = await measured("/api/v1/ids", limit=1)
                assert body["count"] == 1 and rows == 1
                # what the database itself reads for a page of 50 commands' events
                query = Query(kinds=("command",), keys=[f"cmd-{i:06d}" for i in range(100, 150)])
                touched = await _rows_touched(db, query)
                assert touched is None or touched <= 100, f"a 50-record page read {touched} rows"
        finally:
            await runner.cleanup()


async def _rows_touched(db: str, query: Query) -> int | None:
    """Rows the database reads for ``query``: EXPLAIN ANALYZE's scan rows (PostgreSQL); for SQLite
    the plan must search an index, never scan the table (None: SQLite does not count rows)."""
    if not db.startswith("postgresql://"):
        sql, args = sqlite_select_sql(query)
        conn = sqlite3.connect(db)
        try:
            plan = " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
        finally:
            conn.close()
        assert "SEARCH events USING INDEX events_kind_key" in plan and "SCAN" not in plan, plan
        return None
    sql, args = pg_select_sql(query)
    conn = await asyncpg.connect(db)
    try:
        plan = orjson.loads(await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args))
    finally:
        await conn.close()

    def walk(node: dict[str, Any]) -> int:
        own = 0
        if "Scan" in node["Node Type"] and node["Node Type"] != "Bitmap Index Scan":  # its heap scan counts
            own = node["Actual Rows"] * node["Actual Loops"] + node.get("Rows Removed by Filter", 0) \
                + node.get("Rows Removed by Index Recheck", 0)
        return own + sum(walk(child) for child in node.get("Plans", []))

    return walk(plan[0]["Plan"])


class TestPostgresRetention:
    async def test_old_day_partitions_are_dropped(self, postgres: PostgresServer) -> None:
        """Retention drops whole day partitions older than N days, with their merged records."""
        url = postgres.new_database()
        now = datetime.now(UTC)
        old, recent = (now - timedelta(days=10)).timestamp(), (now - timedelta(hours=1)).timestamp()
        store = PostgresStore(url, retention_days=3)
        await store.open()
        try:
            await store.store_batch(_batch([_command(1, "running", old), _command(2, "running", recent)]), None)
            days = await store.partitions()
            assert [d.isoformat() for d in days] == sorted({format_ts(old)[:10], format_ts(recent)[:10]})
            dropped = await store.sweep_retention()
            assert [d.isoformat() for d in dropped] == [format_ts(old)[:10]]
            assert [d.isoformat() for d in await store.partitions()] == [format_ts(recent)[:10]]
            assert [r.key for r in await store.groups("command", None, None, 10)] == ["cmd-000002"]
            # a late event for a dropped day gets its partition back (and the next sweep drops it)
            assert (await store.store_batch(_batch([_command(3, "running", old)]), None)).stored == 1
            assert len(await store.partitions()) == 2
        finally:
            await store.close()
        assert postgres.psql("SELECT count(*) FROM events", database=url.rsplit("/", 1)[1]) == "2"


class RoundRobinProxy:
    """An HTTP load balancer in front of receivers: each request goes to the next backend in turn;
    a backend that is down gets the request answered 502 (the agent then retries)."""

    def __init__(self, backends: list[str]) -> None:
        self.backends = backends
        self.port = free_port()
        self.sent = [0] * len(backends)
        self.failed = 0
        self._turn = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        i = self._turn % len(self.backends)
        self._turn += 1
        body = await request.read()
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("authorization", "content-type", "content-encoding", "idempotency-key")}
        try:
            async with self._http.request(request.method, self.backends[i] + request.path_qs, data=body,
                                          headers=headers) as r:
                out = await r.read()
                self.sent[i] += 1
                keep = {k: v for k, v in r.headers.items() if k.lower() in ("content-type", "retry-after")}
                return web.Response(body=out, status=r.status, headers=keep)
        except (aiohttp.ClientError, OSError):
            self.failed += 1
            return web.json_response({"error": "backend down"}, status=502)

    async def _start(self) -> None:
        self._http = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, auto_decompress=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        await self._runner.cleanup()
        await self._http.close()

    def __enter__(self) -> RoundRobinProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _stored_once(pg: PostgresServer, url: str) -> tuple[int, int]:
    out = pg.psql("SELECT count(*) || ' ' || count(DISTINCT id) FROM events", database=url.rsplit("/", 1)[1])
    total, distinct = out.split()
    return int(total), int(distinct)


class TestTwoReceiversOnePostgres:
    def test_agent_ships_through_both_while_one_is_killed(
        self, agent_factory: Any, postgres: PostgresServer, tmp_path: Path
    ) -> None:
        """10,000 events shipped alternately to two receivers on one PostgreSQL; one is SIGKILLed and
        restarted mid-flow: every id is stored exactly once."""
        url = postgres.new_database()
        r1 = ReceiverProcess(tmp_path / "r1", token=TOKEN, db=url).start()
        r2 = ReceiverProcess(tmp_path / "r2", token=TOKEN, db=url).start()
        try:
            with RoundRobinProxy([r1.url, r2.url]) as proxy:
                front = ReceiverProcess(tmp_path / "front", token=TOKEN, port=proxy.port)  # its address only
                agent = agent_factory(front, batch={"max_events": 100, "max_wait_ms": 20})
                agent.start()
                prod = Producer(agent.socket, 10_000)
                prod.start()
                wait_until(lambda: r2.stats()["stored"] >= 2_000, 120, what="2,000 stored")
                assert r1.proc is not None
                r1.proc.send_signal(signal.SIGKILL)
                r1.proc.wait(10)
                r1.proc = None
                wait_until(lambda: r2.stats()["stored"] >= 5_000, 120, what="5,000 stored with one receiver")
                r1.start()
                prod.join(180)
                assert not prod.is_alive() and prod.error is None, prod.error
                agent.wait_drained(120)
                assert proxy.failed >= 1, "the killed receiver was never tried"
                assert min(proxy.sent) > 5, f"requests per receiver: {proxy.sent}"
            total, distinct = _stored_once(postgres, url)
            assert total == distinct == 10_000
            assert set(r2.ids("command")) == set(prod.ok)
        finally:
            r1.stop()
            r2.stop()


# -- JetStream -----------------------------------------------------------------------------------


def _log_event(i: int) -> dict[str, Any]:
    return {"id": new_id(), "kind": "system_log", "ts": format_ts(), "server": f"web-{i % 10:02d}",
            "data": {"program": "app", "level": "info", "message": f"line seq={i}"}}


async def _publish(nc: Any, events: list[dict[str, Any]], stream: str = "ALPACON") -> None:
    """The nats sink's message format: one JSON event, ``Nats-Msg-Id``, subject alpacon.<server>.<kind>."""
    for i, ev in enumerate(events):
        await nc.publish(f"alpacon.{ev['server']}.{ev['kind']}", orjson.dumps(ev), headers={"Nats-Msg-Id": ev["id"]})
        if i % 2000 == 1999:
            await nc.flush()
            await asyncio.sleep(0.02)  # a steady flow, not one burst
    await nc.flush()


@pytest.fixture
def js_stream(nats_server: NatsServer) -> Iterator[NatsServer]:
    async def make() -> None:
        nc = await nats.connect(nats_server.url)
        await nc.jetstream().add_stream(name="ALPACON", subjects=["alpacon.>"])
        await nc.close()

    asyncio.run(make())
    yield nats_server


class TestJetStreamConsumers:
    async def test_two_consumers_one_killed_every_id_once(
        self, js_stream: NatsServer, postgres: PostgresServer, tmp_path: Path
    ) -> None:
        """50,000 events flow into the stream while two receivers consume it and one is SIGKILLed:
        every id is stored once and none is missing."""
        url = postgres.new_database()
        args = ("--consume", js_stream.url, "--consumer-name", "fleet", "--ack-wait", "2", "--fetch-batch", "500")
        r1 = ReceiverProcess(tmp_path / "r1", *args, token=TOKEN, db=url).start()
        r2 = ReceiverProcess(tmp_path / "r2", *args, token=TOKEN, db=url).start()
        events = [_log_event(i) for i in range(50_000)]
        nc = await nats.connect(js_stream.url)
        try:
            publisher = asyncio.create_task(_publish(nc, events))
            await asyncio.to_thread(wait_until, lambda: _stored_once(postgres, url)[0] >= 12_000, 120,
                                    0.05, "12,000 consumed")
            assert r1.proc is not None
            assert r1.stats()["consumer"]["stored"] > 0, "the first receiver took no share"
            r1.proc.send_signal(signal.SIGKILL)
            r1.proc.wait(10)
            r1.proc = None
            await publisher
            await asyncio.to_thread(wait_until, lambda: _stored_once(postgres, url)[0] >= 50_000, 120,
                                    0.2, "all 50,000 stored")
            info = await nc.jetstream().consumer_info("ALPACON", "fleet")
            assert info.num_pending == 0
            total, distinct = _stored_once(postgres, url)
            assert total == distinct == 50_000
            assert set(r2.ids("system_log")) == {e["id"] for e in events}
            assert r2.stats()["consumer"]["rejected"] == 0
        finally:
            await nc.close()
            r1.stop()
            r2.stop()

    async def test_hostile_messages_are_terminated_and_counted(self, js_stream: NatsServer, tmp_path: Path) -> None:
        """Garbage, wrong shapes and schema-invalid events are terminated (never redelivered) and counted;
        the valid events beside them are stored and acked."""
        consume = ConsumeSettings(url=js_stream.url, consumer="hostile", ack_wait_s=1.0)
        app = make_app(token=TOKEN, db_path=str(tmp_path / "r.db"), consume=consume)
        runner, port = await start(app)
        nc = await nats.connect(js_stream.url)
        good = [_log_event(i) for i in range(5)]
        bad_kind = {**_log_event(99), "kind": "nope"}
        bad_data = _log_event(98)
        bad_data["data"]["level"] = "loud"
        try:
            for raw in (b"\x00\xffnot json", b"[1, 2]", b"{" * 10_000, orjson.dumps(bad_kind), orjson.dumps(bad_data)):
                await nc.publish("alpacon.web-01.system_log", raw)
            await _publish(nc, good)
            async with aiohttp.ClientSession() as http:
                async def consumer_stats() -> dict[str, Any]:
                    return (await _get(http, f"http://127.0.0.1:{port}/api/v1/stats"))["consumer"]

                deadline = time.monotonic() + 30
                while (await consumer_stats())["messages"] < 10:
                    assert time.monotonic() < deadline, await consumer_stats()
                    await asyncio.sleep(0.05)
                js = nc.jetstream()
                while (info := await js.consumer_info("ALPACON", "hostile")).num_ack_pending:
                    assert time.monotonic() < deadline, info  # every message acked or terminated
                    await asyncio.sleep(0.05)
                assert info.num_pending == 0 and info.num_redelivered == 0
                st = await consumer_stats()
                assert (st["messages"], st["stored"], st["rejected"], st["redelivered"]) == (10, 5, 5, 0), st
                ids = await _get(http, f"http://127.0.0.1:{port}/api/v1/ids")
                assert ids["ids"] == [e["id"] for e in good]
        finally:
            await nc.close()
            await runner.cleanup()


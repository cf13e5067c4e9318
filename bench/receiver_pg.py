"""Receiver ingest into PostgreSQL (one and two receivers) beside SQLite, and view latency on a large store.

Everything in one run, so the ratios hold on a shared, noisy machine:

1. ingest: the same gzip batches (1,000 ``system_log`` events each) POSTed by ``--senders``
   concurrent clients into a SQLite receiver, one PostgreSQL receiver, and two PostgreSQL
   receivers sharing one database (the senders split between them); events/s for each.
2. views: ``GET /api/v1/commands?limit=50`` (a merged view) on a store holding ``--store-events``
   command events (``--large``: 1,000,000), beside the same request on a store of 2,000 events,
   for SQLite and PostgreSQL: the median latency and its ratio to the small store's.

PostgreSQL is a throwaway cluster (Debian's ``initdb``/``pg_ctl``) with its default durability
(``fsync``, ``synchronous_commit``), so a 200 answer means the batch is on disk;
``--pg-no-fsync`` turns that off to see the difference.

    .venv/bin/python bench/receiver_pg.py [--events 100000] [--senders 4] [--store-events 200000] [--large]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.events import format_ts, new_id  # noqa: E402
from tests.harness import TOKEN, ReceiverProcess  # noqa: E402
from tests.services import PostgresServer  # noqa: E402

HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", "Content-Encoding": "gzip"}
AGENT = {"id": "bench", "server": "bench", "hostname": "bench", "version": "0"}


def gz(doc: Any) -> bytes:
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    return c.compress(orjson.dumps(doc)) + c.flush()


def log_bodies(n: int, batch: int) -> list[bytes]:
    out = []
    for b in range(0, n, batch):
        evs = [
            {
                "id": new_id(),
                "kind": "system_log",
                "ts": format_ts(),
                "server": f"web-{i % 50:02d}",
                "data": {
                    "program": "nginx",
                    "level": "info",
                    "pid": 4242,
                    "message": f"seq={i} GET /api/v1/servers/42 200 1534 bytes in 12 ms from 10.1.2.3",
                },
            }
            for i in range(b, min(n, b + batch))
        ]
        out.append(gz({"schema": 1, "agent": AGENT, "batch_id": new_id("b"), "sent_at": format_ts(), "events": evs}))
    return out


def command_bodies(n: int, batch: int) -> list[bytes]:
    """``n`` command events: ``n / 2`` commands, each running then success."""
    out, now = [], time.time() - 3600
    for b in range(0, n // 2, batch // 2):
        evs = []
        for i in range(b, min(n // 2, b + batch // 2)):
            base = {
                "command_id": f"cmd-{i:08d}",
                "shell": "system",
                "line": f"systemctl restart app-{i % 9}",
                "operator": f"op-{i % 13}",
            }
            for k, status in enumerate(("running", "success")):
                data = {**base, "status": status, **({"exit_code": 0} if status == "success" else {})}
                evs.append(
                    {
                        "id": new_id(),
                        "kind": "command",
                        "ts": format_ts(now + i * 0.001 + k * 0.0005),
                        "server": f"web-{i % 50:02d}",
                        "data": data,
                    }
                )
        out.append(gz({"schema": 1, "agent": AGENT, "batch_id": new_id("b"), "sent_at": format_ts(), "events": evs}))
    return out


async def ingest(urls: list[str], bodies: list[bytes], senders: int) -> float:
    """Events/s of ``bodies`` POSTed by ``senders`` clients, sender k using receiver k % len(urls)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    events = 0

    async def sender(k: int, http: aiohttp.ClientSession) -> None:
        nonlocal events
        url = urls[k % len(urls)] + "/api/v1/agent/events"
        while not queue.empty():
            body = queue.get_nowait()
            async with http.post(url, data=body, headers=HEADERS) as r:
                answer = await r.json()
                assert r.status == 200, answer
                events += answer["stored"] + answer["duplicates"]

    async with aiohttp.ClientSession() as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(sender(k, http) for k in range(senders)))
        return events / (time.perf_counter() - t0)


async def latency(url: str, path: str, n: int = 25) -> float:
    """Median seconds of ``n`` GETs of ``path`` (after one warm-up)."""
    times = []
    async with aiohttp.ClientSession() as http:
        for i in range(n + 1):
            t0 = time.perf_counter()
            async with http.get(url + path, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                body = await r.json()
                assert r.status == 200 and body["count"] == 50, body
            if i:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000, help="events per ingest run")
    ap.add_argument("--senders", type=int, default=4, help="concurrent clients (agents)")
    ap.add_argument("--store-events", type=int, default=200_000, help="command events stored for the view run")
    ap.add_argument("--large", action="store_true", help="store 1,000,000 command events for the view run")
    ap.add_argument("--pg-no-fsync", action="store_true", help="PostgreSQL without fsync/synchronous_commit")
    args = ap.parse_args()
    store_n = 1_000_000 if args.large else args.store_events
    root = Path(tempfile.mkdtemp(prefix="bench-receiver-pg-"))
    root.chmod(0o755)
    procs: list[ReceiverProcess] = []

    def receiver(name: str, db: str | None = None) -> ReceiverProcess:
        rx = ReceiverProcess(root / name, db=db).start()
        procs.append(rx)
        return rx

    try:
        with PostgresServer(root / "pg", durable=not args.pg_no_fsync) as pg:
            bodies = log_bodies(args.events, 1000)
            rates: dict[str, float] = {}
            rates["sqlite"] = asyncio.run(ingest([receiver("sqlite").url], bodies, args.senders))
            bodies = log_bodies(args.events, 1000)
            rates["pg_1"] = asyncio.run(ingest([receiver("pg1", pg.new_database()).url], bodies, args.senders))
            shared = pg.new_database()
            pair = [receiver("pg2a", shared).url, receiver("pg2b", shared).url]
            bodies = log_bodies(args.events, 1000)
            rates["pg_2"] = asyncio.run(ingest(pair, bodies, max(args.senders, 2)))
            for rx in procs:
                rx.stop()
            print(f"ingest, {args.events} events, {args.senders} senders, batches of 1000:")
            print(f"  sqlite, 1 receiver       {rates['sqlite']:10.0f} events/s  (1.00x)")
            print(
                f"  postgresql, 1 receiver   {rates['pg_1']:10.0f} events/s"
                f"  ({rates['pg_1'] / rates['sqlite']:.2f}x sqlite)"
            )
            print(
                f"  postgresql, 2 receivers  {rates['pg_2']:10.0f} events/s"
                f"  ({rates['pg_2'] / rates['sqlite']:.2f}x sqlite,"
                f" {rates['pg_2'] / rates['pg_1']:.2f}x one receiver)"
            )

            print(f"\nGET /api/v1/commands?limit=50, median of 25, {store_n} vs 2000 stored command events:")
            for backend in ("sqlite", "postgresql"):
                large_db = pg.new_database() if backend == "postgresql" else None
                small = receiver(f"{backend}-small", pg.new_database() if backend == "postgresql" else None)
                large = receiver(f"{backend}-large", large_db)
                asyncio.run(ingest([small.url], command_bodies(2000, 1000), 1))
                t0 = time.perf_counter()
                asyncio.run(ingest([large.url], command_bodies(store_n, 1000), args.senders))
                fill = time.perf_counter() - t0
                lat_small = asyncio.run(latency(small.url, "/api/v1/commands?limit=50"))
                lat_large = asyncio.run(latency(large.url, "/api/v1/commands?limit=50"))
                page2 = asyncio.run(latency(large.url, f"/api/v1/commands?limit=50&after={store_n // 4}"))
                print(
                    f"  {backend:10s} large {lat_large * 1000:7.2f} ms, small {lat_small * 1000:7.2f} ms"
                    f"  (large/small {lat_large / lat_small:.2f}x; a page deep inside: {page2 / lat_small:.2f}x;"
                    f" filled in {fill:.0f} s)"
                )
                if large_db is not None:
                    size = int(
                        pg.psql(
                            "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits"
                            " WHERE inhparent = 'events'::regclass",
                            database=large_db.rsplit("/", 1)[1],
                        )
                    )
                else:
                    size = sum(p.stat().st_size for p in large.tmp.glob("receiver.db*"))
                print(f"  {backend:10s} {size / store_n:7.0f} bytes per stored event (table and indexes)")
                small.stop()
                large.stop()
    finally:
        for rx in procs:
            rx.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

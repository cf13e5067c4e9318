"""End-to-end throughput of the core: hook API -> pipeline -> spool (SQLite WAL) -> HTTP sink -> receiver.

Prints events/s, the agent's CPU seconds per 100k events and its peak and anonymous RSS,
beside the receiver's own ingest rate measured in the same run (the same batches POSTed
straight to it), so the ratio is stable on a shared, noisy machine.

    .venv/bin/python bench/pipeline.py [--events 200000] [--sync normal|full|compare] [--receiver-mode count|store]

``--sync compare`` runs agents with ``spool.synchronous`` normal and full in turn (``--rounds``
each) against the same receiver and prints the ratio full / normal: the price of an ``ok`` that
survives power loss, measured in one run. ``--state-root DIR`` puts the spools on DIR's file
system (the default, a temp dir, may be a tmpfs, where an fsync costs nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import aiohttp
import orjson
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.events import format_ts, stable_id  # noqa: E402
from tests.harness import TOKEN, ReceiverProcess, agent_config  # noqa: E402

BIN = Path(sys.executable).parent


def event_data(i: int) -> dict:
    return {"program": "bench", "level": "info", "pid": 4242,
            "message": f"seq={i} GET /api/v1/servers/42 200 1534 bytes in 12 ms from 10.1.2.3 user-agent=curl/8.5"}


def receiver_stats(rx: ReceiverProcess) -> dict:
    return rx.stats()


async def direct_ingest(rx: ReceiverProcess, n: int, batch: int) -> float:
    """The receiver's own rate: the same events as gzip batches POSTed straight to it, one at a time."""
    agent = {"id": "bench", "server": "bench", "hostname": "bench", "version": "0"}
    bodies = []
    for b in range(0, n, batch):
        evs = [{"id": stable_id("direct", i), "kind": "system_log", "ts": format_ts(), "server": "bench",
                "data": event_data(i)} for i in range(b, min(n, b + batch))]
        doc = {"schema": 1, "agent": agent, "batch_id": f"direct-{b:08d}", "sent_at": format_ts(), "events": evs}
        c = zlib.compressobj(1, zlib.DEFLATED, 31)
        bodies.append(c.compress(orjson.dumps(doc)) + c.flush())
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with aiohttp.ClientSession() as s:
        t0 = time.perf_counter()
        for body in bodies:
            async with s.post(rx.ingest_url, data=body, headers=headers) as r:
                assert r.status == 200, await r.text()
        return n / (time.perf_counter() - t0)


def encode(n: int) -> list[bytes]:
    return [orjson.dumps({"kind": "system_log", "id": stable_id("bench", i), "data": event_data(i)}) + b"\n"
            for i in range(n)]


def produce(sock_path: str, lines: list[bytes], answers: list[int]) -> None:
    """One producer: pipelined JSON lines, a reader thread counting ok answers."""
    n = len(lines)
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    ok = 0
    bad: list[bytes] = []

    def reader() -> None:
        nonlocal ok
        buf = b""
        got = 0
        while got < n:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
            *done, buf = buf.split(b"\n")
            for line in done:
                got += 1
                if line.startswith(b'{"status":"ok"'):
                    ok += 1
                elif len(bad) < 3:
                    bad.append(line)

    t = threading.Thread(target=reader)
    t.start()
    step = 2000
    for i in range(0, n, step):
        s.sendall(b"".join(lines[i:i + step]))
    t.join()
    s.close()
    if bad:
        print("unexpected answers:", bad, file=sys.stderr)
    answers.append(ok)


def run_agent(rx: ReceiverProcess, root: Path, lines: list[bytes], batch: int, sync: str) -> dict | None:
    """One agent, fed ``lines`` through the hook until the receiver has them all: its figures."""
    n = len(lines)
    base_count = receiver_stats(rx)["received"]
    d = Path(tempfile.mkdtemp(prefix=f"agent-{sync}-", dir=root))
    cfg = agent_config(d, rx, batch={"max_events": batch, "max_bytes": 4 << 20, "max_wait_ms": 200},
                       spool={"synchronous": sync})
    (d / "agent.yaml").write_text(yaml.safe_dump(cfg))
    log = open(d / "agent.log", "wb")
    proc = subprocess.Popen([str(BIN / "alpacon-agent"), "run", "--config", str(d / "agent.yaml")],
                            stdout=log, stderr=log)
    while not os.path.exists(cfg["hook"]["socket"]):
        if proc.poll() is not None:
            print((d / "agent.log").read_text(), file=sys.stderr)
            return None
        time.sleep(0.05)
    ps = psutil.Process(proc.pid)
    cpu0 = sum(ps.cpu_times()[:2])
    answers: list[int] = []
    t0 = time.perf_counter()
    producer = threading.Thread(target=produce, args=(cfg["hook"]["socket"], lines, answers))
    producer.start()
    peak_anon = 0
    while True:
        st = receiver_stats(rx)
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    peak_anon = max(peak_anon, int(line.split()[1]))
        except OSError:
            pass
        if st["received"] - base_count >= n:
            break
        if proc.poll() is not None:
            print("agent died:", (d / "agent.log").read_text()[-2000:], file=sys.stderr)
            return None
        time.sleep(0.02)
    elapsed = time.perf_counter() - t0
    producer.join()
    cpu = sum(ps.cpu_times()[:2]) - cpu0
    status = Path(f"/proc/{proc.pid}/status").read_text()
    hwm = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM:"))
    proc.terminate()
    proc.wait(30)
    return {"sync": sync, "rate": n / elapsed, "cpu": cpu, "hwm": hwm, "peak_anon": peak_anon,
            "ok": answers[0] if answers else 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--sync", choices=["normal", "full", "compare"], default="normal",
                    help="spool.synchronous; compare: both, alternating, and the ratio full / normal")
    ap.add_argument("--rounds", type=int, default=3, help="with --sync compare: runs of each")
    ap.add_argument("--state-root", help="where the agents' state directories go (default: a temp dir)")
    ap.add_argument("--receiver-mode", choices=["count", "store"], default="count")
    args = ap.parse_args()
    n = args.events
    modes = ["normal", "full"] * args.rounds if args.sync == "compare" else [args.sync]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        tmp_p = Path(tmp)
        root = Path(tempfile.mkdtemp(prefix="bench-pipeline-", dir=args.state_root)) if args.state_root else tmp_p
        rx = ReceiverProcess(tmp_p / "rx", mode=args.receiver_mode).start()
        try:
            direct_rate = asyncio.run(direct_ingest(rx, n, args.batch))
            lines = encode(n)
            for i, sync in enumerate(modes):
                # fresh ids each run: the receiver stores (or counts) every one again
                run_lines = lines if i == 0 else [ln.replace(b'"id":"', b'"id":"r%d-' % i, 1) for ln in lines]
                r = run_agent(rx, root, run_lines, args.batch, sync)
                if r is None:
                    return 1
                runs.append(r)
            final = receiver_stats(rx)
        finally:
            rx.stop()
            if args.state_root:
                shutil.rmtree(root, ignore_errors=True)
    print(f"events:                         {n} a run (batch {args.batch}, receiver mode {args.receiver_mode})")
    print(f"receiver's own ingest (direct): {direct_rate:,.0f} events/s")
    for r in runs:
        print(f"spool synchronous={r['sync']:<6}        {r['rate']:,.0f} events/s end to end "
              f"(ratio to the receiver {r['rate'] / direct_rate:.2f}), answered ok {r['ok']}, "
              f"agent CPU {r['cpu'] / n * 100_000:.2f} s per 100k, peak RSS {r['hwm'] / 1024:.1f} MiB "
              f"(anonymous {r['peak_anon'] / 1024:.1f} MiB)")
    if args.sync == "compare":
        best = {m: max(r["rate"] for r in runs if r["sync"] == m) for m in ("normal", "full")}
        # each full run against the normal run just before it: the two saw the same machine load
        pairs = [runs[i + 1]["rate"] / runs[i]["rate"] for i in range(0, len(runs) - 1, 2)]
        print(f"full / normal:                  {statistics.median(pairs):.2f} (median of the pairs "
              f"{', '.join(f'{p:.2f}' for p in pairs)}), {best['full'] / best['normal']:.2f} (best of each)")
    if final.get("duplicates"):
        print(f"receiver duplicates:            {final['duplicates']}")
    return 0 if all(r["ok"] == n for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

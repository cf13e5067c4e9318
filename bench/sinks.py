"""Shipping throughput of each sink: http (the reference receiver, count mode), OTLP and NATS JetStream.

For each sink, the events are first spooled with the sink's server down, then the server is
started and the agent drains its spool into it: the drain's events/s and the agent's CPU
seconds per 100k events measure the shipper and the sink alone. The http sink is the baseline
measured in the same run; the figures that matter are the ratios to it.

    .venv/bin/python bench/sinks.py [--events 100000] [--rounds 2] [--sinks http,otlp,nats]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.hookclient import HookClient  # noqa: E402
from tests.harness import AgentProcess, ReceiverProcess, agent_config  # noqa: E402
from tests.nats_cluster import NatsCluster  # noqa: E402
from tests.otlp_collector import OtlpCollector  # noqa: E402
from tests.support import free_port, wait_until  # noqa: E402


def _events(n: int, run: str) -> list[dict]:
    return [{"op": "emit", "kind": "command", "id": f"bench-{run}-{i:07d}",
             "data": {"command_id": f"c{i}", "shell": "system", "line": f"systemctl status unit-{i % 97}",
                      "status": "success", "exit_code": 0, "result": "active (running) since Tue " + "x" * 80}}
            for i in range(n)]


class Backend:
    """A sink's server: stopped while the spool fills, started for the drain."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind, self.tmp = kind, tmp
        self.stop: Callable[[], None] = lambda: None
        if kind == "http":
            self.receiver = ReceiverProcess(tmp / "receiver", mode="count")
            self.sink = {"type": "http", "url": self.receiver.ingest_url}
        elif kind == "otlp":
            self.port = free_port()
            self.sink = {"type": "otlp", "url": f"http://127.0.0.1:{self.port}", "token_file": None}
        else:
            self.nats = NatsCluster(tmp / "nats", n=1)
            self.sink = {"type": "nats", "token_file": None, "nats": {"servers": self.nats.urls, "stream": "BENCH"}}

    def start(self) -> None:
        if self.kind == "http":
            self.receiver.start()
            self.stop = self.receiver.stop
        elif self.kind == "otlp":
            collector = OtlpCollector(port=self.port).start()
            self.stop = collector.stop
        else:
            self.nats.start()
            self.stop = self.nats.stop


def measure(kind: str, n: int, run: str) -> tuple[float, float]:
    """(events/s, agent CPU seconds per 100k events) of one drain into ``kind``."""
    with tempfile.TemporaryDirectory(prefix=f"bench-sink-{kind}-") as tmp_name:
        tmp = Path(tmp_name)
        backend = Backend(kind, tmp)
        receiver = backend.receiver if kind == "http" else None
        cfg = agent_config(tmp, receiver, sink={**backend.sink, "backoff_initial_s": 0.05, "backoff_max_s": 0.1,
                                                "timeout_s": 30},
                           batch={"max_events": 1000, "max_wait_ms": 50}, spool={"max_bytes": 1 << 30})
        agent = AgentProcess(tmp, cfg).start()
        try:
            with HookClient(agent.socket, timeout=60) as c:
                events = _events(n, run)
                for start in range(0, n, 5000):
                    answers = c.request_many(events[start:start + 5000], window=1000)
                    assert all(a["status"] == "ok" for a in answers)
            proc = psutil.Process(agent.proc.pid)
            cpu0 = sum(proc.cpu_times()[:2])
            t0 = time.monotonic()
            backend.start()
            wait_until(lambda: agent.health()["spool"]["batches"] == 0, 600, interval=0.02, what="drained")
            wall = time.monotonic() - t0
            cpu = sum(proc.cpu_times()[:2]) - cpu0
        finally:
            agent.stop()
            backend.stop()
    return n / wall, cpu * 100_000 / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sinks", default="http,otlp,nats")
    args = ap.parse_args()
    kinds = args.sinks.split(",")
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    cpus: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in kinds:  # interleaved, so that a noisy moment hits every sink alike
            rate, cpu = measure(kind, args.events, f"{r}")
            rates[kind].append(rate)
            cpus[kind].append(cpu)
            print(f"round {r + 1} {kind:<5} {rate:>9,.0f} events/s  {cpu:6.2f} agent CPU s / 100k", flush=True)
    base_rate = statistics.median(rates["http"]) if "http" in rates else None
    base_cpu = statistics.median(cpus["http"]) if "http" in cpus else None
    print(f"\nmedian of {args.rounds} drains of {args.events:,} events each:")
    for kind in kinds:
        rate, cpu = statistics.median(rates[kind]), statistics.median(cpus[kind])
        ratio = f"  rate x{rate / base_rate:.2f}, CPU x{cpu / base_cpu:.2f} of http" if base_rate and base_cpu else ""
        print(f"  {kind:<5} {rate:>9,.0f} events/s  {cpu:6.2f} agent CPU s / 100k{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

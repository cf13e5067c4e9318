"""The agent's own metrics (prometheus-client) and the /metrics + /healthz endpoint.

Every drop, eviction, retry and failure is a named internal event that becomes a counter.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_log = structlog.get_logger("service")


class AgentMetrics:
    """All counters and gauges, on a registry of their own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events = Counter(
            "alpacon_agent_events",
            "Events by what happened to them (received, shipped, evicted, dead_lettered, dropped)",
            ["kind", "outcome", "source"],
            registry=r,
        )
        self.internal = Counter(
            "alpacon_agent_internal_events",
            "Named internal events of the collectors (journal gaps, truncated lines, parse failures …)",
            ["name", "source"],
            registry=r,
        )
        self.hook_requests = Counter(
            "alpacon_agent_hook_requests", "Hook API answers by status", ["op", "status"], registry=r
        )
        self.hook_connections = Counter(
            "alpacon_agent_hook_connections",
            "Hook connections by what became of them (served, denied, busy, evicted, idle_closed, not_reading)",
            ["outcome"], registry=r,
        )
        self.task_restarts = Counter(
            "alpacon_agent_task_restarts",
            "Unexpected ends of a long-lived task (each followed by a restart, or by the agent's exit)",
            ["task"], registry=r,
        )
        self.spool_recoveries = Counter(
            "alpacon_agent_spool_recoveries",
            "Corrupt spools moved aside at start (and what of them could be read copied to a fresh one)",
            registry=r,
        )
        self.spool_bytes = Gauge("alpacon_agent_spool_bytes", "Bytes of batches in the spool", registry=r)
        self.spool_batches = Gauge("alpacon_agent_spool_batches", "Batches waiting in the spool", registry=r)
        self.spool_dead = Gauge("alpacon_agent_spool_dead_letters", "Batches in the dead-letter table", registry=r)
        self.ship_latency = Histogram(
            "alpacon_agent_ship_latency_seconds",
            "Time from the first send attempt of a batch to its acknowledgement",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.retries = Counter(
            "alpacon_agent_ship_retries", "Send attempts that will be retried", ["reason"], registry=r
        )
        self.last_ship = Gauge(
            "alpacon_agent_last_successful_ship_timestamp_seconds", "When a batch was last acknowledged", registry=r
        )
        self.shipping_paused = Gauge(
            "alpacon_agent_shipping_paused", "1 while the backend refuses the credentials (401/403)", registry=r
        )
        self._event_children: dict[tuple[str, str, str], Any] = {}
        self.evictions = Counter("alpacon_agent_spool_evictions", "Batches evicted to make room", registry=r)

    def event_counter(self, kind: str, outcome: str, source: str) -> Any:
        """The child counter of ``events`` for these labels (cached: this is on the hot path)."""
        key = (kind, outcome, source)
        c = self._event_children.get(key)
        if c is None:
            c = self._event_children[key] = self.events.labels(kind, outcome, source)
        return c

    def spool_gauges(self, st: Any) -> None:
        """Set the spool's gauges from its stats (agent.spool.SpoolStats)."""
        self.spool_batches.set(st.batches)
        self.spool_bytes.set(st.bytes)
        self.spool_dead.set(st.dead_letters)

    def count_evictions(self, evictions: list[Any]) -> None:
        """Count and log the bulk batches the spool evicted to keep audit data."""
        for ev in evictions:
            self.evictions.inc()
            for kind, n in ev.kinds.items():
                self.events.labels(kind, "evicted", "spool").inc(n)
            _log.warning("spool full: evicted a bulk batch to keep audit data", batch_id=ev.batch_id, kinds=ev.kinds)

    def count(self, name: str, n: int = 1, **labels: str) -> None:
        source = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        self.internal.labels(name, source).inc(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else v


def make_http_app(metrics: AgentMetrics, health: Callable[[], Awaitable[dict[str, Any]]]) -> web.Application:
    """The local observability endpoint: ``/metrics`` (Prometheus text) and ``/healthz`` (JSON)."""

    async def metrics_handler(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health_handler(request: web.Request) -> web.Response:
        h = await health()
        h["time"] = time.time()
        return web.json_response(h, status=200 if h.get("ok", True) else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", health_handler)
    return app

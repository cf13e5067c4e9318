"""The shipper on a real spool with an injected sink (the transport seam of DESIGN.md)."""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import ThreadPoolExecutor

import orjson

from agent.config import SinkConfig
from agent.errors import RetryableShipError
from agent.events import PRIORITY_AUDIT
from agent.metrics import AgentMetrics
from agent.shipper import Shipper
from agent.spool import NewBatch, Spool


class FlakySink:
    """Fails in the given ways, in order, then stores."""

    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = list(failures)
        self.stored: list[str] = []

    async def send(self, batch_id: str, payload: bytes, n_events: int) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.stored.append(orjson.loads(payload)["batch_id"])

    async def close(self) -> None:
        return None


def _run(tmp_path, sink, corrupt: int | None = None, **cfg):
    async def main():
        spool = Spool(tmp_path, 1 << 20)
        ex = ThreadPoolExecutor(1)
        for i in range(3):
            body = NewBatch(f"b-{i:08d}", PRIORITY_AUDIT, 1, {"command": 1}, orjson.dumps([{"id": f"ev-{i:08d}"}]))
            if i == corrupt:  # spooled deflated, then damaged
                body = dataclasses.replace(body.packed(1), body=b"\xff\x00 not deflate")
            spool.append([body])
        metrics = AgentMetrics()
        sc = SinkConfig(backoff_initial_s=0.01, backoff_max_s=0.05, **cfg)
        sh = Shipper(spool, ex, sink, {"id": "a", "server": "s", "hostname": "h", "version": "0"}, sc, metrics)
        task = asyncio.ensure_future(sh.run())
        async with asyncio.timeout(30):
            while spool.stats().batches:
                await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        ex.shutdown()
        metrics.dead = spool.dead_letters()
        return metrics

    return asyncio.run(main())


class TestShipperResilience:
    def test_an_unexpected_error_does_not_stop_shipping(self, tmp_path):
        """A bug-shaped exception from a send is logged and the batch tried again; all arrive in order."""
        sink = FlakySink([ValueError("a bug"), RuntimeError("another")])
        metrics = _run(tmp_path, sink)
        assert sink.stored == ["b-00000000", "b-00000001", "b-00000002"]
        assert metrics.value("alpacon_agent_ship_retries_total", {"reason": "internal_error"}) == 2

    def test_an_unreadable_spooled_body_is_dead_lettered_not_retried(self, tmp_path):
        """A stored body that cannot be inflated does not block the batches behind it: it goes
        to the dead letters, as stored, with the reason."""
        sink = FlakySink([])
        metrics = _run(tmp_path, sink, corrupt=1)
        assert sink.stored == ["b-00000000", "b-00000002"]
        assert [d["batch_id"] for d in metrics.dead] == ["b-00000001"]
        assert "cannot be read" in metrics.dead[0]["reason"]

    def test_retry_after_zero_still_backs_off(self):
        """Retry-After is honoured as a floor: "0" does not cut the exponential backoff short."""
        from types import SimpleNamespace

        sh = Shipper.__new__(Shipper)
        sh.cfg = SinkConfig(backoff_initial_s=0.5, backoff_max_s=60)
        from tenacity import wait_exponential_jitter

        sh._backoff = wait_exponential_jitter(multiplier=0.5, max=60, jitter=0.5)

        def state(exc, n):
            return SimpleNamespace(outcome=SimpleNamespace(exception=lambda: exc), attempt_number=n)

        assert sh._wait(state(RetryableShipError("429", 429, 0.0), 4)) >= 4.0  # 0.5 * 2**3
        assert sh._wait(state(RetryableShipError("429", 429, 30.0), 1)) >= 30.0
        assert sh._wait(state(RetryableShipError("503", 503, None), 1)) < 2.0

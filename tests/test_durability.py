"""Invariants 1, 2 and 4 end to end: crashes, faults and outages cost nothing but delay."""

from __future__ import annotations

import random
import threading
import time

import pytest

from agent.events import stable_id
from agent.hookclient import HookClient, HookClientError
from tests.support import wait_until


def _event(i: int, producer: str = "p1") -> dict:
    return {
        "op": "emit",
        "kind": "command",
        "id": stable_id("torture", producer, i),
        "data": {"command_id": f"{producer}-{i}", "shell": "system", "line": f"echo {i}", "status": "success",
                 "exit_code": 0, "result": str(i)},
    }


class Producer(threading.Thread):
    """Pushes events through the hook API, resending (same id) whatever was not answered ok."""

    def __init__(self, socket: str, n: int, name: str = "p1") -> None:
        super().__init__(daemon=True)
        self.socket, self.n, self.pname = socket, n, name
        self.ok: dict[str, int] = {}
        self.busy = 0
        self.reconnects = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            todo = list(range(self.n))
            while todo:
                try:
                    with HookClient(self.socket, timeout=20) as c:
                        for start in range(0, len(todo), 500):
                            chunk = todo[start:start + 500]
                            answers = c.request_many([_event(i, self.pname) for i in chunk], window=500)
                            for i, a in zip(chunk, answers, strict=True):
                                if a["status"] == "ok":
                                    assert a["id"] == stable_id("torture", self.pname, i)
                                    self.ok[a["id"]] = i
                                elif a["status"] == "busy":
                                    self.busy += 1
                                else:
                                    raise AssertionError(f"unexpected answer {a}")
                except (HookClientError, OSError):
                    self.reconnects += 1
                    time.sleep(0.05)
                todo = [i for i in range(self.n) if stable_id("torture", self.pname, i) not in self.ok]
        except BaseException as exc:  # noqa: BLE001
            self.error = exc


class TestCrashAndFaultTorture:
    @pytest.mark.slow
    def test_sigkill_three_times_under_503_and_429(self, agent_factory, receiver):
        """20,000 pushed events, 3 SIGKILLs, 30% 503s, 429s and stored-then-503 replays: exactly the ok set arrives."""
        receiver.faults(error_rate=0.3, throttle_rate=0.05, retry_after=1, fail_after_store_rate=0.05, seed=7)
        agent = agent_factory(receiver, batch={"max_events": 200, "max_wait_ms": 20})
        agent.start()
        prod = Producer(agent.socket, 20_000)
        prod.start()
        # kill at random points of the producer's progress (time alone is no measure on a loaded machine)
        rng = random.Random()
        thresholds = sorted(rng.sample(range(1_000, 18_000), 3))
        kills = 0
        for t in thresholds:
            wait_until(lambda t=t: len(prod.ok) >= t or not prod.is_alive(), 120, interval=0.001,
                       what=f"{t} events answered")
            time.sleep(rng.uniform(0, 0.02))
            agent.kill()
            kills += 1
            agent.start()
        assert kills == 3
        prod.join(240)
        assert not prod.is_alive(), "producer did not finish"
        assert prod.error is None, prod.error
        assert len(prod.ok) == 20_000
        # drained: the receiver holds as many command events as were answered ok, and nothing is left to ship
        wait_until(lambda: receiver.stats()["stored_by_kind"].get("command", 0) >= len(prod.ok)
                   and agent.health()["spool"]["batches"] == 0, 240, what="every ok event stored, spool empty")
        receiver.faults(reset=True)
        stored = receiver.ids("command")
        assert len(stored) == len(set(stored)), "an id was stored twice"
        assert set(stored) == set(prod.ok), (
            f"missing {len(set(prod.ok) - set(stored))}, unexpected {len(set(stored) - set(prod.ok))}"
        )
        st = receiver.stats()
        assert st["faults_injected"], "no faults were injected"
        assert prod.reconnects >= 1


class TestOutage:
    def test_receiver_goes_away_and_comes_back(self, agent_factory, receiver):
        """While the receiver is down events pile up in the spool; afterwards all arrive, in order per source."""
        agent = agent_factory(receiver)
        agent.start()
        n = 3000
        with HookClient(agent.socket) as c:
            first = c.request_many([_event(i, "a") for i in range(500)])
        assert all(a["status"] == "ok" for a in first)
        wait_until(lambda: len(receiver.ids()) == 500, 30, what="first events")
        receiver.stop()
        with HookClient(agent.socket) as c:
            answers = c.request_many([_event(i, "a") for i in range(500, n)])
        assert all(a["status"] == "ok" for a in answers)
        wait_until(lambda: agent.health()["last_error"], 30, what="shipper notices the outage")
        assert agent.health()["spool"]["batches"] > 0
        receiver.start()
        agent.wait_drained(60)
        rows = receiver.events("command")
        seqs = [int(r["data"]["command_id"].split("-")[1]) for r in rows]
        assert seqs == list(range(n)), "events missing, doubled or out of order"
        assert agent.metric("alpacon_agent_ship_retries_total") > 0


class TestAuthAndRejection:
    def test_401_pauses_and_keeps_data(self, agent_factory, receiver):
        """401 pauses shipping without losing anything; once accepted again everything arrives."""
        receiver.faults(force_status=401)
        agent = agent_factory(receiver)
        agent.start()
        with HookClient(agent.socket) as c:
            assert all(a["status"] == "ok" for a in c.request_many([_event(i, "u") for i in range(50)]))
        wait_until(lambda: agent.health()["paused"], 30, what="shipping paused")
        assert agent.health()["spool"]["batches"] >= 1
        assert agent.metric("alpacon_agent_shipping_paused") == 1
        assert receiver.ids() == []
        receiver.faults(force_status=None)
        agent.wait_drained(30)
        assert len(receiver.ids()) == 50
        assert agent.health()["paused"] is None

    def test_400_dead_letters_then_requeue(self, agent_factory, receiver):
        """400 moves the batch to dead letters with the reason; requeue-dead sends it once the cause is gone."""
        receiver.faults(force_status=400)
        agent = agent_factory(receiver)
        agent.start()
        with HookClient(agent.socket) as c:
            assert all(a["status"] == "ok" for a in c.request_many([_event(i, "d") for i in range(20)]))

        def dead() -> bool:
            r = agent.cli("spool", "--json")
            import json

            return json.loads(r.stdout)["dead_letters"] >= 1

        wait_until(dead, 30, what="dead letter")
        out = agent.cli("spool").stdout
        assert "dead letters: 1 batches, 20 events" in out
        assert "HTTP 400" in out
        assert agent.metric("alpacon_agent_events_total", outcome="dead_lettered") == 20
        receiver.faults(force_status=None)
        r = agent.cli("spool", "requeue-dead")
        assert r.returncode == 0 and "requeued 1" in r.stdout
        wait_until(lambda: len(receiver.ids()) == 20, 30, what="requeued batch shipped")
        agent.wait_drained(30)
        assert "dead letters: 0 batches" in agent.cli("spool").stdout
        st = receiver.stats()
        assert st["duplicates"] == 0


class TestSpoolWriteErrors:
    def test_a_full_disk_pauses_sources_and_answers_producers(self, agent_factory, receiver, tmp_path):
        """With the spool's disk full, a hook producer gets an error answer (not silence) and file
        lines wait; once space is back, everything arrives without any new trigger."""
        import subprocess

        from tests.support import need_root

        need_root()
        log = tmp_path / "app.log"
        log.write_text("")
        agent = agent_factory(receiver, collectors={"syslog": {
            "enabled": True, "paths": [str(log)], "start_at": "beginning", "poll_interval_s": 0.05}})
        state = tmp_path / "agent" / "state"
        state.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(state)], check=True)

        def lines(rng: range) -> None:
            with open(log, "a") as f:
                f.writelines(f"2026-11-26T20:00:00.{i:03d}+00:00 host app[7]: disk-full line {i}\n" for i in rng)

        try:
            agent.start()
            lines(range(0, 3))
            wait_until(lambda: len(receiver.ids("system_log")) == 3, 30, what="first lines stored")
            filler = state / "filler"
            # unbuffered: a buffered file keeps the bytes a failed write left and raises again
            # when it is closed
            with open(filler, "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                except OSError:
                    pass
            lines(range(3, 6))
            wait_until(lambda: agent.metric("alpacon_agent_events_total", kind="system_log",
                                            outcome="received") >= 6, 30, what="lines read")
            pushed = {"kind": "user_activity", "id": "disk-full-push-0001",
                      "data": {"user": "u", "action": "login", "result": 200}}
            with HookClient(agent.socket, timeout=15) as c:
                answer = c.request(pushed)
            assert answer["status"] == "error" and "full" in answer["reason"], answer
            filler.unlink()
            with HookClient(agent.socket, timeout=15) as c:
                assert c.request(pushed)["status"] == "ok"
            wait_until(lambda: len(receiver.ids("system_log")) == 6, 30, what="lines stored after space came back")
            wait_until(lambda: receiver.ids("user_activity") == ["disk-full-push-0001"], 30, what="push stored")
            lines(range(6, 9))
            wait_until(lambda: len(receiver.ids("system_log")) == 9, 30, what="later lines stored")
            assert agent.proc.poll() is None
        finally:
            agent.kill()
            subprocess.run(["umount", "-l", str(state)], check=False)


class TestShipperMemory:
    def test_refused_batches_do_not_pile_up_in_memory(self, receiver, tmp_path):
        """A backend refusing every batch (400) for a long time: the shipper's record of refusals stays bounded."""
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        import orjson

        from agent.config import SinkConfig
        from agent.events import PRIORITY_AUDIT, make_event
        from agent.metrics import AgentMetrics
        from agent.shipping.shipper import Shipper
        from agent.shipping.sinks.http import HttpSink
        from agent.spool import NewBatch, Spool

        receiver.faults(force_status=400)
        token = tmp_path / "token"
        token.write_text(receiver.token)
        cfg = SinkConfig(url=receiver.ingest_url, token_file=str(token), backoff_initial_s=0.05)
        spool = Spool(tmp_path / "state", 1 << 30)
        n = 400
        ev = make_event("user_activity", {"user": "u", "action": "login", "result": 200})
        ev["server"] = "s"
        body = orjson.dumps([ev])
        spool.append([NewBatch(f"refused-{i:06d}", PRIORITY_AUDIT, 1, {"user_activity": 1}, body) for i in range(n)])

        async def main() -> Shipper:
            ex = ThreadPoolExecutor(1)
            sink = HttpSink(cfg, "test")
            shipper = Shipper(spool, ex, sink, {"id": "a"}, cfg, AgentMetrics())
            task = asyncio.create_task(shipper.run())
            async with asyncio.timeout(60):
                while await asyncio.get_running_loop().run_in_executor(ex, lambda: spool.stats().dead_letters) < n:
                    await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await sink.close()
            ex.shutdown()
            return shipper

        shipper = asyncio.run(main())
        assert spool.stats().dead_letters == n
        assert 1 <= len(shipper.permanent_failures) <= 100

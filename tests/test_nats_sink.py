"""The NATS JetStream sink against real nats-server processes on 127.0.0.1: one message per event with
its id, duplicates dropped by the stream, limits refused, credentials checked, and a three-node
cluster losing a node while the agent is SIGKILLed."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter

import nats
import pytest
from nats.js.api import DiscardPolicy, StreamConfig

from agent.hookclient import HookClient
from tests.nats_cluster import NatsCluster
from tests.support import wait_until
from tests.test_durability import Producer


def _run(coro):
    return asyncio.run(coro)


async def read_stream(urls: list[str], stream: str, token: str | None = None) -> list[tuple[str, str, dict]]:
    """Every message of the stream, oldest first: (subject, Nats-Msg-Id, body as JSON)."""
    nc = await nats.connect(servers=urls, token=token)
    try:
        js = nc.jetstream(timeout=10)
        total = (await js.stream_info(stream)).state.messages
        sub = await js.pull_subscribe("", stream=stream)
        out: list[tuple[str, str, dict]] = []
        while len(out) < total:
            for m in await sub.fetch(min(1000, total - len(out)), timeout=10):
                out.append((m.subject, (m.headers or {}).get("Nats-Msg-Id", ""), json.loads(m.data)))
                await m.ack()
        return out
    finally:
        await nc.close()


async def stream_leader(urls: list[str], stream: str) -> str:
    nc = await nats.connect(servers=urls)
    try:
        return (await nc.jetstream(timeout=10).stream_info(stream)).cluster.leader
    finally:
        await nc.close()


class Tap:
    """A plain NATS subscriber seeing every publish (duplicates too: the stream drops them, not the subject)."""

    def __init__(self, urls: list[str], subject: str) -> None:
        self.seen: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._nc = asyncio.run_coroutine_threadsafe(self._start(urls, subject), self._loop).result(10)

    async def _start(self, urls: list[str], subject: str):
        nc = await nats.connect(servers=urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                pending_size=256 * 1024 * 1024)

        async def seen(msg) -> None:
            self.seen[(msg.headers or {}).get("Nats-Msg-Id", "")] += 1

        await nc.subscribe(subject, cb=seen, pending_msgs_limit=-1, pending_bytes_limit=-1)
        return nc

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._nc.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


async def add_stream(urls: list[str], **cfg) -> None:
    nc = await nats.connect(servers=urls)
    try:
        await nc.jetstream(timeout=10).add_stream(StreamConfig(**cfg))
    finally:
        await nc.close()


def _nats_agent(agent_factory, urls, token_file=None, **nats_cfg):
    return agent_factory(None, sink={"type": "nats", "token_file": token_file, "timeout_s": 5,
                                     "nats": {"servers": urls, **nats_cfg}},
                         batch={"max_events": 200, "max_wait_ms": 20})


def _cmd(i: int, prefix: str = "nats") -> dict:
    return {"op": "emit", "kind": "command", "id": f"{prefix}-{i:06d}",
            "data": {"command_id": f"c{i}", "shell": "system", "line": f"echo {i}", "status": "success"}}


@pytest.fixture
def lone_nats(tmp_path):
    with NatsCluster(tmp_path / "nats", n=1) as c:
        yield c


class TestMessages:
    def test_each_event_is_one_message_with_its_id_on_its_kinds_subject(self, agent_factory, lone_nats):
        """The stream is created; each event is one message on alpacon.<server>.<kind>, Nats-Msg-Id its id,
        the event JSON its body; per-source order is kept."""
        agent = _nats_agent(agent_factory, lone_nats.urls)
        agent.start()
        ua = {"op": "emit", "kind": "user_activity", "id": "nats-ua-000001",
              "data": {"user": "alice", "action": "login", "result": 200}}
        with HookClient(agent.socket) as c:
            assert all(a["status"] == "ok" for a in c.request_many([_cmd(i) for i in range(300)] + [ua]))
        agent.wait_drained(30)
        msgs = _run(read_stream(lone_nats.urls, "ALPACON"))
        assert [m[1] for m in msgs if m[0].endswith(".command")] == [f"nats-{i:06d}" for i in range(300)]
        assert all(subject == "alpacon.test-server.command" for subject, _, _ in msgs[:300])
        (ua_msg,) = [m for m in msgs if m[0] == "alpacon.test-server.user_activity"]
        assert ua_msg[1] == ua_msg[2]["id"] == "nats-ua-000001"
        assert ua_msg[2]["kind"] == "user_activity" and ua_msg[2]["server"] == "test-server"
        got = dict(ua_msg[2]["data"])
        prov = got.pop("provenance")  # stamped by the hook: the pushing process, root
        assert got == ua["data"] and (prov["source"], prov["uid"]) == ("hook", 0)
        assert all(m[1] == m[2]["id"] for m in msgs)

    def test_a_missing_stream_without_auto_create_is_reported_and_waits(self, agent_factory, lone_nats):
        """auto_create_stream off and no stream: the batch stays spooled and the error says why; once
        the stream exists, everything arrives."""
        agent = _nats_agent(agent_factory, lone_nats.urls, stream="LATER", auto_create_stream=False)
        agent.start()
        with HookClient(agent.socket) as c:
            assert all(a["status"] == "ok" for a in c.request_many([_cmd(i) for i in range(20)]))
        wait_until(lambda: "does not exist" in (agent.health()["last_error"] or ""), 30, what="error reported")
        assert agent.health()["spool"]["batches"] >= 1
        _run(add_stream(lone_nats.urls, name="LATER", subjects=["alpacon.*.*"]))
        agent.wait_drained(30)
        assert [m[1] for m in _run(read_stream(lone_nats.urls, "LATER"))] == [f"nats-{i:06d}" for i in range(20)]

    def test_a_stream_limit_refusal_is_permanent_and_dead_letters_only_the_refused(self, agent_factory, lone_nats):
        """A stream full under discard=new refuses publishes: those events (and only those) go to the
        dead letters with the server's reason; they are not retried for ever."""
        _run(add_stream(lone_nats.urls, name="SMALL", subjects=["alpacon.*.*"], max_msgs=5,
                        discard=DiscardPolicy.NEW))
        agent = _nats_agent(agent_factory, lone_nats.urls, stream="SMALL")
        agent.start()
        with HookClient(agent.socket) as c:
            assert all(a["status"] == "ok" for a in c.request_many([_cmd(i) for i in range(8)]))
        agent.wait_drained(30)
        assert [m[1] for m in _run(read_stream(lone_nats.urls, "SMALL"))] == [f"nats-{i:06d}" for i in range(5)]
        spool = json.loads(agent.cli("spool", "--json").stdout)
        assert spool["dead_letters"] == 1
        listing = agent.cli("spool").stdout
        assert "3 of 8 events refused by stream 'SMALL'" in listing and "maximum messages exceeded" in listing
        assert agent.metric("alpacon_agent_events_total", kind="command", outcome="dead_lettered") == 3
        assert agent.metric("alpacon_agent_events_total", kind="command", outcome="shipped") == 5


class TestCredentials:
    def test_a_wrong_token_pauses_shipping_until_the_token_file_is_fixed(self, agent_factory, tmp_path):
        """A server refusing the token: shipping pauses (data kept, loud); a fixed token file is read on the
        next try and everything arrives."""
        with NatsCluster(tmp_path / "nats", n=1, token="right-token-123") as cluster:
            token = tmp_path / "nats-token"
            token.write_text("wrong-token-456\n")
            agent = _nats_agent(agent_factory, cluster.urls, token_file=str(token))
            agent.start()
            with HookClient(agent.socket) as c:
                assert all(a["status"] == "ok" for a in c.request_many([_cmd(i) for i in range(10)]))
            wait_until(lambda: agent.health()["paused"], 30, what="shipping paused")
            assert agent.metric("alpacon_agent_shipping_paused") == 1
            token.write_text("right-token-123\n")
            agent.wait_drained(30)
            assert agent.health()["paused"] is None
            got = _run(read_stream(cluster.urls, "ALPACON", token="right-token-123"))
            assert [m[1] for m in got] == [f"nats-{i:06d}" for i in range(10)]


class TestClusterTorture:
    @pytest.mark.slow
    def test_sigkill_three_times_and_a_node_lost(self, agent_factory, tmp_path):
        """20,000 events pushed through the hook API into a 3-replica stream on a three-node cluster; the
        agent is SIGKILLed three times and one node is killed and restarted: the stream holds exactly
        the ids answered ok, none twice."""
        with NatsCluster(tmp_path / "nats", n=3) as cluster:
            _run(add_stream(cluster.urls, name="AUDIT", subjects=["alpacon.*.*"], num_replicas=3,
                            duplicate_window=600))
            leader = _run(stream_leader(cluster.urls, "AUDIT"))
            lost = next(i for i, node in enumerate(cluster.nodes) if node.name == leader)
            tap = Tap([u for i, u in enumerate(cluster.urls) if i != lost], "alpacon.>")
            agent = _nats_agent(agent_factory, cluster.urls, stream="AUDIT", auto_create_stream=False)
            agent.start()
            prod = Producer(agent.socket, 20_000)
            prod.start()
            rng = random.Random()
            kills = sorted(rng.sample(range(1_000, 18_000), 3))
            for n, threshold in enumerate(kills):
                wait_until(lambda t=threshold: len(prod.ok) >= t or not prod.is_alive(), 120, interval=0.001,
                           what=f"{threshold} events answered")
                if n == 1:
                    cluster.nodes[lost].kill()  # the stream's leader goes down between two agent crashes ...
                time.sleep(rng.uniform(0, 0.02))
                agent.kill()
                agent.start()
                if n == 2:
                    cluster.restart(lost)  # ... and comes back before the end
            prod.join(240)
            assert not prod.is_alive(), "producer did not finish"
            assert prod.error is None, prod.error
            assert len(prod.ok) == 20_000
            agent.wait_drained(240)
            msgs = _run(read_stream(cluster.urls, "AUDIT"))
            ids = [m[1] for m in msgs]
            doubled = [i for i, c in Counter(ids).items() if c > 1]
            assert doubled == [], f"{len(doubled)} ids stored twice"
            assert set(ids) == set(prod.ok), (
                f"missing {len(set(prod.ok) - set(ids))}, unexpected {len(set(ids) - set(prod.ok))}")
            assert all(m[1] == m[2]["id"] for m in msgs)
            tap.close()
            replayed = sum(c - 1 for c in tap.seen.values() if c > 1)
            # the crashes and the lost leader made the agent publish some events again: the stream dropped them
            assert replayed >= 1, "no event was published twice: the run did not exercise the duplicate window"


class TestSinkBounds:
    def test_a_hostile_server_name_stays_one_subject_token(self):
        """A server name with dots, spaces or wildcards cannot widen or split the subject."""
        from agent.config import SinkConfig
        from agent.shipping.sinks.nats import NatsSink

        sink = NatsSink(SinkConfig(type="nats"), "web 01.prod.>*")
        assert sink.subject("command") == "alpacon.web_01_prod___.command"
        assert sink.subject("a.b>") == "alpacon.web_01_prod___.a_b_"

    def test_publishes_awaiting_their_ack_never_exceed_max_pending(self, lone_nats):
        """With max_pending 8, a 500-event batch never has more than 8 publishes unacknowledged."""
        from agent import wire
        from agent.config import SinkConfig
        from agent.shipping.sinks.nats import NatsSink

        async def main():
            sink = NatsSink(SinkConfig(type="nats", nats={"servers": lone_nats.urls, "max_pending": 8}), "s")
            nc = await sink._connection()
            seen: list[int] = []
            real = nc.publish

            async def counting(*args, **kwargs):
                seen.append(sum(not f.done() for f in sink._waiting.values()))
                return await real(*args, **kwargs)

            nc.publish = counting
            events = [{"id": f"bound-{i:06d}", "kind": "command", "ts": "2026-11-26T20:00:00.000Z",
                       "server": "s", "data": {}} for i in range(500)]
            outcome = await sink.send("b-bound-1", wire.document(b'{"id":"a"}', "b-bound-1",
                                                                 json.dumps(events).encode()), 500)
            await sink.close()
            return outcome, seen

        outcome, seen = _run(main())
        assert outcome.status == 200 and len(seen) == 500
        assert max(seen) <= 8 and max(seen) >= 2

    def test_credentials_over_plain_nats_to_another_host_are_warned(self, tmp_path):
        """A token sent over plain nats:// to another host is warned at start; tls://, loopback or no token are not."""
        from structlog.testing import capture_logs

        from agent.config import SinkConfig
        from agent.shipping.sinks.nats import NatsSink

        token = tmp_path / "token"
        token.write_text("t0ken-0123456789")
        cases = {("nats://10.0.0.5:4222", True): True, ("tls://10.0.0.5:4222", True): False,
                 ("nats://127.0.0.1:4222", True): False, ("nats://10.0.0.5:4222", False): False}
        for (url, with_token), warned in cases.items():
            cfg = SinkConfig(type="nats", token_file=str(token) if with_token else None, nats={"servers": [url]})
            with capture_logs() as logs:
                NatsSink(cfg, "s")
            assert any("unencrypted" in e["event"] for e in logs) == warned, (url, with_token)

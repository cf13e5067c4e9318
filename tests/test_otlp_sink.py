"""The OTLP sink end to end: a real agent pushes to an OTLP/HTTP endpoint on 127.0.0.1 that decodes
every request with opentelemetry-proto's classes; fields per kind, retries and partial success."""

from __future__ import annotations

import json
import time

import pytest
from opentelemetry.proto.logs.v1.logs_pb2 import SeverityNumber

from agent.hookclient import HookClient
from agent.shipping.sinks.otlp_logs import ts_nanos
from tests.otlp_collector import OtlpCollector, record_id
from tests.support import wait_until

TS = "2026-11-26T20:00:00.123Z"
TS_NS = 1795723200123000000
EVENTS = {
    "system_log": {"program": "sshd", "level": "crit", "pid": 812, "message": "fatal: out of luck",
                   "facility": "auth"},
    "user_activity": {"user": "alice", "ip": "192.0.2.7", "action": "login_failed", "result": 401},
    "command": {"command_id": "c-1", "shell": "system", "line": "systemctl restart nginx", "status": "failed",
                "exit_code": 3, "user": "root"},
    "webftp_transfer": {"username": "bob", "type": "upload", "object_name": "a.txt", "path": "/srv/a.txt",
                        "size": 1234, "remote_ip": "198.51.100.4", "status": "success"},
    "websh_session": {"session_id": "s-1", "username": "carol", "started_at": TS, "state": "open",
                      "remote_ip": "203.0.113.9", "browser": "Firefox/140"},
    "websh_command": {"session_id": "s-1", "seq": 1, "command": "ls -la", "exit_code": 0},
    "metrics": {"cpu": {"percent": 12.5}, "memory": {"total": 1024, "used": 512}},
}
#: per kind: the attributes the record must carry besides id and kind, and its severity
EXPECTED = {
    "system_log": ({"process.pid": 812, "process.executable.name": "sshd", "syslog.facility": "auth"},
                   SeverityNumber.SEVERITY_NUMBER_ERROR2, "crit"),
    "user_activity": ({"user.name": "alice", "client.address": "192.0.2.7"}, SeverityNumber.SEVERITY_NUMBER_WARN,
                      "WARN"),
    "command": ({"user.name": "root", "process.command_line": "systemctl restart nginx", "process.exit.code": 3},
                SeverityNumber.SEVERITY_NUMBER_WARN, "WARN"),
    "webftp_transfer": ({"user.name": "bob", "client.address": "198.51.100.4", "file.path": "/srv/a.txt",
                         "file.name": "a.txt", "file.size": 1234}, SeverityNumber.SEVERITY_NUMBER_INFO, "INFO"),
    "websh_session": ({"user.name": "carol", "client.address": "203.0.113.9", "session.id": "s-1",
                       "user_agent.original": "Firefox/140"}, SeverityNumber.SEVERITY_NUMBER_INFO, "INFO"),
    "websh_command": ({"session.id": "s-1", "process.command_line": "ls -la", "process.exit.code": 0},
                      SeverityNumber.SEVERITY_NUMBER_INFO, "INFO"),
    "metrics": ({}, SeverityNumber.SEVERITY_NUMBER_INFO, "INFO"),
}


def _value(v):
    """An AnyValue as a plain Python value."""
    which = v.WhichOneof("value")
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    return None if which is None else getattr(v, which)


@pytest.fixture
def collector():
    c = OtlpCollector().start()
    yield c
    c.stop()


def _otlp_agent(agent_factory, collector, batch_events=50, **sink):
    return agent_factory(None, sink={"type": "otlp", "url": collector.url, **sink},
                         batch={"max_events": batch_events, "max_wait_ms": 50})


class TestOtlpRecords:
    @pytest.mark.parametrize("encoding", ["protobuf", "json"])
    def test_every_field_of_every_kind(self, agent_factory, collector, encoding):
        """Each kind becomes one LogRecord with its time, observed time, severity, body and attributes,
        under a resource naming this agent; the request is gzip, the declared encoding, with the token."""
        agent = _otlp_agent(agent_factory, collector, otlp={"encoding": encoding}, headers={"X-Tenant": "t-1"})
        agent.start()
        before = time.time_ns()
        with HookClient(agent.socket) as c:
            answers = c.request_many([{"op": "emit", "kind": k, "id": f"otlp-field-{k}", "ts": TS, "data": d}
                                      for k, d in EVENTS.items()])
        assert [a["status"] for a in answers] == ["ok"] * len(EVENTS)
        wait_until(lambda: len(collector.stored_ids()) == len(EVENTS), 30, what="records received")
        after = time.time_ns()
        got = collector.snapshot()
        for x in got:
            assert x.headers["Content-Encoding"] == "gzip"
            assert x.headers["Content-Type"] == ("application/json" if encoding == "json" else "application/x-protobuf")
            assert x.headers["Authorization"].startswith("Bearer ") and x.headers["X-Tenant"] == "t-1"
            (rl,) = x.request.resource_logs
            res = {a.key: _value(a.value) for a in rl.resource.attributes}
            assert res == {"service.name": "alpacon-agent", "service.version": res["service.version"],
                           "host.name": res["host.name"], "alpacon.server": "test-server",
                           "alpacon.agent.id": res["alpacon.agent.id"]}
            assert res["service.version"] and res["host.name"] and res["alpacon.agent.id"]
            assert rl.scope_logs[0].scope.name == "alpacon-agent"
        records = {record_id(r): r for x in got for r in x.records()}
        assert set(records) == {f"otlp-field-{k}" for k in EVENTS}
        for kind, data in EVENTS.items():
            rec = records[f"otlp-field-{kind}"]
            attrs = {a.key: _value(a.value) for a in rec.attributes}
            extra, number, text = EXPECTED[kind]
            assert attrs == {"alpacon.event.id": f"otlp-field-{kind}", "alpacon.event.kind": kind, **extra}, kind
            assert rec.time_unix_nano == TS_NS == ts_nanos(TS)
            assert before - 5 * 10**9 <= rec.observed_time_unix_nano <= after, kind
            assert (rec.severity_number, rec.severity_text) == (number, text), kind
            if kind == "system_log":
                assert _value(rec.body) == "fatal: out of luck"
            else:
                body = _value(rec.body)
                # the hook stamps who pushed it: root, this test's own process
                prov = body.pop("provenance")
                assert body == data and (prov["source"], prov["uid"]) == ("hook", 0), kind


class TestOtlpDelivery:
    def test_retries_and_a_partial_success_lose_nothing(self, agent_factory):
        """30% 503, some 429 + Retry-After and one partial success: every pushed id is received in a
        stored request; the partial success's batch is in the dead letters with the server's message."""
        collector = OtlpCollector(error_rate=0.3, throttle_rate=0.05, retry_after=1, partial_at={5},
                                  seed=11).start()
        try:
            agent = _otlp_agent(agent_factory, collector, batch_events=10)
            agent.start()
            n = 2000
            pushed = [f"otlp-deliv-{i:06d}" for i in range(n)]
            with HookClient(agent.socket) as c:
                answers = c.request_many([{"op": "emit", "kind": "command", "id": i,
                                           "data": {"command_id": i, "shell": "system", "line": "true",
                                                    "status": "success"}} for i in pushed])
            assert [a["status"] for a in answers] == ["ok"] * n
            agent.wait_drained(120)
            got = collector.snapshot()
            statuses = [x.status for x in got]
            assert statuses.count(503) >= 3 and statuses.count(429) >= 1, statuses
            assert set(collector.stored_ids()) == set(pushed)
            (partial,) = [x for x in got if x.rejected]
            spool = json.loads(agent.cli("spool", "--json").stdout)
            assert spool["dead_letters"] == 1
            listing = agent.cli("spool").stdout
            assert "OTLP partial success: 3 of" in listing and "records rejected by the test" in listing
            assert agent.metric("alpacon_agent_ship_retries_total", reason="503") >= 3
            assert agent.metric("alpacon_agent_ship_retries_total", reason="429") >= 1
            assert len(partial.records()) >= 3
        finally:
            collector.stop()

    @pytest.mark.parametrize("status", [400, 500])
    def test_a_refusal_not_retryable_under_otlp_is_dead_lettered(self, agent_factory, status):
        """400 and (per the OTLP spec, unlike the http sink) 500 are not retried: the batch goes to the
        dead letters with the google.rpc.Status message; the next batch is stored."""
        collector = OtlpCollector(refuse_at={1: status}).start()
        try:
            agent = _otlp_agent(agent_factory, collector, url=collector.url + "/v1/logs")
            agent.start()
            for i in range(2):
                with HookClient(agent.socket) as c:
                    assert c.request({"op": "emit", "kind": "user_activity", "id": f"otlp-refused-{i:04d}",
                                      "data": {"user": "u", "action": "login", "result": 200}})["status"] == "ok"
                wait_until(lambda i=i: len(collector.snapshot()) > i, 30, what=f"request {i + 1}")
            agent.wait_drained(30)
            assert [x.status for x in collector.snapshot()] == [status, 200]
            assert collector.stored_ids() == ["otlp-refused-0001"]
            assert json.loads(agent.cli("spool", "--json").stdout)["dead_letters"] == 1
            assert f"OTLP HTTP {status}: refused by the test" in agent.cli("spool").stdout
        finally:
            collector.stop()

"""Sinks and the answers that reshape batches: 413 splits, the file and stdout sinks."""

from __future__ import annotations

import json
import subprocess

from agent.hookclient import HookClient
from tests.harness import BIN
from tests.support import wait_until


def _ev(i: int, size: int = 200) -> dict:
    return {"kind": "command", "id": f"sink-test-{i:06d}",
            "data": {"command_id": f"c{i}", "shell": "system", "line": "x" * size, "status": "success"}}


class TestSplitOn413:
    def test_too_large_batches_are_split_until_they_fit(self, agent_factory, receiver):
        """With a 20 kB body limit, 500-event batches are halved until accepted; everything arrives once."""
        receiver.faults(max_body_bytes=20_000)
        agent = agent_factory(receiver)
        agent.start()
        with HookClient(agent.socket) as c:
            assert all(a["status"] == "ok" for a in c.request_many([_ev(i) for i in range(500)]))
        agent.wait_drained(60)
        assert sorted(receiver.ids("command")) == [f"sink-test-{i:06d}" for i in range(500)]
        assert receiver.stats()["requests_by_status"].get("413", 0) >= 1
        assert json.loads(agent.cli("spool", "--json").stdout)["dead_letters"] == 0

    def test_an_event_too_large_alone_is_dead_lettered(self, agent_factory, receiver):
        """One event over the limit is dead-lettered with the reason; its neighbours arrive."""
        receiver.faults(max_body_bytes=20_000)
        agent = agent_factory(receiver, batch={"max_wait_ms": 500})
        agent.start()
        with HookClient(agent.socket) as c:
            answers = c.request_many([_ev(0), _ev(1, size=50_000), _ev(2)])
        assert [a["status"] for a in answers] == ["ok"] * 3
        wait_until(lambda: json.loads(agent.cli("spool", "--json").stdout)["dead_letters"] == 1, 30,
                   what="dead letter")
        agent.wait_drained(30)
        assert sorted(receiver.ids("command")) == ["sink-test-000000", "sink-test-000002"]
        assert "too large even alone" in agent.cli("spool").stdout


class TestLocalSinks:
    def test_file_sink_writes_json_lines(self, agent_factory, tmp_path):
        """The file sink appends one JSON line per event."""
        out = tmp_path / "events.jsonl"
        agent = agent_factory(None, sink={"type": "file", "path": str(out), "token_file": None})
        agent.start()
        with HookClient(agent.socket) as c:
            assert all(a["status"] == "ok" for a in c.request_many([_ev(i) for i in range(25)]))
        agent.wait_drained(30)
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert [e["id"] for e in lines] == [f"sink-test-{i:06d}" for i in range(25)]
        assert all(e["server"] == "test-server" and e["kind"] == "command" for e in lines)
        assert oct(out.stat().st_mode & 0o777) == oct(0o600)

    def test_stdout_sink(self, agent_factory, tmp_path):
        """The stdout sink prints one JSON line per event (here from a syslog file read with --once)."""
        log = tmp_path / "app.log"
        log.write_text("Nov 26 20:00:00 web-01 app[7]: first\nNov 26 20:00:01 web-01 app[7]: second\n")
        agent = agent_factory(None, sink={"type": "stdout", "token_file": None}, hook={"enabled": False},
                              collectors={"syslog": {"enabled": True, "paths": [str(log)], "start_at": "beginning"}})
        r = subprocess.run([str(BIN / "alpacon-agent"), "run", "--once", "--config", str(agent.config_path)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr[-2000:]
        events = [json.loads(x) for x in r.stdout.splitlines()]
        assert [e["data"]["message"] for e in events] == ["first", "second"]
        assert all(e["data"]["program"] == "app" and e["data"]["pid"] == 7 for e in events)


class TestTokenInTheClear:
    def test_plain_http_to_another_host_with_a_token_is_warned(self, tmp_path):
        """A token sent over plain http to another host is logged as a warning at start; https,
        a loopback backend or no token are not."""
        from structlog.testing import capture_logs

        from agent.config import SinkConfig
        from agent.shipping.sinks.http import HttpSink

        token = tmp_path / "token"
        token.write_text("secret-token-0123456789")
        cases = {
            ("http://backend.example:8080/api/v1/agent/events", True): True,
            ("http://10.0.0.5/api/v1/agent/events", True): True,
            ("https://backend.example/api/v1/agent/events", True): False,
            ("http://127.0.0.1:8765/api/v1/agent/events", True): False,
            ("http://[::1]:8765/api/v1/agent/events", True): False,
            ("http://localhost/api/v1/agent/events", True): False,
            ("http://backend.example/api/v1/agent/events", False): False,
        }
        for (url, with_token), warned in cases.items():
            cfg = SinkConfig(url=url, token_file=str(token) if with_token else None)
            with capture_logs() as logs:
                HttpSink(cfg, "0.0")
            got = any("unencrypted" in e["event"] and e["log_level"] == "warning" for e in logs)
            assert got == warned, (url, with_token, logs)

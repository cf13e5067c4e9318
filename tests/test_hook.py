"""The hook API's input boundary: garbage, oversize, unknown kinds, missing fields, foreign uids."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile

import pytest

from agent.hookclient import HookClient
from tests.support import need_root


def _raw(path: str, payload: bytes, n_answers: int) -> list[dict]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(20)
    s.connect(path)
    s.sendall(payload)
    buf = b""
    while buf.count(b"\n") < n_answers:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return [json.loads(line) for line in buf.splitlines()]


GOOD = {"kind": "user_activity", "data": {"user": "bob", "action": "login", "result": 200}}


class TestHookInput:
    def test_garbage_lines_get_reasons_and_neighbours_survive(self, agent, receiver):
        """Non-JSON, non-object, unknown kind, missing field, bad ts/id: each answered invalid; good lines pass."""
        lines = [
            b"this is not json",
            b"[1, 2, 3]",
            json.dumps({"kind": "nonsense", "data": {}}).encode(),
            json.dumps({"kind": "user_activity", "data": {"user": "bob", "action": "login"}}).encode(),
            json.dumps({"kind": "user_activity", "data": "text"}).encode(),
            json.dumps({**GOOD, "ts": "yesterday"}).encode(),
            json.dumps({**GOOD, "id": "../../etc/passwd"}).encode(),
            json.dumps({**GOOD, "unexpected": 1}).encode(),
            json.dumps({"op": "format-disk"}).encode(),
            b"\xff\xfe\x00garbage",
            json.dumps(GOOD).encode(),
        ]
        answers = _raw(agent.socket, b"\n".join(lines) + b"\n", len(lines))
        assert [a["status"] for a in answers] == ["invalid"] * 10 + ["ok"]
        reasons = [a["reason"] for a in answers[:10]]
        assert "not JSON" in reasons[0]
        assert "JSON object" in reasons[1]
        assert "unknown kind 'nonsense'" in reasons[2]
        assert "result" in reasons[3]
        assert "'data' must be an object" in reasons[4]
        assert "RFC 3339" in reasons[5]
        assert "'id'" in reasons[6]
        assert "unexpected" in reasons[7]
        assert "unknown op" in reasons[8]
        assert "not JSON" in reasons[9]

    def test_oversize_message_rejected_without_harm(self, agent_factory, receiver):
        """A message over hook.max_message_bytes is answered invalid; the next line on the same connection works."""
        agent = agent_factory(receiver, hook={"max_message_bytes": 4096})
        agent.start()
        big = json.dumps({"kind": "system_log", "data": {"program": "x", "level": "info", "message": "A" * 10_000_000}})
        answers = _raw(agent.socket, big.encode() + b"\n" + json.dumps(GOOD).encode() + b"\n", 2)
        assert answers[0]["status"] == "invalid" and "larger than 4096" in answers[0]["reason"]
        assert answers[1]["status"] == "ok"
        assert agent.proc.poll() is None

    def test_refs_are_echoed_and_answers_in_order(self, agent):
        """Pipelined requests are answered in order, each with its ref."""
        with HookClient(agent.socket) as c:
            answers = c.request_many([{**GOOD, "ref": i} for i in range(300)])
        assert [a["ref"] for a in answers] == list(range(300))
        assert {a["status"] for a in answers} == {"ok"}
        assert len({a["id"] for a in answers}) == 300

    def test_foreign_uid_denied_while_others_are_served(self, agent_factory, receiver):
        """A producer whose uid is not allowed gets a reasoned denial; an allowed one is served meanwhile."""
        need_root()
        sockdir = tempfile.mkdtemp(prefix="alpacon-hook-")
        os.chmod(sockdir, 0o755)
        # mode 0666: the socket's permissions must not be what stops it; the uid check must
        agent = agent_factory(receiver, hook={"socket": f"{sockdir}/hook.sock", "mode": 0o666})
        agent.start()
        code = (
            "import os, socket, json, sys\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
            "s.sendall(json.dumps({'kind':'user_activity','data':{'user':'x','action':'login','result':200}}).encode()+b'\\n')\n"
            "print(s.makefile().readline())\n"
        )
        with HookClient(agent.socket) as good:
            before = good.request(GOOD)
            r = subprocess.run([sys.executable, "-c", code, agent.socket], capture_output=True, text=True, timeout=30)
            after = good.request(GOOD)
        assert r.returncode == 0, r.stderr
        ans = json.loads(r.stdout)
        assert ans["status"] == "denied" and "uid 65534 is not allowed" in ans["reason"]
        assert before["status"] == after["status"] == "ok"
        assert agent.metric("alpacon_agent_hook_requests_total", status="denied") == 1

    def test_socket_mode(self, agent):
        """The socket is created 0660, not world-writable."""
        assert oct(os.stat(agent.socket).st_mode & 0o777) == oct(0o660)

    @pytest.mark.parametrize("kind", ["system_log", "webftp_transfer", "command", "websh_session", "metrics"])
    def test_each_kind_schema_checked(self, agent, kind):
        """An empty data object is refused for every kind, naming the missing fields."""
        with HookClient(agent.socket) as c:
            a = c.emit(kind, {})
        assert a["status"] == "invalid" and "must contain" in a["reason"]


class TestEmitCommand:
    def test_emit_errors(self, agent):
        """emit: bad JSON exits 2, invalid event exits 2 with the reason, no agent exits 1."""
        r = agent.cli("emit", "user_activity", "--json", "{not json")
        assert r.returncode == 2 and "not valid JSON" in r.stderr
        r = agent.cli("emit", "user_activity", "--json", '{"user": "x"}')
        assert r.returncode == 2 and "invalid" in r.stdout
        r = agent.cli("emit", "user_activity", "--json", json.dumps(GOOD["data"]), "--socket", "/nonexistent.sock")
        assert r.returncode == 1 and "is the agent running" in r.stderr


class TestHostileProducers:
    def test_a_producer_that_never_reads_answers_harms_neither_others_nor_stop(self, agent_factory, receiver):
        """A producer that floods emits and never reads its answers: others are still served and
        SIGTERM still stops the agent promptly."""
        import orjson

        agent = agent_factory(receiver)
        agent.start()
        hostile = socket.socket(socket.AF_UNIX)
        hostile.connect(agent.socket)
        hostile.settimeout(2)
        line = orjson.dumps(GOOD) + b"\n"
        sent = 0
        try:
            while sent < 500_000:  # until the agent stops reading from it (both directions full)
                hostile.sendall(line)
                sent += 1
        except TimeoutError:
            pass
        assert sent < 500_000, "the agent kept reading although its answers were never read"
        with HookClient(agent.socket, timeout=20) as c:
            assert c.emit("user_activity", GOOD["data"])["status"] == "ok"
        try:
            assert agent.stop(timeout=20) == 0
        finally:
            hostile.close()

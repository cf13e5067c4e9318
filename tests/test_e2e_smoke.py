"""End to end: an event sent with ``alpacon-agent emit`` appears in the receiver's API."""

from __future__ import annotations

import json

from tests.support import wait_until


class TestEmitToReceiver:
    def test_emit_appears_in_view(self, agent, receiver):
        """An emitted user_activity event is stored once and shown in the user-activity view."""
        data = {"user": "alice", "ip": "192.0.2.7", "action": "login", "result": 200, "details": {"tty": "pts/0"}}
        r = agent.cli("emit", "user_activity", "--json", json.dumps(data))
        assert r.returncode == 0, r.stderr
        ans = json.loads(r.stdout)
        assert ans["status"] == "ok"
        rows = wait_until(lambda: receiver.view("user-activity"), 30, what="row in user-activity")
        assert len(rows) == 1
        row = rows[0]
        assert row["id"] == ans["id"]
        assert row["server"] == "test-server"
        assert (row["user"], row["ip"], row["action"], row["result"]) == ("alice", "192.0.2.7", "login", 200)

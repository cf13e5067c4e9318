"""The service's life cycle: sd_notify on a real datagram socket, SIGHUP reloads, SIGTERM flush."""

from __future__ import annotations

import re
import signal
import socket
import threading
from collections import Counter

from agent.hookclient import HookClient
from agent.spool import Spool
from tests.harness import deep_merge
from tests.support import wait_until

EVENT = {"user": "carol", "action": "login", "result": 200}


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET; collects what it receives."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except TimeoutError:
                continue

    def has(self, prefix: str) -> bool:
        return any(line.startswith(prefix) for m in list(self.messages) for line in m.split("\n"))

    def close(self) -> None:
        self._stop = True
        self._t.join()
        self.sock.close()


class TestSdNotify:
    def test_ready_watchdog_status_reload_stopping(self, agent_factory, receiver, tmp_path):
        """READY=1, WATCHDOG=1 and STATUS= while running, RELOADING=1 on SIGHUP, STOPPING=1 on SIGTERM."""
        ns = NotifySocket(str(tmp_path / "notify.sock"))
        try:
            agent = agent_factory(receiver)
            agent.env = {"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "300000"}
            agent.start()
            wait_until(lambda: ns.has("READY=1"), 20, what="READY=1")
            wait_until(lambda: sum(m.count("WATCHDOG=1") for m in ns.messages) >= 3, 20, what="watchdog pings")
            wait_until(lambda: ns.has("STATUS="), 20, what="STATUS")
            status = [m for m in ns.messages if m.startswith("STATUS=")][-1]
            assert "events/s" in status and "spool" in status and "last ship" in status
            n_ready = sum(m.count("READY=1") for m in ns.messages)
            agent.signal(signal.SIGHUP)
            wait_until(lambda: ns.has("RELOADING=1"), 20, what="RELOADING=1")
            wait_until(lambda: sum(m.count("READY=1") for m in ns.messages) > n_ready, 20, what="READY after reload")
            assert agent.stop() == 0
            assert ns.has("STOPPING=1")
        finally:
            ns.close()


class TestReload:
    def test_changed_config_applied_without_losing_events(self, agent, receiver):
        """A valid new config takes effect on SIGHUP; events sent around the reload all arrive."""
        with HookClient(agent.socket) as c:
            before = c.request_many([{"kind": "user_activity", "data": EVENT} for _ in range(100)])
        agent.write_config(deep_merge(agent.config, {"server": "renamed-server"}))
        agent.signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in agent.log_path.read_text(), 20, what="reload logged")
        with HookClient(agent.socket) as c:
            after = c.request_many([{"kind": "user_activity", "data": EVENT} for _ in range(100)])
        assert all(a["status"] == "ok" for a in before + after)
        agent.wait_drained()
        rows = receiver.events("user_activity")
        by_id = {r["id"]: r for r in rows}
        assert all(by_id[a["id"]]["server"] == "test-server" for a in before)
        assert all(by_id[a["id"]]["server"] == "renamed-server" for a in after)
        changes = [r for r in rows if r["data"]["action"] == "settings_change"]
        assert len(changes) == 1 and changes[0]["data"]["result"] == 200
        assert "server" in changes[0]["data"]["details"]["changed"]

    def test_invalid_config_keeps_running_one(self, agent, receiver):
        """An invalid config on SIGHUP is refused with the reason; the agent keeps serving the old config."""
        agent.config_path.write_text("batch:\n  max_events: -5\n")
        agent.signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in agent.log_path.read_text(), 20, what="refusal logged")
        assert "batch.max_events" in agent.log_path.read_text()
        with HookClient(agent.socket) as c:
            a = c.emit("user_activity", EVENT)
        assert a["status"] == "ok"
        agent.wait_drained()
        rows = {r["id"]: r for r in receiver.events("user_activity")}
        assert rows[a["id"]]["server"] == "test-server"
        failed = [r for r in rows.values() if r["data"]["action"] == "settings_change"]
        assert len(failed) == 1 and failed[0]["data"]["result"] == 500

    def test_sigterm_flushes_batcher_into_spool(self, agent_factory, receiver, tmp_path):
        """Lines a pull source has read wait in the batcher (max_wait_ms is a minute) when SIGTERM comes:
        the clean stop writes them, with the file's checkpoint, to the spool; a restart ships each once."""
        receiver.stop()
        log = tmp_path / "syslog"
        n = 40
        log.write_text("".join(f"Dec  1 10:00:{i:02d} host app[7]: held line {i}\n" for i in range(n)))
        agent = agent_factory(receiver, batch={"max_wait_ms": 60000, "max_events": 100000}, collectors={
            "syslog": {"enabled": True, "paths": [str(log)], "start_at": "beginning", "poll_interval_s": 0.05}})
        agent.start()
        wait_until(lambda: agent.metric("alpacon_agent_events_total", kind="system_log", outcome="received") >= n,
                   30, what="the lines read into the batcher")
        _, before = Spool.read_stats(agent.spool_path, 1 << 30)
        assert before.events == 0, "the lines were spooled before SIGTERM: the shutdown flush is not exercised"
        assert agent.stop() == 0
        _, after = Spool.read_stats(agent.spool_path, 1 << 30)
        assert after.events == n and after.batches >= 1
        receiver.start()
        agent.start()
        agent.wait_drained()
        seen = Counter(int(m.group(1)) for e in receiver.events("system_log")
                       if (m := re.search(r"held line (\d+)", e["data"]["message"])))
        assert seen == Counter(range(n)), "each held line arrives exactly once (the checkpoint was spooled too)"

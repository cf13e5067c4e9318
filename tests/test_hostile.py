"""Hostile load: every limit holds and every failure is loud, tried as an attacker would."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collectors.auth import AuthDeriver
from collectors.derive import Witness
from collectors.sftp import MAX_OPEN_FILES, MAX_STATE_BYTES, SftpDeriver
from tests.harness import AgentProcess, ReceiverProcess, agent_config
from tests.parts import JOURNALD, LiveJournald
from tests.senders import Intruder, internal_count, sender
from tests.support import need, need_binary, need_root, wait_until

MiB = 1 << 20


def _peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM) in bytes, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def _line(n: int, program: str, message: str, who: dict[str, Any], host: str = "h") -> dict[str, Any]:
    return {"id": f"jd-{n:08d}", "kind": "system_log", "ts": "2026-11-26T20:00:00.000Z",
            "data": {"program": program, "level": "info", "pid": who["pid"], "message": message, "hostname": host,
                     "extra": {"sender": who}}}


@pytest.fixture
def flood_lab(tmp_path: Path) -> Iterator[tuple[LiveJournald, Intruder, ReceiverProcess, AgentProcess]]:
    """A live journald, a throwaway user, a counting receiver and an agent reading the journal."""
    need_root()
    need(os.access(JOURNALD, os.X_OK), "systemd-journald")
    for b in ("logger", "setpriv", "useradd", "nsenter", "unshare"):
        need_binary(b)
    with LiveJournald(tmp_path / "jd", max_file_size="64M") as jd, \
            ReceiverProcess(tmp_path / "receiver", mode="count") as receiver:
        d = tmp_path / "agent"
        d.mkdir()
        agent = AgentProcess(d, agent_config(d, receiver, collectors={
            "journald": {"enabled": True, "directory": str(jd.journal_dir), "start_at": "beginning"},
            "auth": {"enabled": True}, "sftp": {"enabled": True}}))
        intruder = Intruder(jd)
        try:
            agent.start()
            yield jd, intruder, receiver, agent
        finally:
            if agent.proc is not None:
                agent.stop()
            intruder.remove()


class TestDeriverBounds:
    def test_open_file_flood_from_a_local_user_keeps_the_agent_small(self, flood_lab: Any) -> None:
        """60k 'open "/tmp/<2000 chars>-N" flags READ' sftp-server lines from a local user: every
        line is shipped, counted as forged, and the agent's peak RSS stays under 200 MiB."""
        jd, intruder, receiver, agent = flood_lab
        n, name = 60_000, "/tmp/" + "p" * 2000
        lines = [f'open "{name}-{i}" flags READ' for i in range(n)]
        for i in range(0, n, 10_000):
            intruder.logger("sftp-server", *lines[i:i + 10_000], size=8192)

        def shipped() -> int:
            return int(receiver.stats()["stored_by_kind"].get("system_log", 0))

        wait_until(lambda: shipped() >= n, 120, what=f"{n} lines at the receiver (have {shipped()})")
        forged = internal_count(agent, "forged_lines", "program=sftp-server")
        assert forged == n
        assert receiver.stats()["stored_by_kind"].get("webftp_transfer", 0) == 0
        assert agent.proc is not None
        peak = _peak_rss(agent.proc.pid)
        assert peak < 200 * MiB, f"agent peak RSS {peak / MiB:.0f} MiB"

    def test_vouched_open_file_flood_is_capped(self) -> None:
        """The same flood from a process that fits (a real sftp-server of a real session) stays
        within the session's open-file caps and the deriver's byte cap, evictions counted."""
        counted: dict[str, int] = {}
        d = SftpDeriver(counter=lambda name, k, **kw: counted.__setitem__(name, counted.get(name, 0) + k),
                        uid_of=lambda user: 0, lookup_user=lambda pid: None)
        sshd = sender("sshd", pid=100)
        assert d(_line(0, "sshd", "Accepted publickey for root from 192.0.2.1 port 1 ssh2", sshd)) == []
        who = sender("sftp-server", uid=0, pid=4242)
        tracemalloc.start()
        try:
            d(_line(1, "sftp-server", "session opened for local user root from [192.0.2.1]", who))
            name = "/tmp/" + "p" * 2000
            for i in range(60_000):
                d(_line(2 + i, "sftp-server", f'open "{name}-{i}" flags READ', who))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        s = d._sessions[("h", "sftp-server", 4242)]
        assert len(s.open_files) <= MAX_OPEN_FILES and s.open_files.bytes <= s.open_files.max_bytes
        assert counted["deriver_state_evicted"] >= 60_000 - MAX_OPEN_FILES
        assert peak < 16 * MiB, f"{peak / MiB:.1f} MiB traced"
        # the session still works: a transfer of a file opened last is reported
        rows = d(_line(70_000, "sftp-server", f'close "{name}-59999" bytes read 5 written 0', who))
        assert [(r["data"]["size"], r["data"]["provenance"]["source"]) for r in rows] == [(5, "journal")]

    def test_many_vouched_sessions_stay_within_the_byte_cap(self) -> None:
        """Thousands of sessions each holding many long open paths: the whole table keeps to its byte cap."""
        d = SftpDeriver(uid_of=lambda user: 0, lookup_user=lambda pid: None, max_bytes=8 * MiB)
        d(_line(0, "sshd", "Accepted publickey for root from 192.0.2.1 port 1 ssh2", sender("sshd", pid=100)))
        name = "/srv/" + "q" * 3000
        k = 1
        for pid in range(1000, 1400):
            who = sender("sftp-server", uid=0, pid=pid)
            d(_line(k, "sftp-server", "session opened for local user root from [192.0.2.1]", who))
            for j in range(20):
                k += 1
                d(_line(k, "sftp-server", f'open "{name}{j}" flags READ', who))
        assert d._sessions.bytes <= 8 * MiB and d._sessions.evicted > 0
        assert MAX_STATE_BYTES >= 8 * MiB

    def test_auth_connection_tables_are_capped_in_bytes(self) -> None:
        """Accepted lines with 10 kB user names from the real sshd fill the connection table only up
        to its byte cap."""
        counted: list[int] = []
        d = AuthDeriver(max_tracked_bytes=2 * MiB, witness=Witness(), counter=lambda name, k, **kw: counted.append(k))
        for i in range(5_000):
            user = f"u{i}" + "x" * 10_000
            d(_line(i, "sshd", f"Accepted password for {user} from 192.0.2.1 port {i % 60000 + 1} ssh2",
                    sender("sshd", pid=10_000 + i)))
        assert d._conn.bytes <= 2 * MiB and len(d._conn) < 5_000 and sum(counted) == d._conn.evicted

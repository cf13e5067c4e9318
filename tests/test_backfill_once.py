"""Back-filling old logs with ``alpacon-agent run --once``: a copied auth log given as a syslog path
yields its user activity, ``auth.paths`` reads from the beginning with its own ``start_at``, and an
FTP server's transfer log given as ``ftp.paths`` yields its transfers."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.harness import ReceiverProcess

#: an old RHEL 4 ``secure`` with CRLF line ends (copied from elsewhere), written last Dec 1
SECURE = [
    "Dec  1 09:00:00 rhel4 sshd[2000]: Accepted password for gina from 192.0.2.33 port 40000 ssh2",
    "Dec  1 09:00:00 rhel4 sshd(pam_unix)[2000]: session opened for user gina by (uid=0)",
    "Dec  1 09:05:00 rhel4 sshd(pam_unix)[2100]: authentication failure; logname= uid=0 euid=0 tty=NODEVssh "
    "ruser= rhost=198.51.100.7  user=root",
    "Dec  1 09:05:09 rhel4 sshd[2100]: message repeated 5 times: [ Failed password for root from 198.51.100.7 "
    "port 4242 ssh2]",
    "Dec  1 09:06:00 rhel4 su(pam_unix)[2200]: session opened for user root by gina(uid=500)",
    "Dec  1 09:07:00 rhel4  -- root[2421]: ROOT LOGIN ON tty2",
    "Dec  1 09:20:00 rhel4 sshd[2002]: Received disconnect from 192.0.2.33: 11: Bye Bye",
]
EXPECTED = Counter({
    ("gina", "192.0.2.33", "login", 200): 1,
    ("root", "198.51.100.7", "login_failed", 401): 2,
    ("gina", None, "su", 200): 1,
    ("root", None, "login", 200): 1,
    ("gina", "192.0.2.33", "logout", 200): 1,
})


def write_secure(path: Path) -> None:
    path.write_bytes("".join(line + "\r\n" for line in SECURE).encode())
    last_dec1 = time.mktime((time.localtime().tm_year - 1, 12, 1, 9, 20, 5, 0, 0, -1))
    os.utime(path, (last_dec1, last_dec1))


def activity(receiver: ReceiverProcess) -> Counter[tuple[Any, ...]]:
    return Counter((r["user"], r["ip"], r["action"], r["result"]) for r in receiver.view("user-activity", limit=1000))


class TestBackfillOnce:
    def test_auth_style_file_as_a_syslog_path(self, agent_factory: Any, receiver: ReceiverProcess, tmp_path: Path):
        """Only collectors.syslog.paths names the file: its lines are system logs and its user
        activity comes out too, dated in the year its mtime says, messages without CR."""
        secure = tmp_path / "secure-copy"
        write_secure(secure)
        agent = agent_factory(receiver, collectors={
            "syslog": {"enabled": True, "paths": [str(secure)], "start_at": "beginning"},
            "auth": {"enabled": True},
        })
        r = agent.cli("run", "--once", "--timeout", "60")
        assert r.returncode == 0, r.stderr[-3000:]
        logs = receiver.view("system-logs", limit=1000)
        assert len(logs) == len(SECURE)
        assert not any(x["message"].endswith("\r") for x in logs)
        year = time.localtime().tm_year - 1
        assert {x["ts"][:4] for x in logs} == {str(year)}
        assert activity(receiver) == EXPECTED
        rows = receiver.view("user-activity", limit=1000)
        assert sorted(r["details"].get("attempts") or 0 for r in rows) == [0, 0, 0, 0, 0, 5]

    def test_auth_paths_back_fill_with_their_own_start_at(self, agent_factory: Any, receiver: ReceiverProcess,
                                                           tmp_path: Path):
        """auth.paths with start_at: beginning reads the file from its start though the syslog
        collector is off (its start_at, 'end', is not the auth files')."""
        secure = tmp_path / "secure"
        write_secure(secure)
        agent = agent_factory(receiver, collectors={
            "auth": {"enabled": True, "source": "file", "paths": [str(secure)], "start_at": "beginning"},
        })
        r = agent.cli("run", "--once", "--timeout", "60")
        assert r.returncode == 0, r.stderr[-3000:]
        assert activity(receiver) == EXPECTED
        # the position was saved: a second run adds nothing
        r = agent.cli("run", "--once", "--timeout", "60")
        assert r.returncode == 0, r.stderr[-3000:]
        assert sum(activity(receiver).values()) == sum(EXPECTED.values())

    def test_ftp_transfer_log_back_fill(self, agent_factory: Any, receiver: ReceiverProcess, tmp_path: Path):
        """ftp.paths with start_at: beginning: each xferlog line is a system log and one transfer."""
        xferlog = tmp_path / "xferlog"
        xferlog.write_text(
            "Tue Dec  1 10:00:00 2026 1 198.51.100.7 1048576 /srv/ftp/a.iso b _ o r alice ftp 0 * c\n"
            "Tue Dec  1 10:00:05 2026 3 198.51.100.7 4096 /home/bob/up.txt b _ i r bob ftp 0 * c\n"
            "Tue Dec  1 10:00:09 2026 2 203.0.113.5 392243 /srv/ftp/big.bin b _ o r alice ftp 0 * i\n")
        agent = agent_factory(receiver, collectors={
            "ftp": {"enabled": True, "paths": [str(xferlog)], "start_at": "beginning"},
        })
        r = agent.cli("run", "--once", "--timeout", "60")
        assert r.returncode == 0, r.stderr[-3000:]
        rows = receiver.view("webftp-transfers", limit=100)
        assert sorted((x["username"], x["type"], x["path"], x["size"], x["status"]) for x in rows) == [
            ("alice", "download", "/srv/ftp/a.iso", 1048576, "success"),
            ("alice", "download", "/srv/ftp/big.bin", 392243, "failed"),
            ("bob", "upload", "/home/bob/up.txt", 4096, "success"),
        ]
        assert len(receiver.view("system-logs", limit=100)) == 3

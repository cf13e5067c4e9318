"""The file route of the derivers: with journald off, auth lines written by a real rsyslog to
an auth log file reach the receiver as user_activity and webftp_transfer rows, and a copy of
the same lines in another syslog file does not count twice. Such rows say
``provenance.source: file``: a file proves no sender."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ReceiverProcess
from tests.parts import RsyslogInstance, wait_lines
from tests.support import need_binary, wait_until

AUTH_LINES = [
    ("sshd", 700, "Accepted password for alice from 192.0.2.10 port 5000 ssh2"),
    ("sshd", 701, "Failed password for invalid user admin from 203.0.113.9 port 22 ssh2"),
    ("sftp-server", 702, "session opened for local user alice from [192.0.2.10]"),
    ("sftp-server", 702, 'open "/home/alice/report.pdf" flags READ mode 0666'),
    ("sftp-server", 702, 'close "/home/alice/report.pdf" bytes read 4242 written 0'),
    ("sftp-server", 702, "session closed for local user alice from [192.0.2.10]"),
    ("sudo", 703, "alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/id"),
    ("sshd", 700, "pam_unix(sshd:session): session closed for user alice"),
]


@pytest.fixture
def rsyslog(tmp_path: Path) -> Any:
    need_binary("rsyslogd")
    with RsyslogInstance(tmp_path / "rsyslog") as r:
        yield r


class TestAuthFromFile:
    def test_auth_log_file_route(self, rsyslog: RsyslogInstance, agent_factory: Any,
                                 receiver: ReceiverProcess) -> None:
        """Lines in the auth log give their rows once; the same lines in another file are ignored."""
        auth_log = rsyslog.syslog_path  # rsyslog's RFC 3339 file stands for /var/log/auth.log
        other = rsyslog.traditional_path  # the same lines again, as in a catch-all syslog file
        for program, pid, msg in AUTH_LINES:
            rsyslog.send(msg, tag=program, pid=pid, facility=10)
        wait_lines(auth_log, len(AUTH_LINES))
        wait_lines(other, len(AUTH_LINES))
        agent = agent_factory(receiver, collectors={
            "syslog": {"enabled": True, "paths": [str(auth_log), str(other)], "start_at": "beginning"},
            "auth": {"enabled": True, "source": "file", "paths": [str(auth_log)]},
            "sftp": {"enabled": True},
        })
        agent.start()
        expected = Counter({
            ("alice", "192.0.2.10", "login", 200): 1,
            ("admin", "203.0.113.9", "login_failed", 401): 1,
            ("alice", None, "sudo", 200): 1,
            ("alice", "192.0.2.10", "logout", 200): 1,
        })

        def activity() -> Counter[tuple[Any, ...]]:
            return Counter((r["user"], r["ip"], r["action"], r["result"]) for r in receiver.view("user-activity"))

        wait_until(lambda: activity() == expected, 30, what=f"user activity {expected} (have {activity()})")
        # both files are read to their end before the final count
        wait_until(lambda: len(receiver.view("system-logs")) == 2 * len(AUTH_LINES), 30, what="all lines read")
        assert activity() == expected
        rows = receiver.view("webftp-transfers")
        assert [(r["username"], r["type"], r["path"], r["size"], r["status"]) for r in rows] == [
            ("alice", "download", "/home/alice/report.pdf", 4242, "success")]
        # files cannot vouch: every row says it came from a file, and from which
        for r in [*rows, *receiver.view("user-activity")]:
            assert r["provenance"] == {"source": "file", "path": str(auth_log)}, r
        agent.stop()

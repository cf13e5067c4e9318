"""A local user who sends syslog lines that imitate an FTP server's transfer log (``logger -t xferlog``,
or a message that starts like an xferlog line) through a real rsyslog gets system logs, never a
WebFTP transfer."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import ReceiverProcess
from tests.parts import RsyslogInstance, wait_lines
from tests.support import need_binary, need_root, wait_until

FAKE = "1 198.51.100.7 4096 /etc/shadow b _ o r root ftp 0 * c"


@pytest.fixture
def lab() -> Iterator[tuple[RsyslogInstance, str]]:
    need_root()
    need_binary("rsyslogd")
    need_binary("useradd")
    need_binary("runuser")
    need_binary("logger")
    root = Path(tempfile.mkdtemp(prefix="alpacon-forge-"))
    os.chmod(root, 0o755)  # the user must reach the socket
    user = f"forge{secrets.token_hex(3)}"
    subprocess.run(["useradd", "-M", "-s", "/bin/sh", user], check=True, capture_output=True)
    try:
        with RsyslogInstance(root / "rsyslog") as r:
            wait_until(r.socket_path.exists, 20, what="rsyslog socket")
            os.chmod(r.root, 0o755)
            os.chmod(r.socket_path, 0o666)
            yield r, user
    finally:
        subprocess.run(["userdel", user], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


class TestForgedTransfers:
    def test_logger_lines_are_not_transfers(self, lab: tuple[RsyslogInstance, str], agent_factory: Any,
                                            receiver: ReceiverProcess):
        """Both forgeries reach the files as system logs and give no webftp_transfer."""
        rsyslog, user = lab
        for args in (["-t", "xferlog", FAKE], ["-t", "ftp", f"Tue Dec  1 10:00:00 2026 {FAKE}"]):
            r = subprocess.run(["runuser", "-u", user, "--", "logger", "--socket", str(rsyslog.socket_path), *args],
                               capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
        wait_lines(rsyslog.syslog_path, 2)
        wait_lines(rsyslog.traditional_path, 2)
        agent = agent_factory(receiver, collectors={
            "syslog": {"enabled": True, "paths": [str(rsyslog.syslog_path), str(rsyslog.traditional_path)],
                       "start_at": "beginning"},
            "ftp": {"enabled": True, "paths": []},
        })
        r = agent.cli("run", "--once", "--timeout", "60")
        assert r.returncode == 0, r.stderr[-3000:]
        logs = receiver.view("system-logs", limit=100)
        assert sorted(x["program"] for x in logs) == ["ftp", "ftp", "xferlog", "xferlog"]
        assert receiver.view("webftp-transfers", limit=100) == []

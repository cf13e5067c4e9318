"""A real vsftpd on 127.0.0.1 writes its standard xferlog while Python's ftplib uploads, downloads and
aborts a download: each transfer gives exactly one ``webftp_transfer`` with the right fields."""

from __future__ import annotations

import ftplib
import io
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.events import parse_ts
from agent.schema import validate_data
from collectors.derivers.ftp import FtpTransferDeriver
from collectors.syslog.parse import SyslogLineParser
from tests.harness import ReceiverProcess
from tests.support import free_port, need_binary, need_root, wait_until

CONF = """listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
listen_port={port}
background=NO
anonymous_enable=NO
local_enable=YES
write_enable=YES
use_localtime=YES
xferlog_enable=YES
xferlog_std_format=YES
xferlog_file={root}/xferlog
dual_log_enable=YES
vsftpd_log_file={root}/vsftpd.log
seccomp_sandbox=NO
pam_service_name=vsftpd
secure_chroot_dir={root}/empty
"""


class VsftpdLab:
    """A vsftpd (foreground, our child) on a free 127.0.0.1 port, and a throwaway local user."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.user = f"ftpt{secrets.token_hex(3)}"
        self.password = "Ftp-" + secrets.token_hex(6)
        self.home = root / "home" / self.user
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> VsftpdLab:
        (self.root / "empty").mkdir(mode=0o755)
        (self.root / "home").mkdir()
        subprocess.run(["useradd", "-m", "-d", str(self.home), "-s", "/bin/bash", self.user], check=True,
                       capture_output=True)
        subprocess.run(["chpasswd"], input=f"{self.user}:{self.password}\n", text=True, check=True)
        conf = self.root / "vsftpd.conf"
        conf.write_text(CONF.format(port=self.port, root=self.root))
        self.proc = subprocess.Popen([need_binary("vsftpd", "/usr/sbin/vsftpd"), str(conf)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"vsftpd exited: {self.proc.stdout.read() if self.proc.stdout else b''!r}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(listening, 20, what="vsftpd listening")
        return self

    def client(self) -> ftplib.FTP:
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", self.port, timeout=20)
        ftp.login(self.user, self.password)
        return ftp

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        subprocess.run(["userdel", "-r", self.user], capture_output=True)


@pytest.fixture
def vsftpd() -> Iterator[VsftpdLab]:
    need_root()
    need_binary("vsftpd", "/usr/sbin/vsftpd")
    need_binary("useradd")
    # not under pytest's tmp_path: its parents are private to root, and the FTP user must reach its home
    root = Path(tempfile.mkdtemp(prefix="alpacon-vsftpd-"))
    os.chmod(root, 0o755)
    lab = VsftpdLab(root)
    try:
        yield lab.start()
    finally:
        lab.stop()
        shutil.rmtree(root, ignore_errors=True)


def transfers(path: Path) -> list[dict[str, Any]]:
    """The rows the FTP deriver makes of a log file, read as the file source reads it."""
    deriver = FtpTransferDeriver()
    parser = SyslogLineParser(anchor=path.stat().st_mtime)
    rows = []
    for off, raw in enumerate(path.read_bytes().splitlines()):
        ts, data = parser.parse(raw.decode("utf-8", "replace"))
        data["source"] = str(path)
        for ev in deriver({"id": f"f-0000-{off}", "kind": "system_log", "ts": ts, "data": data}):
            validate_data("webftp_transfer", ev["data"])
            rows.append({**ev["data"], "ts": ev["ts"]})
    return rows


class TestVsftpdXferlog:
    def test_upload_download_and_aborted_download(self, vsftpd: VsftpdLab, agent_factory: Any,
                                                  receiver: ReceiverProcess):
        """One row per transfer: the upload, the download and the aborted download (failed, partial size)."""
        started = time.time() - 1
        big = vsftpd.home / "big.bin"
        with open(big, "wb") as f:  # larger than the socket buffers, so that closing midway aborts it
            f.truncate(64 * 1024 * 1024)
        subprocess.run(["chown", vsftpd.user, str(big)], check=True)
        payload = os.urandom(5000)
        ftp = vsftpd.client()
        ftp.storbinary("STOR up file.bin", io.BytesIO(payload))
        got = io.BytesIO()
        ftp.retrbinary("RETR up file.bin", got.write)
        assert got.getvalue() == payload
        conn = ftp.transfercmd("RETR big.bin")
        conn.recv(4096)
        conn.close()
        with pytest.raises(ftplib.error_temp):
            ftp.voidresp()  # 426: the server saw the transfer cut
        ftp.quit()
        xferlog = vsftpd.root / "xferlog"
        wait_until(lambda: xferlog.exists() and xferlog.read_bytes().count(b"\n") >= 3, 20, what="3 xferlog lines")
        rows = transfers(xferlog)
        home = str(vsftpd.home)
        assert [(r["type"], r["username"], r["path"], r["object_name"], r["remote_ip"], r["status"]) for r in rows] == [
            ("upload", vsftpd.user, f"{home}/up_file.bin", "up_file.bin", "127.0.0.1", "success"),
            ("download", vsftpd.user, f"{home}/up_file.bin", "up_file.bin", "127.0.0.1", "success"),
            ("download", vsftpd.user, f"{home}/big.bin", "big.bin", "127.0.0.1", "failed"),
        ]
        assert [r["size"] for r in rows[:2]] == [5000, 5000]
        assert 0 < rows[2]["size"] < 64 * 1024 * 1024 and rows[2]["error"] == "incomplete transfer"
        for r in rows:
            assert started - 1 <= parse_ts(r["ts"]) <= time.time() + 1
            assert r["source"] == "xferlog" and r["extra"]["access_mode"] == "real"
        # the agent itself: ftp.paths names the xferlog, read from its start; one row per transfer
        agent = agent_factory(receiver, collectors={"ftp": {"enabled": True, "paths": [str(xferlog)],
                                                            "start_at": "beginning"}})
        r = agent.cli("run", "--once", "--timeout", "60")
        assert r.returncode == 0, r.stderr[-3000:]
        shipped = receiver.view("webftp-transfers", limit=100)
        assert sorted((x["type"], x["username"], x["path"], x["size"], x["remote_ip"], x["status"]) for x in shipped) \
            == sorted((x["type"], x["username"], x["path"], x["size"], x["remote_ip"], x["status"]) for x in rows)
        assert len(receiver.view("system-logs", limit=100)) == 3
        # vsftpd's own log of the same session (dual_log_enable) gives the same three transfers
        own = transfers(vsftpd.root / "vsftpd.log")
        assert [(r["type"], r["path"], r["size"] if r["status"] == "success" else "partial", r["status"])
                for r in own] == [
            ("upload", f"{home}/up file.bin", 5000, "success"),
            ("download", f"{home}/up file.bin", 5000, "success"),
            ("download", f"{home}/big.bin", "partial", "failed"),
        ]

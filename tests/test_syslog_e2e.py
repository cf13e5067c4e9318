"""syslog files end to end: a real rsyslog writing in a temp dir, a real agent and the receiver."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections import Counter

import pytest

from tests.parts import RsyslogInstance, count_lines
from tests.support import need_binary, wait_until

SEQ = re.compile(r"src=rs seq=(\d+)")


class Writer(threading.Thread):
    """Sends ``src=rs seq=N`` lines to rsyslog at a steady pace; can be paused."""

    def __init__(self, rs: RsyslogInstance, n: int) -> None:
        super().__init__(daemon=True)
        self.rs, self.n = rs, n
        self.sent = 0
        self.go = threading.Event()
        self.go.set()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for i in range(self.n):
                self.go.wait()
                self.rs.send(f"src=rs seq={i}", tag="w-rs", pid=4321)
                self.sent = i + 1
                if i % 20 == 19:
                    time.sleep(0.01)
        except BaseException as exc:  # noqa: BLE001
            self.error = exc


@pytest.fixture
def rsyslog(tmp_path):
    need_binary("rsyslogd", "/usr/sbin/rsyslogd")
    with RsyslogInstance(tmp_path / "rs") as rs:
        yield rs


def _seqs(receiver) -> list[int]:
    return [int(m.group(1)) for e in receiver.events(kind="system_log")
            if (m := SEQ.search(e["data"]["message"]))]


class TestSyslogFileEndToEnd:
    def test_rotations_and_sigkill_exactly_once(self, rsyslog, receiver, agent_factory):
        """rsyslog lines survive rename and copytruncate rotation, delete + re-create and a SIGKILL,
        arriving exactly once with program, pid and host parsed."""
        rs = rsyslog
        log = rs.syslog_path
        n = 12_000
        agent = agent_factory(receiver, collectors={"syslog": {
            "enabled": True, "paths": [str(log)], "start_at": "beginning", "poll_interval_s": 0.05,
            "glob_interval_s": 0.2, "partial_line_timeout_s": 1.0}})
        agent.start()
        w = Writer(rs, n)
        w.start()

        def progress(k: int) -> None:
            at = w.sent
            wait_until(lambda: w.sent >= at + k or w.error, 60, what="writer progress")
            assert w.sent < n, "the writer finished before every rotation was done"

        progress(1500)
        os.rename(log, log.with_name("syslog.1"))  # rotation by rename, as logrotate does
        rs.reopen()
        progress(1500)
        agent.kill()  # crash while lines keep coming
        progress(1000)
        agent.start()
        progress(1000)
        # copytruncate: shift the old file, copy, cut (writer paused so the rotation itself loses nothing)
        w.go.clear()
        wait_until(lambda: count_lines(log) + count_lines(log.with_name("syslog.1")) == w.sent, 30,
                   what="rsyslog flushed")
        os.rename(log.with_name("syslog.1"), log.with_name("syslog.2"))
        shutil.copyfile(log, log.with_name("syslog.1"))
        with open(log, "r+b") as f:
            f.truncate(0)
        w.go.set()
        progress(1500)
        log.unlink()  # deletion and re-creation
        rs.reopen()
        w.join(120)
        assert w.error is None and w.sent == n
        wait_until(lambda: len(_seqs(receiver)) >= n, 120, interval=0.5, what="all lines at the receiver")
        agent.wait_drained()
        seqs = Counter(_seqs(receiver))
        assert sorted(seqs) == list(range(n)) and set(seqs.values()) == {1}
        ev = receiver.events(kind="system_log")[0]["data"]
        assert (ev["program"], ev["pid"], ev["source"]) == ("w-rs", 4321, str(log))
        assert ev["hostname"]
        text = agent.log_path.read_text()
        assert "syslog_rotated" in text and "syslog_copytruncate" in text

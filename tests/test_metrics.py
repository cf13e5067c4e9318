"""System signs: rate arithmetic (resets, devices appearing and vanishing), real psutil samples
with real traffic, a real interface and a real disk that come and go, and the collector
through a real agent."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections import namedtuple
from pathlib import Path
from typing import Any

import psutil

from agent.schema import validate_data
from collectors.metrics import DISK_FIELDS, NET_FIELDS, MetricsSampler, RateTracker, real_mounts
from tests.harness import ReceiverProcess
from tests.support import need, need_binary, need_root, wait_until

# the shapes psutil returns (its own namedtuple types moved between releases)
snetio = namedtuple("snetio", "bytes_sent bytes_recv packets_sent packets_recv errin errout dropin dropout")
sdiskio = namedtuple("sdiskio", "read_count write_count read_bytes write_bytes read_time write_time")
sdiskpart = namedtuple("sdiskpart", "device mountpoint fstype opts")


def net(sent: int, recv: int) -> snetio:
    return snetio(sent, recv, sent // 100, recv // 100, 0, 0, 0, 0)


def disk(r: int, w: int) -> sdiskio:
    return sdiskio(r // 512, w // 512, r, w, 0, 0)


def all_numbers(obj: Any) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in all_numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in all_numbers(v)]
    return [obj] if isinstance(obj, int | float) and not isinstance(obj, bool) else []


class TestRateTracker:
    def test_rates_from_counters(self) -> None:
        """A rate is the counter difference over the time between samples."""
        t = RateTracker(NET_FIELDS)
        assert t.update({"eth0": net(1000, 2000)}, 10.0) == {}
        r = t.update({"eth0": net(3000, 6000)}, 12.0)
        assert r["eth0"]["bytes_sent_per_s"] == 1000.0 and r["eth0"]["bytes_recv_per_s"] == 2000.0

    def test_counter_reset(self) -> None:
        """A counter that went down restarted from zero: its rate is value/dt, never negative."""
        t = RateTracker(DISK_FIELDS)
        t.update({"sda": disk(10_000_000, 10_000_000)}, 0.0)
        r = t.update({"sda": disk(4096, 8192)}, 2.0)
        assert r["sda"]["read_bytes_per_s"] == 2048.0 and r["sda"]["write_bytes_per_s"] == 4096.0
        assert t.resets == 4

    def test_devices_appear_and_vanish(self) -> None:
        """A new device gets rates from its second sample on; a vanished one is dropped quietly."""
        t = RateTracker(NET_FIELDS)
        t.update({"eth0": net(0, 0)}, 0.0)
        r = t.update({"eth0": net(100, 100), "tap0": net(5, 5)}, 1.0)
        assert set(r) == {"eth0"}
        r = t.update({"tap0": net(105, 5)}, 2.0)
        assert set(r) == {"tap0"} and r["tap0"]["bytes_sent_per_s"] == 100.0
        r = t.update({"eth0": net(500, 500), "tap0": net(105, 5)}, 3.0)
        assert set(r) == {"tap0"}  # eth0 came back: a new device again

    def test_clock_not_advancing(self) -> None:
        """Two samples at the same instant give no rates rather than a division by zero."""
        t = RateTracker(NET_FIELDS)
        t.update({"eth0": net(0, 0)}, 5.0)
        assert t.update({"eth0": net(10, 10)}, 5.0) == {}

    def test_garbage_counters(self) -> None:
        """Negative or missing counter fields count as zero."""
        t = RateTracker(NET_FIELDS)
        t.update({"x": object()}, 0.0)
        r = t.update({"x": snetio(-5, 10, 0, 0, 0, 0, 0, 0)}, 1.0)
        assert all(v >= 0 for v in r["x"].values())


class TestRealMounts:
    def test_pseudo_and_bind_mounts_left_out(self) -> None:
        """tmpfs, proc, overlay … are not disks; a device mounted twice is listed once."""
        parts = [
            sdiskpart("/dev/vda1", "/", "ext4", "rw"),
            sdiskpart("/dev/vda1", "/srv/bind", "ext4", "rw"),
            sdiskpart("tmpfs", "/run", "tmpfs", "rw"),
            sdiskpart("overlay", "/var/lib/docker/x", "overlay", "rw"),
            sdiskpart("proc", "/proc", "proc", "rw"),
            sdiskpart("/dev/sdb1", "/data", "xfs", "rw"),
            sdiskpart("", "/weird", "", "rw"),
        ]
        assert [p.mountpoint for p in real_mounts(parts)] == ["/", "/data"]


class TestMetricsSampler:
    def test_plausible_non_negative_samples(self) -> None:
        """Successive real samples validate, are non-negative, and loopback traffic shows in lo's rate."""
        s = MetricsSampler()
        s.sample()
        sent = _loopback_traffic(4 * 1024 * 1024)
        d = s.sample()
        validate_data("metrics", d)
        assert all(x >= 0 for x in all_numbers(d)), d
        assert 0 <= d["cpu"]["percent"] <= 100 and len(d["cpu"]["per_core"]) == psutil.cpu_count()
        assert d["memory"]["total"] > d["memory"]["available"] > 0
        assert len(d["load"]) == 3
        assert any(m["mount"] == "/" for m in d["disks"]) or d["disks"] == []
        lo = d["network"].get("lo")
        need(lo is not None, "a loopback interface")
        assert lo["bytes_sent_per_s"] * d["interval_s"] >= sent * 0.9

    def test_interface_and_disk_appear_and_vanish(self, tmp_path: Path) -> None:
        """A real tap interface and a loop-mounted disk appear between samples and vanish again."""
        need_root()
        need_binary("ip")
        need_binary("mkfs.ext4")
        s = MetricsSampler()
        s.sample()
        tap = f"alptap{os.getpid() % 10000}"
        img, mnt = tmp_path / "disk.img", tmp_path / "mnt"
        mnt.mkdir()
        ok = subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"], capture_output=True).returncode == 0
        need(ok, "tun/tap devices (ip tuntap add)")
        mounted = False
        try:
            subprocess.run(["truncate", "-s", "16M", str(img)], check=True)
            subprocess.run(["mkfs.ext4", "-q", str(img)], check=True)
            mounted = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True).returncode == 0
            need(mounted, "loop mounts")
            (mnt / "f").write_bytes(os.urandom(1 << 20))
            os.sync()
            d1 = s.sample()
            assert any(m["mount"] == str(mnt) for m in d1["disks"])
            assert tap not in d1["network"]  # appeared: no rate yet
            d2 = s.sample()
            assert tap in d2["network"]
            assert all(x >= 0 for x in all_numbers(d2))
        finally:
            if mounted:
                subprocess.run(["umount", str(mnt)], check=False)
            subprocess.run(["ip", "link", "del", tap], capture_output=True, check=False)
        d3 = s.sample()
        validate_data("metrics", d3)
        assert tap not in d3["network"] and not any(m["mount"] == str(mnt) for m in d3["disks"])
        assert all(x >= 0 for x in all_numbers(d3))

    def test_failing_psutil_source(self) -> None:
        """A counter source that fails (a device vanishing mid-read) gives an empty section, not a crash."""
        s = MetricsSampler()

        def boom() -> Any:
            raise OSError("device gone")

        s.net_io_counters = boom
        s.disk_io_counters = boom
        s.disk_partitions = boom
        d = s.sample()
        assert d["network"] == {} and d["disk_io"] == {} and d["disks"] == []


class TestMetricsCollector:
    def test_samples_reach_the_receiver(self, agent_factory: Any, receiver: ReceiverProcess) -> None:
        """With a short interval the agent ships successive, valid, non-negative samples."""
        a = agent_factory(receiver, collectors={"metrics": {"enabled": True, "interval_s": 0.2}})
        a.start()
        rows = wait_until(lambda: len(r := receiver.view("metrics")) >= 3 and r, 30, what="3 metrics samples")
        for row in rows:
            assert all(
                x >= 0
                for x in all_numbers({k: v for k, v in row.items() if k in ("cpu", "memory", "disk_io", "network")})
            )
        a.stop()


def _loopback_traffic(n: int) -> int:
    """Send ``n`` bytes over a loopback TCP connection; returns the number sent."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def drain() -> None:
        conn, _ = srv.accept()
        with conn:
            while conn.recv(1 << 16):
                pass

    t = threading.Thread(target=drain)
    t.start()
    with socket.create_connection(srv.getsockname()) as c:
        c.sendall(b"\0" * n)
    t.join(10)
    srv.close()
    return n

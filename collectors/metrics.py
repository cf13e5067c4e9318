"""System signs: a ``metrics`` event every ``interval_s`` from psutil.

Each sample holds CPU (total and per core, percent), load averages, memory and swap, disk
usage per real mount (pseudo and virtual file systems left out, one row per device), and
per-second rates of disk I/O per disk and network traffic per interface.

Rates come from counters (:class:`RateTracker`): the difference between two samples over the
time between them. A counter that went down was reset (a driver reload, a device re-created,
a 32-bit wrap) and counts from zero, so its rate is ``value / dt`` as Prometheus's ``rate()``
does; rates are never negative. A device that appears gets rates from its second sample on;
one that vanishes is simply no longer reported.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import psutil

from agent.collector import Collector
from agent.events import format_ts, make_event

#: file systems that are not real storage
PSEUDO_FS = frozenset({
    "autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs", "devpts",
    "devtmpfs", "efivarfs", "fusectl", "hugetlbfs", "mqueue", "nsfs", "overlay", "proc",
    "pstore", "ramfs", "rpc_pipefs", "securityfs", "squashfs", "sysfs", "tmpfs", "tracefs",
    "fuse.gvfsd-fuse", "fuse.lxcfs", "fuse.portal", "nfsd", "iso9660", "devfs", "shm",
})

DISK_FIELDS = ("read_bytes", "write_bytes", "read_count", "write_count")
NET_FIELDS = ("bytes_recv", "bytes_sent", "packets_recv", "packets_sent", "errin", "errout", "dropin", "dropout")


class RateTracker:
    """Per-second rates of named counter sets (per device) between successive samples."""

    def __init__(self, fields: tuple[str, ...]) -> None:
        self.fields = fields
        self._prev: dict[str, tuple[int, ...]] = {}
        self._prev_t: float | None = None
        self.resets = 0

    def update(self, counters: Mapping[str, Any], now: float) -> dict[str, dict[str, float]]:
        """Rates for each device seen in this sample and the previous one."""
        cur = {
            dev: tuple(max(0, int(getattr(c, f, 0) or 0)) for f in self.fields)
            for dev, c in counters.items()
        }
        out: dict[str, dict[str, float]] = {}
        dt = None if self._prev_t is None else now - self._prev_t
        if dt is not None and dt > 0:
            for dev, values in cur.items():
                prev = self._prev.get(dev)
                if prev is None:
                    continue  # appeared since the last sample
                rates: dict[str, float] = {}
                for f, v, p in zip(self.fields, values, prev, strict=True):
                    delta = v - p
                    if delta < 0:  # reset: the counter restarted from zero
                        self.resets += 1
                        delta = v
                    rates[f + "_per_s"] = round(delta / dt, 3)
                out[dev] = rates
        self._prev = cur
        self._prev_t = now
        return out


def real_mounts(partitions: list[Any]) -> list[Any]:
    """Mounts of real storage: no pseudo file systems, one per device (bind mounts dropped)."""
    seen: set[str] = set()
    out = []
    for p in partitions:
        fstype = (p.fstype or "").lower()
        if not fstype or fstype in PSEUDO_FS or not p.device or p.device in ("none", "tmpfs"):
            continue
        if p.device in seen:
            continue
        seen.add(p.device)
        out.append(p)
    return out


def _used_disks() -> dict[str, Any]:
    """Per-disk I/O counters, without block devices that never did any I/O (unused loop, ram)."""
    counters = psutil.disk_io_counters(perdisk=True) or {}
    return {k: v for k, v in counters.items() if any(getattr(v, f, 0) for f in DISK_FIELDS)}


class MetricsSampler:
    """Takes one sample; the psutil functions are attributes so a test can swap one."""

    def __init__(self) -> None:
        self.disk_rates = RateTracker(DISK_FIELDS)
        self.net_rates = RateTracker(NET_FIELDS)
        self.disk_io_counters: Callable[[], Mapping[str, Any] | None] = _used_disks
        self.net_io_counters: Callable[[], Mapping[str, Any]] = lambda: psutil.net_io_counters(pernic=True)
        self.disk_partitions: Callable[[], list[Any]] = lambda: psutil.disk_partitions(all=False)
        self._last_t: float | None = None
        psutil.cpu_percent(percpu=True)  # the first call only starts the measurement

    def sample(self, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        per_core = psutil.cpu_percent(percpu=True)
        total = round(sum(per_core) / len(per_core), 2) if per_core else 0.0
        vm = psutil.virtual_memory()
        sw = psutil.swap_memory()
        data: dict[str, Any] = {
            "cpu": {"percent": total, "per_core": [round(x, 2) for x in per_core], "count": len(per_core)},
            "load": [round(x, 3) for x in psutil.getloadavg()],
            "memory": {"total": vm.total, "available": vm.available, "used": vm.used,
                       "percent": round(vm.percent, 2)},
            "swap": {"total": sw.total, "used": sw.used, "free": sw.free, "percent": round(sw.percent, 2)},
            "disks": self._disks(),
            "disk_io": self.disk_rates.update(self._safe(self.disk_io_counters), now),
            "network": self.net_rates.update(self._safe(self.net_io_counters), now),
        }
        if self._last_t is not None:
            data["interval_s"] = round(now - self._last_t, 6)  # rates × interval must give the counts back
        self._last_t = now
        return data

    @staticmethod
    def _safe(fn: Callable[[], Mapping[str, Any] | None]) -> Mapping[str, Any]:
        try:
            return fn() or {}
        except (OSError, RuntimeError):
            return {}

    def _disks(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        try:
            parts = self.disk_partitions()
        except OSError:
            return out
        for p in real_mounts(parts):
            try:
                u = psutil.disk_usage(p.mountpoint)
            except OSError:  # vanished or unreadable since it was listed
                continue
            out.append({"mount": p.mountpoint, "device": p.device, "fstype": p.fstype, "total": u.total,
                        "used": u.used, "free": u.free, "percent": round(u.percent, 2)})
        return out


class MetricsCollector(Collector):
    """Emits one ``metrics`` event per interval (one in one-shot mode)."""

    name = "metrics"

    def __init__(self, config: Any, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.sampler = MetricsSampler()

    async def run(self) -> None:
        interval = float(self.config.interval_s)
        next_t = time.monotonic() + (0 if self.ctx.once else interval)
        if self.ctx.once:
            await asyncio.sleep(min(interval, 1.0))  # a CPU percentage needs a span to measure
        while True:
            data = await asyncio.to_thread(self.sampler.sample)
            await self.ctx.emit([make_event("metrics", data, ts=format_ts())])
            if self.ctx.once:
                return
            next_t += interval
            delay = next_t - time.monotonic()
            if delay < 0:  # fell behind (suspended, overloaded): skip, do not burst
                next_t = time.monotonic() + interval
                delay = interval
            await asyncio.sleep(delay)

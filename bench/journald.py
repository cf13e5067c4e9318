"""Benchmark: journald -> agent -> HTTP sink, against ``journalctl -o export`` in the same run.

Writes N realistic entries into a journal directory with systemd-journal-remote, then
1. times ``journalctl -D DIR -o export > /dev/null`` (the baseline),
2. times systemd-python's default ``Reader`` iteration and the low-level ``_Reader`` with
   ``_get_all`` (the reader the collector uses), and
3. runs a real agent reading the directory from the beginning and shipping to the reference
   receiver in ``--mode count`` (decompress, count, check ``seq=N``), and reports events/s,
   the agent's CPU seconds, peak RSS and peak anonymous RSS (journal files are mmapped, so the
   plain RSS includes page cache).

Usage: ``.venv/bin/python bench/journald.py [--entries 200000] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import AgentProcess, ReceiverProcess, agent_config  # noqa: E402
from tests.parts import JournalFileWriter  # noqa: E402

PROGRAMS = [
    ("sshd", "/usr/sbin/sshd", "ssh.service", "Accepted publickey for deploy from 10.0.{a}.{b} port {p} ssh2: "
     "ED25519 SHA256:{h}"),
    ("CRON", "/usr/sbin/cron", "cron.service", "(root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1 1)"),
    ("nginx", "/usr/sbin/nginx", "nginx.service", "10.0.{a}.{b} - - \"GET /api/v1/items?page={p} HTTP/1.1\" 200 "
     "5123 \"-\" \"Mozilla/5.0\""),
    ("kernel", None, None, "audit: type=1400 audit({p}.123:{a}): apparmor=\"DENIED\" operation=\"open\" "
     "profile=\"snap.x\" name=\"/proc/{b}/mounts\""),
    ("systemd", "/usr/lib/systemd/systemd", "init.scope", "Started session-{p}.scope - Session {p} of User deploy."),
]


def realistic_entry(i: int) -> dict[str, str]:
    """A journal entry shaped like a real server's (about 20 fields), with ``seq=i`` in MESSAGE."""
    prog, exe, unit, fmt = PROGRAMS[i % len(PROGRAMS)]
    msg = fmt.format(a=i % 256, b=i % 200, p=40000 + i % 20000, h=random.randbytes(24).hex())
    e = {
        "_HOSTNAME": "web-01", "_MACHINE_ID": "3d1219c7c4c5404aaa1f6d2a48adfda4", "_RUNTIME_SCOPE": "system",
        "_TRANSPORT": "syslog" if exe else "kernel", "PRIORITY": str((i * 7) % 8), "SYSLOG_FACILITY": "3",
        "SYSLOG_IDENTIFIER": prog, "_UID": "0", "_GID": "0", "_CAP_EFFECTIVE": "1ffffffffff",
        "MESSAGE": f"seq={i} {msg}",
    }
    if exe:
        e.update({"_PID": str(1000 + i % 300), "_COMM": prog.lower(), "_EXE": exe, "_CMDLINE": f"{exe} -D",
                  "_SYSTEMD_UNIT": unit, "_SYSTEMD_CGROUP": f"/system.slice/{unit}",
                  "_SYSTEMD_SLICE": "system.slice", "_SYSTEMD_INVOCATION_ID": random.randbytes(16).hex(),
                  "_SOURCE_REALTIME_TIMESTAMP": str(1795728000000000 + i)})
    return e


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS / RssAnon of a process, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_reader(directory: Path, default: bool) -> tuple[int, float]:
    from systemd import journal

    t0 = time.process_time()
    n = 0
    if default:
        for _ in journal.Reader(path=str(directory)):
            n += 1
    else:
        r = journal._Reader(0, str(directory))
        r.seek_head()
        while r._next():
            r._get_all()
            r._get_cursor()
            r._get_realtime()
            n += 1
    return n, time.process_time() - t0


def run_agent(tmp: Path, collectors: dict, n: int) -> dict[str, float]:
    """Run an agent with ``collectors`` until a counting receiver holds ``n`` events; its figures.

    (Shared by the benchmarks of the collectors that read from the start of a source.)"""
    (tmp / "agent").mkdir(parents=True, exist_ok=True)
    with ReceiverProcess(tmp / "receiver", mode="count") as rcv:
        cfg = agent_config(tmp / "agent", rcv, collectors=collectors,
                           batch={"max_events": 1000, "max_wait_ms": 200})
        agent = AgentProcess(tmp / "agent", cfg)
        t0 = time.monotonic()
        agent.start(wait=False)
        assert agent.proc is not None
        pid = agent.proc.pid
        peak_anon = 0
        stats: dict = {}
        while True:
            st = proc_status(pid)
            peak_anon = max(peak_anon, st.get("RssAnon", 0))
            stats = rcv.stats()
            if stats.get("stored", 0) >= n:
                break
            if agent.proc.poll() is not None:
                raise RuntimeError(f"agent exited: {agent.log_path.read_text()[-2000:]}")
            if time.monotonic() - t0 > 900:
                raise RuntimeError(f"timeout, receiver has {stats.get('stored')}")
            time.sleep(0.05)
        wall = time.monotonic() - t0
        st = proc_status(pid)
        cpu = cpu_seconds(pid)
        assert rcv.proc is not None
        sink_cpu = cpu_seconds(rcv.proc.pid)
        agent.stop()
        src = next(iter(stats.get("sources", {}).values()), {})
        return {"wall": wall, "cpu": cpu, "sink_cpu": sink_cpu, "hwm": st["VmHWM"] / 1024, "anon": max(peak_anon, st["RssAnon"]) / 1024,
                "missing": src.get("missing", -1), "dups": stats.get("duplicates", -1) + src.get("duplicates", 0),
                "stored": stats.get("stored", 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--keep", help="keep the journal in this directory (reused if present)")
    args = ap.parse_args()
    n = args.entries
    tmp = Path(tempfile.mkdtemp(prefix="bench-journald-"))
    directory = Path(args.keep) if args.keep else tmp / "journal"
    if not any(directory.glob("*.journal")):
        t = time.monotonic()
        with JournalFileWriter(directory / "bench.journal", start_usec=1795728000000000) as w:
            for i in range(n):
                w.add(realistic_entry(i))
        print(f"wrote {n} entries in {time.monotonic() - t:.1f}s "
              f"({sum(p.stat().st_size for p in directory.glob('*.journal')) / 2**20:.0f} MiB)")
    t = time.monotonic()
    subprocess.run(["journalctl", "-D", str(directory), "-o", "export"], stdout=subprocess.DEVNULL, check=True)
    base = n / (time.monotonic() - t)
    print(f"baseline journalctl -o export > /dev/null: {base:,.0f} entries/s")
    nd, td = time_reader(directory, default=True)
    nl, tl = time_reader(directory, default=False)
    print(f"reader: journal.Reader iteration {nd / td:,.0f}/s; _Reader+_get_all {nl / tl:,.0f}/s "
          f"({(nl / tl) / (nd / td):.1f}x)")
    r = run_agent(tmp, {"journald": {"enabled": True, "directory": str(directory), "start_at": "beginning"}}, n)
    rate = r["stored"] / r["wall"]
    print(f"agent end to end: {rate:,.0f} events/s ({r['wall']:.1f}s wall, {r['cpu']:.1f} CPU s; the sink {r['sink_cpu']:.1f} CPU s), "
          f"peak RSS {r['hwm']:.0f} MiB, peak anonymous RSS {r['anon']:.0f} MiB; "
          f"sink: {r['stored']} stored, {r['missing']} missing, {r['dups']} duplicates")
    print(f"ratio agent / journalctl: {rate / base:.2f}  (aim: >= 60,000/s, anon RSS < 60 MiB)")


if __name__ == "__main__":
    main()

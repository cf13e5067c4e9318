"""Benchmark: a realistic journal -> agent -> HTTP sink, beside ``journalctl -o export`` and Fluent Bit.

Writes N entries as journald records them on a web server (20-26 fields each, see
``bench/journal_gen.py``) into a journal directory with systemd-journal-remote, then, in the
same run:
1. ``journalctl -D DIR -o export > /dev/null`` (the read-only baseline: libsystemd's read ceiling),
2. systemd-python's default ``Reader`` iteration and the low-level ``_Reader`` with ``_get_all``,
3. a real agent at its defaults reading the directory from the beginning and shipping to the
   reference receiver in ``--mode count`` (decompress, count, check ``seq=N``), then the same
   agent with its pure-Python row reader (``ALPACON_JOURNAL_READER=python``),
4. where Fluent Bit is installed (``FLUENT_BIT``, default ``/tmp/feas/fbbuild/bin/fluent-bit``),
   Fluent Bit's ``systemd`` input on the same directory posting JSON lines to a counting sink.
Each prints entries/s, CPU seconds, entries per CPU-second and peak anonymous RSS (journal
files are mmapped, so the plain RSS includes page cache), and the agent's figures as ratios
to the others'.

Usage: ``.venv/bin/python bench/journald.py [--entries 200000] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.journal_gen import write_journal  # noqa: E402
from tests.harness import AgentProcess, ReceiverProcess, agent_config  # noqa: E402
from tests.support import free_port  # noqa: E402

FLUENT_BIT = os.environ.get("FLUENT_BIT", "/tmp/feas/fbbuild/bin/fluent-bit")
#: the batch settings the file benchmark has always used (the journald one runs at the defaults)
FILE_BENCH_BATCH = {"max_events": 1000, "max_wait_ms": 200}
FLUENT_BIT_CONF = """\
[SERVICE]
    Flush             1
    Grace             2
    Log_Level         warn
[INPUT]
    Name              systemd
    Tag               journal
    Path              {directory}
    Read_From_Tail    Off
    DB                {state}/fb-systemd.db
    DB.Sync           Normal
    Max_Entries       5000
[OUTPUT]
    Name              http
    Match             *
    Host              127.0.0.1
    Port              {port}
    URI               /ingest/fluent-bit
    Format            json_lines
    Json_Date_Key     date
    Json_Date_Format  iso8601
    Retry_Limit       False
"""


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


def run_agent(tmp: Path, collectors: dict, n: int, batch: dict | None = None) -> dict[str, float]:
    """Run an agent with ``collectors`` until a counting receiver holds ``n`` events; its figures.
    ``batch``: the batch settings (None: the agent's defaults).

    (Shared by the benchmarks of the collectors that read from the start of a source.)"""
    (tmp / "agent").mkdir(parents=True, exist_ok=True)
    with ReceiverProcess(tmp / "receiver", mode="count") as rcv:
        cfg = agent_config(tmp / "agent", rcv, collectors=collectors)
        if batch is None:
            del cfg["batch"]
        else:
            cfg["batch"] = batch
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
        return {"wall": wall, "cpu": cpu, "sink_cpu": sink_cpu, "hwm": st["VmHWM"] / 1024,
                "anon": max(peak_anon, st["RssAnon"]) / 1024,
                "missing": src.get("missing", -1), "dups": stats.get("duplicates", -1) + src.get("duplicates", 0),
                "stored": stats.get("stored", 0)}


def run_journalctl(directory: Path, n: int) -> dict[str, float]:
    """``journalctl -D DIR -o export > /dev/null``: wall and CPU (from wait4)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(["journalctl", "-D", str(directory), "-o", "export", "--no-pager"],
                            stdout=subprocess.DEVNULL)
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"journalctl failed ({proc.returncode})")
    return {"wall": time.monotonic() - t0, "cpu": ru.ru_utime + ru.ru_stime, "anon": 0.0, "stored": n}


def run_peer(cmd: list[str], n: int, port: int, env: dict[str, str] | None = None) -> dict[str, float]:
    """Run a peer (``cmd``, posting JSON lines to ``port``) until a counting sink there has every
    seq: its wall time, CPU seconds and peak anonymous RSS."""
    sink = subprocess.Popen([sys.executable, str(Path(__file__).with_name("line_sink.py")), str(port),
                             "--expect", str(n)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stats() -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as r:
            return json.loads(r.read())

    try:
        for _ in range(100):
            try:
                stats()
                break
            except OSError:
                time.sleep(0.05)
        t0 = time.time()
        peer = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        peak_anon, cpu = 0, 0.0
        while True:
            st = proc_status(peer.pid)
            peak_anon = max(peak_anon, st.get("RssAnon", 0))
            cpu = cpu_seconds(peer.pid)
            got = stats()
            if got["done_at"] is not None:
                break
            if peer.poll() is not None or time.time() - t0 > 600:
                raise RuntimeError(f"{cmd[0]} stopped or timed out at {got}")
            time.sleep(0.01)
        peer.terminate()
        peer.wait(30)
        return {"wall": got["done_at"] - t0, "cpu": cpu, "anon": peak_anon / 1024, "stored": got["distinct"],
                "dups": got["duplicates"]}
    finally:
        sink.terminate()
        sink.wait(30)


def run_fluent_bit(state: Path, conf: str, n: int, **fields: str) -> dict[str, float] | None:
    """Fluent Bit with the config ``conf`` (``{state}``, ``{port}`` and ``fields`` filled in) until
    the sink has every seq; None when Fluent Bit is not installed."""
    if not os.access(FLUENT_BIT, os.X_OK):
        return None
    state.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (state / "fb.conf").write_text(conf.format(state=state, port=port, **fields))
    return run_peer([FLUENT_BIT, "-c", str(state / "fb.conf")], n, port)


def line(name: str, r: dict[str, float], n: int) -> str:
    return (f"{name:<34} {n / r['wall']:>10,.0f} {r['cpu']:>7.2f} {n / r['cpu']:>12,.0f} "
            f"{r['anon']:>8.0f}")


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
        write_journal(directory, n)
        print(f"wrote {n} realistic entries in {time.monotonic() - t:.1f}s "
              f"({sum(p.stat().st_size for p in directory.glob('*.journal')) / 2**20:.0f} MiB)")
    base = run_journalctl(directory, n)
    nd, td = time_reader(directory, default=True)
    nl, tl = time_reader(directory, default=False)
    print(f"reader: journal.Reader iteration {nd / td:,.0f}/s; _Reader+_get_all {nl / tl:,.0f}/s "
          f"({(nl / tl) / (nd / td):.1f}x)")
    collectors = {"journald": {"enabled": True, "directory": str(directory), "start_at": "beginning"}}
    r = run_agent(tmp / "compiled", collectors, n)
    # the same agent with the pure-Python row reader (what the compiled reader and formatter buy)
    os.environ["ALPACON_JOURNAL_READER"] = "python"
    try:
        rp = run_agent(tmp / "python", collectors, n)
    finally:
        del os.environ["ALPACON_JOURNAL_READER"]
    for got in (r, rp):
        if got["missing"] or got["dups"] or got["stored"] < n:
            print(f"AGENT LOST OR DOUBLED EVENTS: {got}")
    fb = run_fluent_bit(tmp / "fluent-bit", FLUENT_BIT_CONF, n, directory=str(directory))
    print(f"{'system':<34} {'entries/s':>10} {'CPU s':>7} {'entries/CPU-s':>12} {'anon MiB':>8}")
    print(line("journalctl -o export > /dev/null", base, n))
    if fb is not None:
        print(line("Fluent Bit (systemd -> http)", fb, n))
    print(line("alpacon-agent (journald -> http)", r, n))
    print(line("  the same, pure-Python reader", rp, n))
    print(f"compiled / pure-Python reader: entries/s {rp['wall'] / r['wall']:.2f}, "
          f"entries per CPU-s {rp['cpu'] / r['cpu']:.2f}")
    print(f"agent / journalctl: entries/s {base['wall'] / r['wall']:.2f}, "
          f"entries per CPU-s {base['cpu'] / r['cpu']:.2f}")
    if fb is not None:
        print(f"agent / Fluent Bit: entries/s {fb['wall'] / r['wall']:.2f}, entries per CPU-s "
              f"{fb['cpu'] / r['cpu']:.2f}, anon RSS {r['anon'] / max(fb['anon'], 1):.2f} "
              f"(Fluent Bit: {fb['stored']:.0f} distinct, {fb['dups']:.0f} duplicates)")
    else:
        print(f"(Fluent Bit not found at {FLUENT_BIT}: set FLUENT_BIT to compare)")
    print(f"agent: {r['stored']:.0f} stored, {r['missing']:.0f} missing, {r['dups']:.0f} duplicates; "
          f"the sink {r['sink_cpu']:.1f} CPU s")


if __name__ == "__main__":
    main()

"""Benchmark: a syslog file -> agent -> HTTP sink, against ``wc -l`` on the same file in the same run.

Writes a file of realistic Debian 12 syslog lines (default 1 GiB, ``seq=N`` in each), times
``wc -l`` on it, then runs a real agent reading it from the beginning and shipping to the
reference receiver in ``--mode count``, and, where they are installed, Fluent Bit's ``tail``
(without a parser and with a regex parser extracting the agent's fields) and syslog-ng's
``file()`` on the same file; prints lines/s, CPU seconds, lines per CPU-s and peak anonymous
RSS of each, and the agent's ratios to them.

Usage: ``.venv/bin/python bench/syslog_file.py [--bytes 1073741824] [--keep FILE]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.journald import FILE_BENCH_BATCH, FLUENT_BIT, line, run_agent, run_fluent_bit, run_peer  # noqa: E402
from tests.support import free_port  # noqa: E402

#: syslog-ng (an unpacked Debian package, as ../shared/peerbench/install-peers.sh leaves it)
SYSLOG_NG_ROOT = os.environ.get("SYSLOG_NG_ROOT", "/tmp/feas/sng/root")
#: syslog-ng's file() source from the start, no parsing, posting JSON lines in batches of 1000
SYSLOG_NG_CONF = """\
@version: 3.38
options {{ stats_freq(0); threaded(yes); keep_hostname(yes); chain_hostnames(no); use_dns(no); dns_cache(no); }};
source s_file {{ file("{path}" follow-freq(1) flags(no-parse) log-iw-size(8000) log-fetch-limit(100)); }};
destination d_http {{
    http(url("http://127.0.0.1:{port}/ingest/syslog-ng") method("POST")
         headers("Content-Type: application/x-ndjson")
         body("$(format-json ISODATE=${{ISODATE}} MESSAGE=${{MESSAGE}})") delimiter("\\n")
         batch-lines(1000) batch-bytes(2MiB) batch-timeout(1000) workers(2) log-fifo-size(16000)
         persist-name("d_http"));
}};
log {{ source(s_file); destination(d_http); flags(flow-control); }};
"""


def run_syslog_ng(state: Path, path: Path, n: int) -> dict[str, float] | None:
    """syslog-ng reading ``path`` from its start (a fresh persist file) until the sink has every
    seq; None when it is not installed."""
    binary = f"{SYSLOG_NG_ROOT}/usr/sbin/syslog-ng"
    if not os.access(binary, os.X_OK):
        return None
    state.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (state / "syslog-ng.conf").write_text(SYSLOG_NG_CONF.format(path=path, port=port))
    cmd = [binary, "-F", "-e", "--no-caps", f"--module-path={SYSLOG_NG_ROOT}/usr/lib/syslog-ng/3.38",
           "-f", str(state / "syslog-ng.conf"), f"--persist-file={state}/persist",
           f"--pidfile={state}/pid", f"--control={state}/ctl"]
    return run_peer(cmd, n, port, env=dict(os.environ, LD_LIBRARY_PATH=f"{SYSLOG_NG_ROOT}/usr/lib/syslog-ng"))

#: Fluent Bit's tail input on the file, posting JSON lines; ``{parser}``: none, or the regex
#: parser below that extracts what the agent does (time, host, program, pid, message)
FLUENT_BIT_CONF = """\
[SERVICE]
    Flush             1
    Grace             2
    Log_Level         warn
    Parsers_File      {state}/parsers.conf
[INPUT]
    Name              tail
    Tag               syslog
    Path              {path}
    Read_from_Head    On
    DB                {state}/tail.db
    DB.Sync           Normal
{parser}
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
PARSERS = r"""[PARSER]
    Name        syslog-iso
    Format      regex
    Regex       ^(?<time>[^ ]+) (?<host>[^ ]+) (?<ident>[^ \[:]+)(?:\[(?<pid>[0-9]+)\])?: ?(?<message>.*)$
    Time_Key    time
    Time_Format %Y-%m-%dT%H:%M:%S.%L%z
"""

TEMPLATES = [
    "web-01 sshd[{pid}]: Accepted publickey for deploy from 10.0.{a}.{b} port {p} ssh2: ED25519 SHA256:Qx{p}",
    "web-01 CRON[{pid}]: (root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1 1)",
    "web-01 nginx[{pid}]: 10.0.{a}.{b} - - \"GET /api/v1/items?page={p} HTTP/1.1\" 200 5123 \"-\" \"Mozilla/5.0\"",
    "web-01 kernel: [{p}.123456] audit: type=1400 apparmor=\"DENIED\" operation=\"open\" name=\"/proc/{b}\"",
    "web-01 systemd[1]: Started session-{p}.scope - Session {p} of User deploy.",
]


def write_file(path: Path, size: int) -> int:
    n = 0
    with open(path, "w") as f:
        written = 0
        buf = []
        while written < size:
            us = n % 1_000_000
            line = (f"2026-11-26T21:{(n // 60_000_000) % 60:02d}:{(n // 1_000_000) % 60:02d}.{us:06d}+00:00 "
                    + TEMPLATES[n % 5].format(pid=1000 + n % 300, a=n % 256, b=n % 200, p=40000 + n % 20000)
                    + f" seq={n}\n")
            buf.append(line)
            written += len(line)
            n += 1
            if len(buf) >= 10000:
                f.write("".join(buf))
                buf.clear()
        f.write("".join(buf))
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bytes", type=int, default=1 << 30)
    ap.add_argument("--keep", help="keep the file at this path (reused if present)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-syslog-"))
    path = Path(args.keep) if args.keep else tmp / "syslog"
    if not path.exists():
        t = time.monotonic()
        write_file(path, args.bytes)
        print(f"wrote {path.stat().st_size / 2**20:.0f} MiB in {time.monotonic() - t:.1f}s")
    t = time.monotonic()
    out = subprocess.run(["wc", "-l", str(path)], capture_output=True, text=True, check=True).stdout
    n = int(out.split()[0])
    base = {"wall": time.monotonic() - t, "cpu": 0.0, "anon": 0.0}
    print(f"baseline wc -l: {n:,} lines, {n / base['wall']:,.0f} lines/s")
    r = run_agent(tmp, {"syslog": {"enabled": True, "paths": [str(path)], "start_at": "beginning"}}, n,
                  batch=FILE_BENCH_BATCH)
    peers = {}
    for name, parser in (("Fluent Bit (tail, no parser)", ""),
                         ("Fluent Bit (tail, regex parser)", "    Parser            syslog-iso")):
        state = tmp / f"fluent-bit-{len(peers)}"
        state.mkdir(parents=True, exist_ok=True)
        (state / "parsers.conf").write_text(PARSERS)
        fb = run_fluent_bit(state, FLUENT_BIT_CONF, n, path=str(path), parser=parser)
        if fb is not None:
            peers[name] = fb
    sng = run_syslog_ng(tmp / "syslog-ng", path, n)
    if sng is not None:
        peers["syslog-ng 3.38 (file(), no-parse)"] = sng
    print(f"{'system':<34} {'lines/s':>10} {'CPU s':>7} {'lines/CPU-s':>12} {'anon MiB':>8}")
    for name, fb in peers.items():
        print(line(name, fb, n))
    print(line("alpacon-agent (syslog -> http)", r, n))
    print(f"agent: {r['stored']} stored, {r['missing']} missing, {r['dups']} duplicates; the sink "
          f"{r['sink_cpu']:.1f} CPU s; peak RSS {r['hwm']:.0f} MiB")
    print(f"agent / wc -l: lines/s {base['wall'] / r['wall']:.3f}")
    for name, fb in peers.items():
        print(f"agent / {name}: lines/s {fb['wall'] / r['wall']:.2f}, lines per CPU-s {fb['cpu'] / r['cpu']:.2f}")
    if not peers:
        print(f"(Fluent Bit not found at {FLUENT_BIT}, syslog-ng not at {SYSLOG_NG_ROOT}: set FLUENT_BIT, "
              "SYSLOG_NG_ROOT or run ../shared/peerbench/install-peers.sh to compare)")

if __name__ == "__main__":
    main()

"""Benchmark of the Websh recorder against a plain PTY relay, measured in the same run.

1. Throughput: ``cat`` of a 200 MB file through each relay, read as fast as possible from an
   outer PTY (the user's terminal). Ratio recorder / plain (aim: at least 0.9).
2. Keystroke echo latency: one byte written to the outer terminal until its echo comes back,
   through each relay to ``cat`` in canonical mode; median and p99, and what the recorder adds
   (aim: under 1 ms).

3. The exec trail: a loop of 2,000 ``/bin/true`` execs in the session; the recorder's own CPU
   seconds and the loop's wall time, with the kernel's exec trail and without it
   (``--no-exec-trail``), side by side with a plain PTY relay (as root; without root the trail
   is not had and the two recorder rows are the same).

Run: ``.venv/bin/python bench/websh.py [--mb 200] [--keys 2000] [--execs 2000]``.
"""

from __future__ import annotations

import argparse
import os
import pty
import statistics
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PLAIN_RELAY = r"""
import os, pty, select, sys, termios, tty
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
saved = termios.tcgetattr(0)
tty.setraw(0)
try:
    fds = [0, fd]
    while True:
        r, _, _ = select.select(fds, [], [])
        if fd in r:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            os.write(1, data)
        if 0 in r:
            data = os.read(0, 65536)
            if not data:
                fds.remove(0)
            else:
                os.write(fd, data)
finally:
    termios.tcsetattr(0, termios.TCSAFLUSH, saved)
os.waitpid(pid, 0)
"""


def relay_cmd(kind: str, tmp: Path, *command: str) -> list[str]:
    if kind == "plain":
        return [sys.executable, "-c", PLAIN_RELAY, *command]
    extra = ["--no-exec-trail"] if kind == "recorder-no-trail" else []
    return [sys.executable, "-m", "agent.cli", "websh", "--queue", str(tmp / "q.db"), *extra,
            "--socket", str(tmp / "nobody.sock"), "--flush-timeout", "0", "--no-login", "--", *command]


def spawn(cmd: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, cwd=str(ROOT),
                            start_new_session=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.close(slave)
    tty.setraw(master)
    return proc, master


def throughput(kind: str, tmp: Path, path: Path, size: int) -> float:
    proc, master = spawn(relay_cmd(kind, tmp, "cat", str(path)))
    total = 0
    t0 = 0.0  # timed from the first byte: start-up (imports, shell start) is not throughput
    while True:
        try:
            data = os.read(master, 1 << 20)
        except OSError:
            break
        if not data:
            break
        if not total:
            t0 = time.perf_counter()
        total += len(data)
    elapsed = time.perf_counter() - t0
    proc.wait()
    os.close(master)
    if total < size:
        raise SystemExit(f"{kind}: read {total} of {size} bytes")
    return size / elapsed / 1e6


def latency(kind: str, tmp: Path, keys: int) -> list[float]:
    # the program echoes each byte itself, as a shell's line editor does
    proc, master = spawn(relay_cmd(kind, tmp, "sh", "-c", "stty raw -echo; echo READY; exec cat"))
    got = b""
    while b"READY" not in got:
        got += os.read(master, 1024)
    samples = []
    for i in range(keys):
        ch = bytes([97 + i % 26])
        t0 = time.perf_counter()
        os.write(master, ch)
        got = b""
        while ch not in got:
            got += os.read(master, 1024)
        samples.append((time.perf_counter() - t0) * 1000)
    proc.kill()
    proc.wait()
    os.close(master)
    return samples


def _cpu_s(pid: int) -> float:
    """The process's own user + system CPU seconds (not its children's)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def exec_loop(kind: str, tmp: Path, execs: int) -> tuple[float, float | None]:
    """``(loop wall seconds, relay CPU seconds)`` for ``execs`` runs of /bin/true in the session."""
    script = (f"s=$EPOCHREALTIME; for i in $(seq {execs}); do /bin/true; done; e=$EPOCHREALTIME; "
              "echo LOOP $s $e; read -r _")
    proc, master = spawn(relay_cmd(kind, tmp, "bash", "-c", script))
    got = b""
    while b"\n" not in got.partition(b"LOOP ")[2]:
        chunk = os.read(master, 65536)
        if not chunk:
            raise SystemExit(f"{kind}: the loop did not finish: {got[-200:]!r}")
        got += chunk
    start, end = got.partition(b"LOOP ")[2].split(b"\n")[0].split()[:2]
    cpu = _cpu_s(proc.pid)
    os.write(master, b"\r")
    proc.wait()
    os.close(master)
    return float(end) - float(start), cpu


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--keys", type=int, default=2000)
    ap.add_argument("--execs", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        path = tmp / "big.txt"
        line = b"".join(bytes([48 + (i % 75)]) for i in range(99)) + b"\n"
        with open(path, "wb") as f:
            chunk = line * 10_000
            for _ in range(args.mb * 1_000_000 // len(chunk)):
                f.write(chunk)
        size = path.stat().st_size
        print(f"throughput: cat of a {size / 1e6:.0f} MB file")
        plain = throughput("plain", tmp, path, size)
        rec = throughput("recorder", tmp, path, size)
        plain2 = throughput("plain", tmp, path, size)
        rec2 = throughput("recorder", tmp, path, size)
        p, r = max(plain, plain2), max(rec, rec2)
        print(f"  plain PTY relay : {p:8.1f} MB/s")
        print(f"  recorder        : {r:8.1f} MB/s")
        print(f"  ratio           : {r / p:8.2f}  (aim >= 0.90)")
        print(f"keystroke echo latency, {args.keys} keys")
        lp = latency("plain", tmp, args.keys)
        lr = latency("recorder", tmp, args.keys)
        for name, xs in (("plain PTY relay", lp), ("recorder", lr)):
            print(f"  {name:16s}: median {statistics.median(xs):.3f} ms, p99 {pct(xs, 99):.3f} ms")
        print(f"  added           : median {statistics.median(lr) - statistics.median(lp):+.3f} ms, "
              f"p99 {pct(lr, 99) - pct(lp, 99):+.3f} ms  (aim < 1 ms)")
        print(f"exec trail: a loop of {args.execs} /bin/true execs in the session (best of 2)")
        rows = {}
        for kind in ("plain", "recorder-no-trail", "recorder", "plain", "recorder-no-trail", "recorder"):
            wall, cpu = exec_loop(kind, tmp, args.execs)
            best = rows.get(kind)
            rows[kind] = (wall, cpu) if best is None or wall < best[0] else best
        base = rows["plain"][0]
        print(f"  {'':22s} {'loop wall s':>12s} {'x plain':>8s} {'relay CPU s':>12s}")
        for kind, label in (("plain", "plain PTY relay"), ("recorder-no-trail", "recorder, no exec trail"),
                            ("recorder", "recorder + exec trail")):
            wall, cpu = rows[kind]
            print(f"  {label:22s} {wall:12.2f} {wall / base:8.2f} {cpu:12.2f}")


if __name__ == "__main__":
    main()

"""Benchmark of the Websh recorder against a plain PTY relay, measured in the same run.

1. Throughput: ``cat`` of a 200 MB file through each relay, read as fast as possible from an
   outer PTY (the user's terminal). Ratio recorder / plain (aim: at least 0.8).
2. Keystroke echo latency: one byte written to the outer terminal until its echo comes back,
   through each relay to ``cat`` in canonical mode; median and p99, and what the recorder adds
   (aim: under 1 ms).

Run: ``.venv/bin/python bench/websh.py [--mb 200] [--keys 2000]``.
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
    return [sys.executable, "-m", "agent.cli", "websh", "--queue", str(tmp / "q.db"),
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


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--keys", type=int, default=2000)
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
        print(f"  ratio           : {r / p:8.2f}  (aim >= 0.80)")
        print(f"keystroke echo latency, {args.keys} keys")
        lp = latency("plain", tmp, args.keys)
        lr = latency("recorder", tmp, args.keys)
        for name, xs in (("plain PTY relay", lp), ("recorder", lr)):
            print(f"  {name:16s}: median {statistics.median(xs):.3f} ms, p99 {pct(xs, 99):.3f} ms")
        print(f"  added           : median {statistics.median(lr) - statistics.median(lp):+.3f} ms, "
              f"p99 {pct(lr, 99) - pct(lp, 99):+.3f} ms  (aim < 1 ms)")


if __name__ == "__main__":
    main()

"""Benchmark: the auth and sftp derivers over realistic auth-log lines, against a baseline of
one precompiled regex search per line in the same run.

Prints lines/s of each and the ratio (deriver cost per line relative to a single regex).

Usage: ``.venv/bin/python bench/derivers.py [--lines 200000]``
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collectors.derivers.auth import AuthDeriver  # noqa: E402
from collectors.derivers.sftp import SftpDeriver  # noqa: E402

TEMPLATES = [
    ("sshd", "Accepted publickey for deploy from 10.0.{a}.{b} port {p} ssh2: ED25519 SHA256:Qx{p}"),
    ("sshd", "pam_unix(sshd:session): session opened for user deploy(uid=1000) by (uid=0)"),
    ("sshd", "Failed password for invalid user admin{b} from 203.0.{a}.{b} port {p} ssh2"),
    ("sshd", "Received disconnect from 10.0.{a}.{b} port {p}:11: disconnected by user"),
    ("sudo", "deploy : TTY=pts/{b} ; PWD=/srv ; USER=root ; COMMAND=/usr/bin/systemctl restart app{b}"),
    ("CRON", "pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)"),
    ("sftp-server", "session opened for local user deploy from [10.0.{a}.{b}]"),
    ("sftp-server", 'open "/srv/data/f{p}.bin" flags WRITE,CREATE,TRUNCATE mode 0644'),
    ("sftp-server", 'close "/srv/data/f{p}.bin" bytes read 0 written {p}'),
    ("sftp-server", "session closed for local user deploy from [10.0.{a}.{b}]"),
    ("systemd", "Started session-{p}.scope - Session {p} of User deploy."),
]


def events(n: int) -> list[dict]:
    out = []
    for i in range(n):
        program, tpl = TEMPLATES[i % len(TEMPLATES)]
        msg = tpl.format(a=i % 250, b=(i // 250) % 250, p=1024 + i % 60000)
        out.append({"id": f"jd-{i:012d}", "kind": "system_log", "ts": "2026-11-26T20:00:00.000Z",
                    "data": {"program": program, "pid": 1000 + (i // len(TEMPLATES)) % 5000,
                             "level": "info", "message": msg, "hostname": "web-01"}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=200_000)
    args = ap.parse_args()
    evs = events(args.lines)
    rx = re.compile(r"^Accepted (\S+) for (.+) from (\S+) port (\d+)")

    t0 = time.perf_counter()
    hits = sum(1 for e in evs if rx.search(e["data"]["message"]))
    base = time.perf_counter() - t0

    auth, sftp = AuthDeriver(), SftpDeriver(lookup_user=lambda pid: None)
    t0 = time.perf_counter()
    n_ua = sum(len(auth(e)) for e in evs)
    t_auth = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_ftp = sum(len(sftp(e)) for e in evs)
    t_sftp = time.perf_counter() - t0

    n = len(evs)
    print(f"lines: {n}  (baseline hits {hits}, user_activity rows {n_ua}, webftp rows {n_ftp})")
    print(f"baseline one regex : {n / base:12,.0f} lines/s")
    print(f"AuthDeriver        : {n / t_auth:12,.0f} lines/s   ratio {t_auth / base:5.1f}x baseline")
    print(f"SftpDeriver        : {n / t_sftp:12,.0f} lines/s   ratio {t_sftp / base:5.1f}x baseline")


if __name__ == "__main__":
    main()

"""Cost per line of redaction: this tree's built-in patterns against a baseline revision's, same run.

The baseline is ``agent/pipeline/redact.py`` as it was at ``--baseline`` (a git revision), loaded from git
into its own module, so both run on the same lines, machine and moment; the figure that matters
is the ratio. Three line mixes: system log lines (few triggers), shell commands (more), and lines
that all hold a secret. With detect-secrets installed, its ``scan_line`` (every plugin) is timed on
the same lines for comparison.

    .venv/bin/python bench/redact.py [--baseline main] [--lines 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.pipeline.redact import Redactor  # noqa: E402

LOGS = [
    "Accepted publickey for deploy from 192.0.2.10 port 52144 ssh2: ED25519 SHA256:Zm9vYmFy",
    "Failed password for invalid user admin from 203.0.113.9 port 22022 ssh2",
    "pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)",
    "   alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/systemctl restart nginx",
    "(root) CMD (   cd / && run-parts --report /etc/cron.hourly)",
    "Started Session 42 of User alice.",
    "eth0: Link is Up - 1Gbps/Full - flow control rx/tx",
    "GET /api/v1/servers/42 200 1534 bytes in 12 ms from 10.1.2.3 user-agent=curl/8.5",
    "nginx: [warn] conflicting server name \"example.com\" on 0.0.0.0:80, ignored",
    "Received disconnect from 192.0.2.10 port 52144:11: disconnected by user",
]
COMMANDS = [
    "ls -la /var/log",
    "cd /srv/app && git pull --rebase",
    "docker ps --format '{{.Names}}'",
    "tail -f /var/log/nginx/access.log | grep -v healthz",
    "systemctl status alpacon-agent --no-pager",
    "curl -s https://api.example.com/v1/status",
    "python3 manage.py migrate --database default",
    "export PATH=$PATH:/opt/bin",
    "kubectl get pods -n prod -o wide",
    "vim /etc/nginx/sites-enabled/default",
]
SECRETS = [
    "export DB_PASSWORD=DbSecret1 GITHUB_TOKEN=ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "mysql -u root -p'two words' app",
    "curl -u admin:SECRET https://192.0.2.5/api",
    "sshpass -p S3cret ssh deploy@192.0.2.7",
    "PGPASSWORD=pg psql -h db -U app",
    "git clone https://alice:Pa55@git.example.com/r.git",
    "aws configure set aws_access_key_id AKIAIOSFODNN7EXAMPLE",
    "curl -H 'Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl'",
]


def baseline_redactor(rev: str) -> Any:
    """The Redactor in ``agent/pipeline/redact.py`` at git revision ``rev``."""
    for path in ("agent/pipeline/redact.py", "agent/redact.py"):  # where it is, where it was
        got = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], capture_output=True, text=True)
        if got.returncode == 0:
            src = got.stdout
            break
    else:
        raise SystemExit(f"no redact.py at {rev}")
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("baseline_redact", f.name)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    Path(f.name).unlink()
    return mod.Redactor()


def detect_secrets_scanner() -> Callable[[str], object] | None:
    try:
        from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
        from detect_secrets.core.scan import scan_line
        from detect_secrets.settings import transient_settings
    except ImportError:
        return None
    plugins = [{"name": cls.__name__} for cls in get_mapping_from_secret_type_to_class().values()]
    ctx = transient_settings({"plugins_used": plugins})  # every detector, as `detect-secrets scan` runs them
    ctx.__enter__()
    return lambda line: list(scan_line(line))


def per_line_ns(fn: Callable[[str], object], lines: list[str], rounds: int) -> float:
    """The best of ``rounds`` passes over ``lines``, in nanoseconds per line."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for line in lines:
            fn(line)
        best = min(best, (time.perf_counter_ns() - t0) / len(lines))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="main")
    ap.add_argument("--lines", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    base, tree = baseline_redactor(args.baseline), Redactor()
    old, new = base.redact_text, tree.redact_text
    ds = detect_secrets_scanner()
    for name, pool in (("system logs", LOGS), ("commands", COMMANDS), ("secrets", SECRETS)):
        lines = [f"{pool[i % len(pool)]} #{i}" for i in range(args.lines)]
        t_old = per_line_ns(old, lines, args.rounds)
        t_new = per_line_ns(new, lines, args.rounds)
        row = f"{name:12s} baseline {t_old:8.0f} ns/line   this tree {t_new:8.0f} ns/line   ratio {t_new / t_old:5.2f}"
        if ds is not None:
            few = lines[: max(1, args.lines // 20)]
            t_ds = per_line_ns(ds, few, 1)
            row += f"   detect-secrets scan_line {t_ds:9.0f} ns/line (ratio {t_ds / t_old:6.1f})"
        print(row)
        # what the collectors call: many texts at once (the compiled trigger scan where it is built)
        if hasattr(base, "changed_texts"):
            chunks = [lines[i:i + 2000] for i in range(0, len(lines), 2000)]
            b_old = per_line_ns(lambda c: base.changed_texts(c), chunks, args.rounds) / 2000
            b_new = per_line_ns(lambda c: tree.changed_texts(c), chunks, args.rounds) / 2000
            print(f"{'':12s} many at once: baseline {b_old:6.0f} ns/line   this tree {b_new:6.0f} ns/line   "
                  f"ratio {b_new / b_old:5.2f}")


if __name__ == "__main__":
    main()

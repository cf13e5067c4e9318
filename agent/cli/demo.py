"""``alpacon-agent demo``: the agent's main job on an embedded default, for a first look.

Starts the reference receiver on loopback, writes a config that ships to it from the real
local sources this machine has (the system journal, /var/log/syslog, system signs, the hook
API for ``emit``/``exec``), and runs the agent in the foreground until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from agent.config import parse_config

if TYPE_CHECKING:
    from agent.cli.args import Subparsers


def register(sub: Subparsers) -> None:
    """Add ``demo``."""
    p = sub.add_parser("demo", help="run a local receiver and the agent on an embedded default config")
    p.add_argument("--dir", default="var/demo", help="where the demo keeps its config, state and databases")
    p.add_argument("--port", type=int, default=8765, help="receiver port on 127.0.0.1")
    p.add_argument("--metrics-port", type=int, default=9273, help="agent /metrics and /healthz port on 127.0.0.1")
    p.set_defaults(func=cmd_demo)


def demo_config(base: Path, port: int, metrics_port: int, token_file: Path) -> dict[str, Any]:
    """The embedded default: ship to the local receiver from whatever real sources exist here."""
    journal = any(Path(p).is_dir() and any(Path(p).iterdir()) for p in ("/var/log/journal", "/run/log/journal"))
    syslog_paths = [p for p in ("/var/log/syslog", "/var/log/messages") if Path(p).exists()]
    return {
        "server": os.uname().nodename,
        "state_dir": str(base / "state"),
        "sink": {"type": "http", "url": f"http://127.0.0.1:{port}/api/v1/agent/events", "token_file": str(token_file)},
        "hook": {"socket": str(base / "hook.sock")},
        "http": {"listen": f"127.0.0.1:{metrics_port}"},
        "collectors": {
            "journald": {"enabled": journal, "start_at": "end"},
            "syslog": {"enabled": bool(syslog_paths) and not journal, "paths": syslog_paths or ["/var/log/syslog"]},
            "metrics": {"enabled": True, "interval_s": 10},
            "commands": {"enabled": True},
        },
    }


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.logs import configure_logging
    from agent.service import Agent

    base = Path(args.dir).resolve()
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    token_file = base / "token"
    if not token_file.exists():
        token_file.write_text(secrets.token_urlsafe(24) + "\n")
    token_file.chmod(0o600)
    data = demo_config(base, args.port, args.metrics_port, token_file)
    cfg_path = base / "agent.yaml"
    cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
    cfg = parse_config(data, str(cfg_path))
    configure_logging("info")
    receiver_bin = Path(sys.executable).parent / "alpacon-agent-receiver"
    rx = subprocess.Popen(
        [str(receiver_bin), "--listen", f"127.0.0.1:{args.port}", "--token-file", str(token_file),
         "--db", str(base / "receiver.db")],
        stdout=subprocess.PIPE, text=True,
    )
    assert rx.stdout is not None
    line = rx.stdout.readline()
    if "listening" not in line:
        rx.kill()
        print(f"alpacon-agent demo: the receiver did not start ({line.strip()!r})", file=sys.stderr)
        return 1
    token = token_file.read_text().strip()
    print(
        f"demo: receiver {line.strip().removeprefix('listening on ')}, agent config {cfg_path}\n"
        f"demo: try   alpacon-agent emit --config {cfg_path} user_activity "
        "--json '{\"user\": \"me\", \"action\": \"login\", \"result\": 200}'\n"
        f"demo: then  curl -H 'Authorization: Bearer {token}' http://127.0.0.1:{args.port}/api/v1/user-activity\n"
        f"demo: agent health at http://127.0.0.1:{args.metrics_port}/healthz; Ctrl-C stops both",
        flush=True,
    )
    try:
        return asyncio.run(Agent(cfg, str(cfg_path)).run())
    finally:
        rx.terminate()
        rx.wait(10)

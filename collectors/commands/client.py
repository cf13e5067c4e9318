"""The ``alpacon-agent exec`` subcommand: hand a command to the running agent and report its result.

    alpacon-agent exec [--operator O] [--user U] [--timeout S] [--kill-on-timeout]
                       [--at TIME | --in SECONDS] [--config FILE] [--json] -- CMD…

The agent runs the command (as ``--user``, default: the caller), records every status change
in the Command history, and answers with the exit code and combined output, which this
command prints and exits with (124 when it was killed after its timeout). A scheduled command
(``--at`` / ``--in``) prints its command id and exits 0 at once. Exit 1: the agent could not
be reached or failed; 2: bad usage, configuration or request.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from datetime import datetime, timedelta
from typing import Any

import orjson

from agent.cli.args import add_config_arg
from agent.config import load_config
from agent.errors import ConfigError
from agent.hookclient import HookClient, HookClientError

RE_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")


def parse_at(text: str, now: float | None = None) -> float:
    """Epoch seconds from ``--at``: epoch seconds, ISO 8601 / RFC 3339 (local time when no
    offset), or ``HH:MM[:SS]`` (the next such local time)."""
    now = time.time() if now is None else now
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:  # nan/inf would reach the agent as null, i.e. "run now"
        if not math.isfinite(value):
            raise ValueError(f"not a time: {text!r}")
        return value
    if m := RE_CLOCK.match(text):
        h, mi, s = int(m[1]), int(m[2]), int(m[3] or 0)
        if h > 23 or mi > 59 or s > 59:
            raise ValueError(f"not a time of day: {text!r}")
        base = datetime.fromtimestamp(now)
        when = base.replace(hour=h, minute=mi, second=s, microsecond=0)
        if when.timestamp() <= now:
            when += timedelta(days=1)
        return when.timestamp()
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (epoch seconds, ISO 8601 or HH:MM)") from None
    return dt.timestamp()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "exec",
        help="run a command through the agent and record it in the Command history",
        description="Run CMD through the running agent (recorded in the Command history).",
    )
    p.add_argument("--operator", help="who submitted the command (default: the calling user)")
    p.add_argument("--user", help="run as this user (default: the calling user; others need root)")
    p.add_argument("--timeout", type=float, metavar="S", help="seconds before the command is reported stuck")
    p.add_argument("--kill-on-timeout", action="store_true", default=None,
                   help="kill the command at its timeout and report it failed")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--at", metavar="TIME", help="run at TIME (epoch seconds, ISO 8601, or HH:MM)")
    when.add_argument("--in", dest="in_s", type=float, metavar="SECONDS", help="run in SECONDS")
    p.add_argument("--socket", help="hook socket path (default: hook.socket from the config)")
    p.add_argument("--json", action="store_true", help="print the agent's answer as JSON")
    add_config_arg(p)
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD…")
    p.set_defaults(func=cmd_exec)


def build_request(args: argparse.Namespace) -> dict[str, Any]:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise ValueError("no command given (alpacon-agent exec [options] -- CMD…)")
    for name, value in (("--timeout", args.timeout), ("--in", args.in_s)):
        if value is not None and not math.isfinite(value):  # JSON would carry it as null
            raise ValueError(f"{name} must be a finite number of seconds")
    msg: dict[str, Any] = {"op": "exec", "argv": cmd}
    if args.operator:
        msg["operator"] = args.operator
    if args.user:
        msg["user"] = args.user
    if args.timeout is not None:
        msg["timeout_s"] = args.timeout
    if args.kill_on_timeout:
        msg["kill_on_timeout"] = True
    if args.at is not None:  # an empty --at (an unset shell variable) is an error, not "run now"
        msg["at"] = parse_at(args.at)
    elif args.in_s is not None:
        msg["in_s"] = args.in_s
    return msg


def cmd_exec(args: argparse.Namespace) -> int:
    try:
        msg = build_request(args)
    except ValueError as exc:
        print(f"alpacon-agent exec: {exc}", file=sys.stderr)
        return 2
    socket_path = args.socket
    if not socket_path:
        try:
            socket_path = load_config(args.config).hook.socket
        except ConfigError as exc:
            print(f"alpacon-agent exec: bad configuration: {exc}", file=sys.stderr)
            return 2
    try:
        with HookClient(socket_path, timeout=None) as client:
            ans = client.request(msg)
    except HookClientError as exc:
        print(f"alpacon-agent exec: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(orjson.dumps(ans).decode() + "\n")
    status = ans.get("status")
    if status != "ok":
        if not args.json:
            print(f"alpacon-agent exec: {status}: {ans.get('reason', '')}", file=sys.stderr)
        return 2 if status in ("invalid", "denied") else 1
    if ans.get("state") == "scheduled":
        if not args.json:
            print(f"scheduled {ans.get('command_id')} at {ans.get('scheduled_at')}")
        return 0
    if not args.json:
        out = ans.get("output") or ""
        sys.stdout.write(out)
        if out and not out.endswith("\n"):
            sys.stdout.write("\n")
        if ans.get("state") != "success" and ans.get("reason"):
            print(f"alpacon-agent exec: {ans['state']}: {ans['reason']}", file=sys.stderr)
    if ans.get("timed_out") and ans.get("state") == "failed" and "killed" in (ans.get("reason") or ""):
        return 124
    code = ans.get("exit_code")
    if isinstance(code, int):
        return code if 0 <= code <= 255 else 1
    return 0 if ans.get("state") == "success" else 1

"""The ``alpacon-agent websh`` subcommand: a recorded login shell for Websh (and SSH) sessions."""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from agent.cli.args import add_config_arg
from agent.config import AgentConfig, load_config
from agent.errors import ConfigError, RecorderError
from collectors.websh.recording import DEFAULT_MAX_BYTES as DEFAULT_RECORDING_BYTES

if TYPE_CHECKING:
    from agent.cli.checks import CheckResult

DEFAULT_FLUSH_TIMEOUT_S = 1.5

#: flag -> environment variable the Websh runtime may set instead
ENV_VARS = {
    "user": "ALPACON_USER",
    "session_id": "ALPACON_SESSION_ID",
    "operator": "ALPACON_OPERATOR",
    "browser": "ALPACON_BROWSER",
    "remote_ip": "ALPACON_REMOTE_IP",
    "groupname": "ALPACON_GROUPNAME",
    "record_io": "ALPACON_RECORD_IO",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "websh",
        help="run a recorded login shell (Websh sessions, SSH ForceCommand)",
        description=(
            "Start the user's login shell in a new PTY, relay it transparently and record every "
            "command. Metadata come from the flags or from ALPACON_* environment variables."
        ),
    )
    add_config_arg(p)
    p.add_argument("--user", "-u", help="run the shell as this user (root only; default: the caller)")
    p.add_argument("--session-id", help="the Websh session id (default: a new random id)")
    p.add_argument("--operator", help="who opened the session (workspace account)")
    p.add_argument("--browser", help="the operator's browser (user agent)")
    p.add_argument("--remote-ip", help="the operator's address (default: from SSH_CONNECTION)")
    p.add_argument("--groupname", help="the group shown for the session (default: the user's primary group)")
    p.add_argument("--record-io", metavar="PATH", help="also write the session as an asciicast v2 file")
    p.add_argument("--record-input", action="store_true",
                   help="with --record-io: include typed input (never while echo is off)")
    p.add_argument("--record-io-max-bytes", type=int, default=64 * 1024 * 1024, metavar="N")
    p.add_argument("--no-ship-recording", dest="ship_recording", action="store_false",
                   help="with --record-io: keep the recording on this server only (default: ship it for playback)")
    p.add_argument("--ship-recording-max-bytes", type=int, default=DEFAULT_RECORDING_BYTES, metavar="N",
                   help="ship at most this much of a recording (the file keeps all of it)")
    p.add_argument("--no-login", dest="login", action="store_false", help="start a non-login shell")
    p.add_argument("--no-exec-trail", dest="exec_trail", action="store_false",
                   help="do not follow the session's programs through the kernel (see docs/websh.md)")
    p.add_argument("--queue", metavar="PATH", help="the recorder's queue file (default: under state_dir)")
    p.add_argument("--socket", metavar="PATH", help="the agent's hook socket (default: hook.socket of the config)")
    p.add_argument("--flush-timeout", type=float, default=DEFAULT_FLUSH_TIMEOUT_S, metavar="SECONDS",
                   help="at the end, how long to try delivering what is queued (the rest waits)")
    p.add_argument("--flush-queue", action="store_true", help="deliver what earlier sessions left queued, then exit")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- SHELL [ARGS…] instead of the login shell")
    p.set_defaults(func=run)


def default_queue_path(cfg: AgentConfig) -> Path:
    """Where the recorder queues: under state_dir for root, under the user's state dir otherwise."""
    if os.geteuid() == 0:
        return Path(cfg.state_dir) / "websh" / "queue.db"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "alpacon-agent" / "websh-queue.db"


def _opt(args: argparse.Namespace, name: str) -> str | None:
    value = getattr(args, name)
    if value is None:
        value = os.environ.get(ENV_VARS[name]) or None
    return value


def _remote_ip() -> str | None:
    conn = os.environ.get("SSH_CONNECTION") or os.environ.get("SSH_CLIENT")
    return conn.split()[0] if conn else None


def _groupname(user: str | None) -> str | None:
    import grp
    import pwd

    try:
        pw = pwd.getpwnam(user) if user else pwd.getpwuid(os.getuid())
        return grp.getgrgid(pw.pw_gid).gr_name
    except KeyError:
        return None


def run(args: argparse.Namespace) -> int:
    # the recorder is imported when a session starts, not by every alpacon-agent command
    from agent.pipeline.redact import Redactor
    from collectors.websh.queue import Deliverer, flush_queue
    from collectors.websh.recorder import Recorder, RecorderOptions, SessionInfo
    from collectors.websh.recording import recording_messages

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"alpacon-agent websh: bad configuration: {exc}", file=sys.stderr)
        return 2
    queue_path = Path(args.queue) if args.queue else default_queue_path(cfg)
    socket_path = args.socket or cfg.hook.socket
    if args.flush_queue:
        left = flush_queue(queue_path, socket_path, max(args.flush_timeout, 0.1))
        print(f"{left} record(s) still queued in {queue_path}")
        return 0 if left == 0 else 1

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    user = _opt(args, "user")
    info = SessionInfo(
        session_id=(_opt(args, "session_id") or uuid.uuid4().hex)[:128],
        operator=_opt(args, "operator"),
        browser=_opt(args, "browser"),
        remote_ip=_opt(args, "remote_ip") or _remote_ip(),
        groupname=_opt(args, "groupname") or _groupname(user),
    )
    opts = RecorderOptions(
        user=user,
        command=command,
        login=args.login,
        record_io=_opt(args, "record_io"),
        record_input=args.record_input,
        record_io_max_bytes=args.record_io_max_bytes,
        exec_trail=args.exec_trail,
    )
    redactor = Redactor(cfg.redact.patterns, builtin=cfg.redact.builtin, replacement=cfg.redact.replacement)
    deliverer = Deliverer(queue_path, socket_path)
    try:
        recorder = Recorder(
            info, opts, deliverer.submit, redact=redactor.redact_text, on_spawned=deliverer.start
        )
    except RecorderError as exc:
        print(f"alpacon-agent websh: {exc}", file=sys.stderr)
        return 2
    status = 1
    try:
        status = recorder.run()  # the delivery thread starts only once the shell is forked
    except RecorderError as exc:
        print(f"alpacon-agent websh: {exc}", file=sys.stderr)
        return 2
    finally:
        if opts.record_io and args.ship_recording:
            for msg in recording_messages(opts.record_io, info.session_id, max(args.ship_recording_max_bytes, 0)):
                deliverer.submit(msg)
        if deliverer.ident is None:
            deliverer.start()
        deliverer.stop(max(args.flush_timeout, 0.0))
    return status


def check_exec_trail(cfg: AgentConfig) -> list[CheckResult]:
    """``doctor``: whether recorded sessions can have the kernel's exec trail here, and why not."""
    from agent.cli.checks import ok, warn
    from collectors.websh.exectrail import availability

    mode, reason = availability()
    name = "websh exec trail"
    if mode == "kernel":
        return [ok(name, "audit records and process events: every program of a session, argv from the kernel")]
    fix = "run the recorder as root on a kernel with audit (not locked, enabled != 2) and CONFIG_PROC_EVENTS"
    if mode == "connector":
        return [warn(name, f"process events only, argv read from /proc (short programs may lack argv): {reason}",
                     fix)]
    return [warn(name, f"unavailable ({reason}): sessions are recorded from typed keys and shell marks only", fix)]

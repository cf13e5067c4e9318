"""The core subcommands: ``run``, ``emit``, ``spool``, ``check-config``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from agent.cli.args import add_config_arg, load_or_report
from agent.config import config_warnings

if TYPE_CHECKING:
    from agent.cli.args import Subparsers


def register(sub: Subparsers) -> None:
    """Add ``run``, ``check-config``, ``emit`` and ``spool``."""
    p = sub.add_parser("run", help="run the agent (the service's main job)")
    add_config_arg(p)
    p.add_argument("--once", action="store_true", help="read what the sources have now, ship it, exit")
    p.add_argument("--timeout", type=float, default=300.0, help="with --once: give up after this many seconds")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a configuration file and print every problem")
    p.add_argument("file", nargs="?", default=None, help="the file (default: --config or the default path)")
    add_config_arg(p)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("emit", help="send one event to the running agent through the hook API")
    add_config_arg(p)
    p.add_argument("kind", help="event kind (system_log, webftp_transfer, command, user_activity, …)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--json", dest="json_text", help="the event's data as a JSON object ('-' reads stdin)")
    src.add_argument("--json-file", help="a file holding the data object")
    p.add_argument("--ts", help="event time (RFC 3339); default: now")
    p.add_argument("--id", help="a deterministic event id, for producers that may resend")
    p.add_argument("--socket", help="hook socket path (default: hook.socket from the config)")
    p.set_defaults(func=cmd_emit)

    p = sub.add_parser("spool", help="show the spool (pending batches, bytes, dead letters) or requeue dead letters")
    add_config_arg(p)
    p.add_argument("action", nargs="?", choices=["show", "requeue-dead"], default="show")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_spool)


def cmd_check_config(args: argparse.Namespace) -> int:
    if args.file:
        args.config = args.file
    cfg = load_or_report(args)
    if cfg is None:
        return 2
    for w in config_warnings(cfg):
        print(f"alpacon-agent: warning: {w}", file=sys.stderr)
    print(f"configuration OK: server={cfg.server} sink={cfg.sink.type} state_dir={cfg.state_dir}")
    return 0


#: glibc's mallopt parameter for the number of malloc arenas
_M_ARENA_MAX = -8


def limit_malloc_arenas(n: int = 2) -> bool:
    """At most ``n`` glibc malloc arenas (as ``MALLOC_ARENA_MAX`` would); False where that is
    not glibc. By default each thread that allocates gets an arena of its own, up to eight per
    core, and each keeps the memory freed into it: the reader threads' blocks of events, freed by
    the event loop's thread, left about 4 MiB more resident than two shared arenas do, at no cost
    in speed (../shared/peerbench, both modes). Call before the threads start."""
    import ctypes

    try:
        return bool(ctypes.CDLL(None).mallopt(_M_ARENA_MAX, n))  # the process's own symbols: libc's
    except (OSError, AttributeError):
        return False


def cmd_run(args: argparse.Namespace) -> int:
    from agent.logs import configure_logging
    from agent.service import Agent

    cfg = load_or_report(args)
    if cfg is None:
        return 2
    configure_logging(cfg.log_level)
    for w in config_warnings(cfg):
        structlog.get_logger("config").warning(w)
    # collectors read in threads; a short switch interval keeps the event loop (hook answers,
    # shipping) from waiting 5 ms for the GIL after every system call
    sys.setswitchinterval(0.0005)
    # collectors make many short-lived containers per block of lines: with the default
    # thresholds a collection runs every 700 of them and a full one walks every object loaded.
    # What exists now (modules, config) is frozen out of collections, and they run less often.
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    limit_malloc_arenas()

    async def main() -> int:
        agent = Agent(cfg, args.config)
        if args.once:
            ok, why = await agent.run_once(args.timeout)
            print(("ok: " if ok else "failed: ") + why, file=sys.stderr)
            return 0 if ok else 1
        return await agent.run()

    return asyncio.run(main())


def cmd_emit(args: argparse.Namespace) -> int:
    from agent.hookclient import HookClient, HookClientError

    cfg = load_or_report(args)
    if cfg is None:
        return 2
    try:
        if args.json_file:
            with open(args.json_file, encoding="utf-8") as f:
                text = f.read()
        elif args.json_text == "-":
            text = sys.stdin.read()
        else:
            text = args.json_text
        data = orjson.loads(text)
    except (OSError, orjson.JSONDecodeError) as exc:
        print(f"alpacon-agent emit: the data is not valid JSON: {exc}", file=sys.stderr)
        return 2
    path = args.socket or cfg.hook.socket
    try:
        with HookClient(path) as client:
            ans = client.emit(args.kind, data, ts=args.ts, id=args.id)
    except HookClientError as exc:
        print(f"alpacon-agent emit: {exc} (is the agent running?)", file=sys.stderr)
        return 1
    print(json.dumps(ans))
    status = ans.get("status")
    if status == "ok":
        return 0
    return 2 if status == "invalid" else 1


def cmd_spool(args: argparse.Namespace) -> int:
    from agent.spool import Spool

    cfg = load_or_report(args)
    if cfg is None:
        return 2
    try:
        spool = Spool(cfg.state_dir, cfg.spool.max_bytes, recover=False)
    except RuntimeError as exc:
        print(f"alpacon-agent spool: {exc}", file=sys.stderr)
        return 1
    try:
        if args.action == "requeue-dead":
            n = spool.requeue_dead()
            print(f"requeued {n} dead-lettered batch(es); the running agent ships them next")
            return 0
        st = spool.stats()
        dead = spool.dead_letters()
        info: dict[str, Any] = {
            "path": str(spool.path),
            "pending_batches": st.batches,
            "pending_events": st.events,
            "bytes": st.bytes,
            "max_bytes": st.max_bytes,
            "oldest_age_s": st.oldest_age_s,
            "dead_letters": st.dead_letters,
            "dead_events": st.dead_events,
            "dead": dead,
            "checkpoints": spool.checkpoints(),
        }
        if args.json:
            print(json.dumps(info, indent=1))
            return 0
        age = f"{st.oldest_age_s:.0f}s" if st.oldest_age_s is not None else "-"
        print(f"spool {spool.path}")
        print(f"  pending: {st.batches} batches, {st.events} events, {st.bytes} of {st.max_bytes} bytes, oldest {age}")
        print(f"  dead letters: {st.dead_letters} batches, {st.dead_events} events")
        for d in dead:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d["dead_at"]))
            print(f"    {d['batch_id']}  {d['n_events']} events  {when}Z  status={d['status']}  {d['reason']}")
        if dead:
            print("  (alpacon-agent spool requeue-dead sends them again)")
        return 0
    finally:
        spool.close()

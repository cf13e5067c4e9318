"""The ``alpacon-agent-receiver`` command: flags, logging, serving until SIGTERM/SIGINT.

Run it as ``alpacon-agent-receiver`` or ``python -m receiver.cli``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile

import orjson
import structlog

from receiver.app import make_app, start
from receiver.consumer import DEFAULT_CONSUMER, DEFAULT_STREAM, DEFAULT_SUBJECTS, ConsumeError, ConsumeSettings
from receiver.errors import StoreError
from receiver.faults import FaultSettings
from receiver.pg_sql import redact_url

log = structlog.get_logger("receiver")


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as a (host, port) pair."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    p = argparse.ArgumentParser(
        prog="alpacon-agent-receiver",
        description="Reference workspace-backend ingest: validates, dedups by event id, stores, "
        "serves the audit views; injects faults for tests.",
    )
    p.add_argument(
        "--listen",
        type=parse_listen,
        default=("127.0.0.1", 8765),
        metavar="HOST:PORT",
        help="address to listen on; port 0 picks a free one (default 127.0.0.1:8765)",
    )
    p.add_argument(
        "--db",
        default=None,
        metavar="PATH|URL",
        help="SQLite file, or postgresql://USER@HOST/DB to share one PostgreSQL between receivers "
        "(default: a temporary SQLite file removed at exit; ':memory:' works)",
    )
    p.add_argument(
        "--retention-days",
        type=int,
        default=None,
        metavar="N",
        help="PostgreSQL only: drop the day partitions of events older than N days (hourly sweep)",
    )
    c = p.add_argument_group("stream consumer (PostgreSQL or SQLite store)")
    c.add_argument("--consume", default=None, metavar="NATS_URL",
                   help="also consume the agents' JetStream stream, e.g. nats://127.0.0.1:4222")
    c.add_argument("--stream", default=DEFAULT_STREAM, help=f"stream name (default {DEFAULT_STREAM})")
    c.add_argument("--subjects", default=DEFAULT_SUBJECTS, help=f"subjects consumed (default {DEFAULT_SUBJECTS})")
    c.add_argument("--consumer-name", default=DEFAULT_CONSUMER,
                   help="durable consumer; receivers with the same name share the stream's messages")
    c.add_argument("--fetch-batch", type=int, default=500, help="messages per pull (default 500)")
    c.add_argument("--ack-wait", type=float, default=30.0, metavar="SECONDS",
                   help="redeliver a message not acked within this time (default 30)")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--token", default=None, help="bearer token agents must send")
    tok.add_argument("--token-file", default=None, metavar="FILE", help="file holding the token")
    p.add_argument(
        "--mode",
        choices=("store", "count"),
        default="store",
        help="store: SQLite and views; count: benchmark sink that only counts",
    )
    p.add_argument(
        "--log-level",
        default="warning",
        choices=("debug", "info", "warning", "error"),
        help="stderr log level",
    )
    f = p.add_argument_group("faults (also settable at run time: POST /api/v1/_faults)")
    f.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered 503")
    f.add_argument("--error-status", type=int, default=503, help="status of --error-rate answers")
    f.add_argument("--throttle-rate", type=float, default=0.0, help="share answered 429")
    f.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds of 429 answers")
    f.add_argument("--slow-rate", type=float, default=0.0, help="share of slow answers")
    f.add_argument("--slow-ms", type=int, default=0, help="delay of a slow answer")
    f.add_argument(
        "--drop-rate", type=float, default=0.0, help="share of connections dropped unanswered"
    )
    f.add_argument(
        "--force-status", type=int, default=None, help="answer every request with this status"
    )
    f.add_argument(
        "--fail-after-store-rate",
        type=float,
        default=0.0,
        help="share of batches stored and then answered 503 (causes replays)",
    )
    f.add_argument("--seed", type=int, default=None, help="seed of the fault draws")
    f.add_argument(
        "--max-body-bytes",
        type=int,
        default=32 * 1024 * 1024,
        help="cap on the decompressed body (413 above)",
    )
    f.add_argument(
        "--max-compressed-bytes",
        type=int,
        default=32 * 1024 * 1024,
        help="cap on the body as sent (413 above)",
    )
    return p


def configure_logging(level: str) -> None:
    """JSON log lines on stderr from ``level`` up."""
    import logging

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(serializer=lambda o, **_: orjson.dumps(o).decode()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


async def serve(
    args: argparse.Namespace, token: str | None, faults: FaultSettings, db: str
) -> None:
    consume = None
    if args.consume is not None:
        consume = ConsumeSettings(
            url=args.consume, stream=args.stream, subjects=args.subjects, consumer=args.consumer_name,
            batch=args.fetch_batch, ack_wait_s=args.ack_wait,
        )
    app = make_app(token=token, db_path=db, mode=args.mode, faults=faults, retention_days=args.retention_days,
                   consume=consume)
    host, port = args.listen
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner, real_port = await start(app, host, port)
    shown = f"[{host}]" if ":" in host else host
    print(f"listening on http://{shown}:{real_port}", flush=True)
    log.info("listening", host=host, port=real_port, mode=args.mode, db=redact_url(db))
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """The ``alpacon-agent-receiver`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    token = args.token
    if args.token_file is not None:
        try:
            with open(args.token_file, encoding="utf-8") as fh:
                token = fh.read().strip()
        except OSError as exc:
            print(
                f"alpacon-agent-receiver: --token-file: {exc.strerror}: {args.token_file}",
                file=sys.stderr,
            )
            return 2
        if not token:
            print(
                f"alpacon-agent-receiver: --token-file: {args.token_file} is empty", file=sys.stderr
            )
            return 2
    if token is None:
        log.warning("no token given: every request is accepted without authentication")
    try:
        faults = FaultSettings(
            error_rate=args.error_rate,
            error_status=args.error_status,
            throttle_rate=args.throttle_rate,
            retry_after=args.retry_after,
            slow_rate=args.slow_rate,
            slow_ms=args.slow_ms,
            drop_rate=args.drop_rate,
            force_status=args.force_status,
            fail_after_store_rate=args.fail_after_store_rate,
            seed=args.seed,
            max_body_bytes=args.max_body_bytes,
            max_compressed_bytes=args.max_compressed_bytes,
        )
    except ValueError as exc:
        from pydantic import ValidationError

        from receiver.faults import describe_validation_error

        msg = describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
        print(f"alpacon-agent-receiver: {msg}", file=sys.stderr)
        return 2
    if args.consume is not None and args.mode != "store":
        print("alpacon-agent-receiver: --consume needs --mode store", file=sys.stderr)
        return 2
    if args.fetch_batch < 1 or args.ack_wait <= 0:
        print("alpacon-agent-receiver: --fetch-batch and --ack-wait must be positive", file=sys.stderr)
        return 2
    tmpdir = None
    db = args.db
    if db is None:
        tmpdir = tempfile.mkdtemp(prefix="alpacon-receiver-")
        db = os.path.join(tmpdir, "receiver.db")
    try:
        asyncio.run(serve(args, token, faults, db))
    except ConsumeError as exc:
        print(f"alpacon-agent-receiver: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"alpacon-agent-receiver: --db {redact_url(db)}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"alpacon-agent-receiver: cannot listen on {args.listen[0]}:{args.listen[1]}: {exc}",
            file=sys.stderr,
        )
        return 1
    finally:
        if tmpdir is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(tmpdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

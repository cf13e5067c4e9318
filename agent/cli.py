"""The ``alpacon-agent`` command: one entry point, a subcommand per job.

Each subcommand lives in its own module that exposes ``register(subparsers)``; it adds its
parser and sets ``func(args) -> int`` as the default. Exit codes: 0 ok, 1 failure, 2 bad
usage or bad configuration.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from agent import __version__
from agent.config import DEFAULT_CONFIG_PATH

#: modules that contribute subcommands (each has ``register(subparsers)``)
COMMAND_MODULES: list[str] = [
    "agent.commands",
    "agent.demo",
    "agent.doctor",
    "collectors.commands.client",
    "collectors.websh.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alpacon-agent",
        description="On-server audit collector for the workspace backend.",
    )
    parser.add_argument("--version", action="version", version=f"alpacon-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def add_config_arg(p: argparse.ArgumentParser) -> None:
    """The ``--config FILE`` option every subcommand takes."""
    p.add_argument(
        "--config",
        "-c",
        default=None,
        metavar="FILE",
        help=f"configuration file (default: {DEFAULT_CONFIG_PATH}, or built-in defaults when absent)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        rc = 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())

"""The ``alpacon-agent`` command: the parser and the registry of its subcommands.

Each subcommand lives in a module that exposes ``register(subparsers)``; it adds its parser
and sets ``func(args) -> int`` as the default. The modules are imported here by name, so the
registry is what this file says. Exit codes: 0 ok, 1 failure, 2 bad usage or bad
configuration.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent import __version__
from agent.cli import demo, doctor, run, setup
from agent.logs import configure_logging
from collectors.commands import client as exec_cli
from collectors.websh import cli as websh_cli

if TYPE_CHECKING:
    from agent.cli.args import Subparsers

#: every subcommand's ``register``, in the order ``--help`` lists them
REGISTRY: list[Callable[[Subparsers], None]] = [
    run.register,
    demo.register,
    doctor.register,
    setup.register,
    exec_cli.register,
    websh_cli.register,
]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="alpacon-agent",
        description="On-server audit collector for the workspace backend.",
    )
    parser.add_argument("--version", action="version", version=f"alpacon-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in REGISTRY:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's), run the subcommand, return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # log lines go to stderr, never into a command's output (doctor --json, spool --json); `run`
    # and `demo` configure their own level and format
    configure_logging("warning", json=False)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        rc = 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())

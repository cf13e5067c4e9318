"""What every subcommand shares: the ``--config`` option and loading the config it names.

Imports nothing of the CLI's own, so a subcommand module anywhere (``collectors.websh.cli``,
``collectors.commands.client``) can use it without pulling in the others.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TypeAlias

from agent.config import DEFAULT_CONFIG_PATH, AgentConfig, load_config
from agent.errors import ConfigError

if TYPE_CHECKING:
    #: what ``ArgumentParser.add_subparsers()`` returns; each module's ``register`` takes it
    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]


def add_config_arg(p: argparse.ArgumentParser) -> None:
    """The ``--config FILE`` option every subcommand takes."""
    p.add_argument(
        "--config",
        "-c",
        default=None,
        metavar="FILE",
        help=f"configuration file (default: {DEFAULT_CONFIG_PATH}, or built-in defaults when absent)",
    )


def load_or_report(args: argparse.Namespace, prog: str = "alpacon-agent") -> AgentConfig | None:
    """The config ``--config`` names, or None after printing every problem to stderr."""
    try:
        return load_config(args.config)
    except ConfigError as exc:
        print(f"{prog}: invalid configuration {exc.source}:", file=sys.stderr)
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return None

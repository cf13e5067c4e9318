"""Real processes for end-to-end tests: the reference receiver and the agent.

``ReceiverProcess`` runs ``alpacon-agent-receiver`` on a free loopback port;
``AgentProcess`` runs ``alpacon-agent run`` with a config written from a dict, and can be
killed (SIGKILL), stopped and restarted on the same state directory. Both are used as
context managers or through the fixtures in ``tests/conftest.py``.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.support import free_port, wait_until

BIN = Path(sys.executable).parent
TOKEN = "test-token-0123456789"


def _http(method: str, url: str, body: Any = None, token: str | None = TOKEN, timeout: float = 30) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


class ReceiverProcess:
    """The reference receiver in a child process."""

    def __init__(self, tmp: Path, *args: str, token: str = TOKEN, port: int | None = None, mode: str = "store",
                 db: str | None = None) -> None:
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.port = port or free_port()
        self.args = list(args)
        self.mode = mode
        self.db = self.tmp / "receiver.db"
        #: what ``--db`` gets: the SQLite file above, or a ``postgresql://`` URL
        self.db_arg = db or str(self.db)
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = self.tmp / "receiver.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ingest_url(self) -> str:
        return f"{self.url}/api/v1/agent/events"

    def start(self) -> ReceiverProcess:
        cmd = [str(BIN / "alpacon-agent-receiver"), "--listen", f"127.0.0.1:{self.port}", "--token", self.token,
               "--mode", self.mode, *self.args]
        if self.mode == "store":
            cmd += ["--db", self.db_arg]
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening" not in line:
            self.proc.kill()
            raise RuntimeError(f"receiver did not start: {line!r}; see {self.log_path}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> ReceiverProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- API ---------------------------------------------------------------------------------
    def get(self, path: str, **params: Any) -> Any:
        q = "&".join(f"{k}={urllib.request.quote(str(v))}" for k, v in params.items() if v is not None)
        return _http("GET", f"{self.url}{path}" + (f"?{q}" if q else ""), token=self.token)

    def view(self, name: str, **params: Any) -> list[dict[str, Any]]:
        body = self.get(f"/api/v1/{name}", **params)
        return body["items"]

    def ids(self, kind: str | None = None) -> list[str]:
        """Every stored id (of ``kind``) in arrival order, read a page at a time."""
        out: list[str] = []
        after = 0
        while True:
            body = self.get("/api/v1/ids", kind=kind, after=after, limit=100000)
            out += body["ids"]
            if body["count"] < 100000:
                return out
            after = body["next_after"]

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after = 0
        while True:
            body = self.get("/api/v1/events", kind=kind, after=after, limit=10000)
            out += body["events"]
            if body["count"] < 10000:
                return out
            after = body["next_after"]

    def stats(self) -> dict[str, Any]:
        return self.get("/api/v1/stats")

    def faults(self, **settings: Any) -> Any:
        return _http("POST", f"{self.url}/api/v1/_faults", settings, token=self.token)


def agent_config(tmp: Path, receiver: ReceiverProcess | None = None, **overrides: Any) -> dict[str, Any]:
    """A config for a test agent: its own state dir, socket and metrics port, no system sources."""
    tmp = Path(tmp)
    token_file = tmp / "token"
    token_file.write_text((receiver.token if receiver else TOKEN) + "\n")
    token_file.chmod(0o600)
    cfg: dict[str, Any] = {
        "server": "test-server",
        "state_dir": str(tmp / "state"),
        "sink": {
            "type": "http",
            "url": receiver.ingest_url if receiver else "http://127.0.0.1:9/none",
            "token_file": str(token_file),
            "backoff_initial_s": 0.05,
            "backoff_max_s": 1.0,
            "auth_pause_s": 0.5,
            "timeout_s": 10,
        },
        "batch": {"max_events": 500, "max_wait_ms": 100},
        "hook": {"socket": str(tmp / "hook.sock")},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "collectors": {
            "journald": {"enabled": False},
            "syslog": {"enabled": False},
            "auth": {"enabled": False},
            "sftp": {"enabled": False},
            "commands": {"enabled": False},
            "metrics": {"enabled": False},
        },
    }
    return deep_merge(cfg, overrides)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


class AgentProcess:
    """``alpacon-agent run`` in a child process, with its config in ``tmp/agent.yaml``."""

    def __init__(self, tmp: Path, config: dict[str, Any], env: dict[str, str] | None = None) -> None:
        self.tmp = Path(tmp)
        self.config = config
        self.config_path = self.tmp / "agent.yaml"
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.tmp / "agent.log"
        self.write_config()

    def write_config(self, config: dict[str, Any] | None = None) -> None:
        if config is not None:
            self.config = config
        self.config_path.write_text(yaml.safe_dump(self.config))

    @property
    def socket(self) -> str:
        return self.config["hook"]["socket"]

    @property
    def metrics_url(self) -> str:
        return f"http://{self.config['http']['listen']}"

    @property
    def spool_path(self) -> Path:
        return Path(self.config["state_dir"]) / "spool.db"

    def cli(self, *args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``alpacon-agent SUBCOMMAND --config <this agent's config> ARGS…``."""
        return subprocess.run(
            [str(BIN / "alpacon-agent"), args[0], "--config", str(self.config_path), *args[1:]],
            capture_output=True, text=True, input=input, timeout=timeout,
        )

    def start(self, wait: bool = True, extra_args: tuple[str, ...] = ()) -> AgentProcess:
        log = open(self.log_path, "ab")
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(
            [str(BIN / "alpacon-agent"), "run", "--config", str(self.config_path), *extra_args],
            stdout=log, stderr=log, env=env, start_new_session=True,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log_path.read_text()[-4000:]}")
            if self.config.get("hook", {}).get("enabled", True) is False:
                return self._healthy()
            return os.path.exists(self.socket) and self._healthy()

        wait_until(ready, timeout, what="agent ready")

    def _healthy(self) -> bool:
        try:
            return self.health() is not None
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def health(self) -> dict[str, Any]:
        try:
            return _http("GET", f"{self.metrics_url}/healthz", token=None, timeout=5)
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"{self.metrics_url}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of /metrics (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for fam in text_string_to_metric_families(self.metrics_text()):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError("agent did not stop within the timeout") from None
        rc = self.proc.returncode
        self.proc = None
        return rc

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            try:
                self.stop()
            except AssertionError:
                pass

    def wait_drained(self, timeout: float = 60) -> None:
        """Until the spool holds no batches (everything acknowledged)."""
        wait_until(lambda: self.health()["spool"]["batches"] == 0, timeout, what="spool drained")

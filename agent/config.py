"""The agent's configuration: one YAML file validated into typed objects, every option defaulted.

``load_config(path)`` raises :class:`ConfigError` listing every problem with the dotted
path of the bad key; nothing starts on a bad config, and a bad reload keeps the old one.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.errors import ConfigError

DEFAULT_CONFIG_PATH = "/etc/alpacon-agent/agent.yaml"
LEVELS = ("emerg", "alert", "crit", "error", "warning", "notice", "info", "debug")

PositiveInt = Annotated[int, Field(gt=0)]


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are checked strictly."""

    model_config = ConfigDict(extra="forbid", strict=False, validate_default=True)


class TLSConfig(Section):
    verify: bool = True
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class SinkConfig(Section):
    type: Literal["http", "file", "stdout"] = "http"
    url: str = "http://127.0.0.1:8765/api/v1/agent/events"
    token_file: str | None = None
    path: str | None = Field(default=None, description="file sink: JSON lines output path")
    timeout_s: float = Field(default=30.0, gt=0)
    in_flight: int = Field(
        default=1,
        ge=1,
        le=64,
        description="batches sent at once; above 1, batches can arrive out of order after retries",
    )
    compression: Literal["gzip", "none"] = "gzip"
    gzip_level: int = Field(
        default=1, ge=1, le=9, description="deflate level of request bodies, and of batches as they are spooled"
    )
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    auth_pause_s: float = Field(default=60.0, gt=0, description="retry interval after 401/403")
    tls: TLSConfig = TLSConfig()

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v

    @model_validator(mode="after")
    def _needs(self) -> SinkConfig:
        if self.type == "file" and not self.path:
            raise ValueError("sink.type 'file' needs 'path'")
        if self.token_file is not None:
            p = Path(self.token_file)
            if not p.is_file():
                raise ValueError(f"token_file {self.token_file!r} does not exist or is not a file")
            if not os.access(p, os.R_OK):
                raise ValueError(f"token_file {self.token_file!r} is not readable")
        return self

    def token(self) -> str | None:
        """The bearer token read from ``token_file`` (stripped), or None."""
        if not self.token_file:
            return None
        return Path(self.token_file).read_text(encoding="utf-8").strip() or None

    def is_local(self) -> bool:
        """Whether ``url`` names this machine (localhost or a loopback address)."""
        host = urllib.parse.urlsplit(self.url).hostname or ""
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def token_in_clear(self) -> bool:
        """Whether a bearer token would cross the network unencrypted (plain http to another host)."""
        return self.type == "http" and bool(self.token_file) and self.url.startswith("http://") and not self.is_local()


class BatchConfig(Section):
    max_events: int = Field(default=1000, ge=1, le=100_000)
    max_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1024 * 1024)
    max_wait_ms: int = Field(default=1000, ge=1, le=600_000)


class SpoolConfig(Section):
    max_bytes: int = Field(
        default=268_435_456, ge=65_536, description="cap on the spooled batches' bytes as stored (deflated)"
    )
    synchronous: Literal["full", "normal"] = Field(
        default="normal",
        description="what a commit promises. normal: it survives a crash of the agent (kill -9, OOM), but a "
        "power loss or kernel crash may take the last seconds of commits back, hook oks included (the spool "
        "stays consistent; journald and files are re-read from the positions that remain). full: a hook "
        "producer is answered ok only once its event is on disk (a group-committed fsync of the WAL), so an "
        "ok survives power loss too",
    )


class HookConfig(Section):
    enabled: bool = True
    socket: str = "/run/alpacon-agent/hook.sock"
    mode: int = 0o660
    allow_users: list[str] = ["root"]
    allow_groups: list[str] = []
    max_message_bytes: int = Field(default=1_048_576, ge=1024)
    max_connections: int = Field(default=256, ge=1, description="connections served at once, all peers together")
    max_connections_per_uid: int = Field(
        default=64, ge=1, description="connections one peer uid may hold; when all are taken, the uid holding "
        "the most gives up its longest-idle one to a uid holding fewer"
    )
    idle_timeout_s: float = Field(
        default=60.0, gt=0, le=86_400, description="a connection that sends no whole message and reads no "
        "answer for this long is closed"
    )


class HttpConfig(Section):
    enabled: bool = True
    listen: str = "127.0.0.1:9273"

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT")
        return v


class RedactConfig(Section):
    patterns: list[str] = []
    builtin: bool = True
    replacement: str = "[REDACTED]"

    @field_validator("patterns")
    @classmethod
    def _compile(cls, v: list[str]) -> list[str]:
        import re

        for i, p in enumerate(v):
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"pattern {i} {p!r} is not a valid regular expression: {exc}") from exc
        return v


class FilterConfig(Section):
    drop_kinds: list[str] = []
    min_level: Literal[LEVELS] = "debug"  # type: ignore[valid-type]


class JournaldConfig(Section):
    enabled: bool = True
    start_at: Literal["beginning", "end"] = "end"
    directory: str | None = None
    units: list[str] = []
    exclude_units: list[str] = []
    identifiers: list[str] = []
    exclude_identifiers: list[str] = []
    min_level: Literal[LEVELS] = "debug"  # type: ignore[valid-type]
    this_boot_only: bool = False
    max_message_bytes: int = Field(default=65_536, ge=256)


class SyslogConfig(Section):
    enabled: bool = False
    paths: list[str] = ["/var/log/syslog"]
    start_at: Literal["beginning", "end"] = "end"
    max_line_bytes: int = Field(default=65_536, ge=256)
    partial_line_timeout_s: float = Field(default=5.0, gt=0)
    poll_interval_s: float = Field(default=0.25, gt=0)
    glob_interval_s: float = Field(default=5.0, gt=0)


class AuthConfig(Section):
    enabled: bool = True
    paths: list[str] = ["/var/log/auth.log", "/var/log/secure"]
    source: Literal["auto", "journald", "file"] = "auto"
    #: PAM services whose session opened/closed lines are noise, not user activity
    ignore_pam_services: list[str] = ["cron", "CRON", "crond", "systemd-user", "atd"]


class SftpConfig(Section):
    enabled: bool = True
    #: sftp-server processes tracked at once (the oldest is forgotten beyond this)
    max_sessions: int = Field(default=4096, ge=16)


class CommandsConfig(Section):
    enabled: bool = True
    default_timeout_s: float = Field(default=3600.0, gt=0)
    kill_on_timeout: bool = False
    max_output_bytes: int = Field(default=65_536, ge=1024)


class MetricsConfig(Section):
    enabled: bool = True
    interval_s: float = Field(default=60.0, ge=0.1)


class CollectorsConfig(Section):
    journald: JournaldConfig = JournaldConfig()
    syslog: SyslogConfig = SyslogConfig()
    auth: AuthConfig = AuthConfig()
    sftp: SftpConfig = SftpConfig()
    commands: CommandsConfig = CommandsConfig()
    metrics: MetricsConfig = MetricsConfig()


class ShutdownConfig(Section):
    flush_timeout_s: float = Field(default=10.0, gt=0)


class AgentConfig(Section):
    server: str = Field(default_factory=socket.gethostname, min_length=1, max_length=256)
    agent_id: str | None = None
    state_dir: str = "/var/lib/alpacon-agent"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    sink: SinkConfig = SinkConfig()
    batch: BatchConfig = BatchConfig()
    spool: SpoolConfig = SpoolConfig()
    hook: HookConfig = HookConfig()
    http: HttpConfig = HttpConfig()
    redact: RedactConfig = RedactConfig()
    filter: FilterConfig = FilterConfig()
    collectors: CollectorsConfig = CollectorsConfig()
    shutdown: ShutdownConfig = ShutdownConfig()


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not str(p).startswith("function-after"))


def format_errors(exc: ValidationError) -> list[str]:
    """One line per problem: ``dotted.path: why``."""
    out = []
    for err in exc.errors():
        path = _loc(err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        if err["type"] == "literal_error":
            msg = f"{err.get('input')!r} is not one of {err['ctx']['expected']}"
        out.append(f"{path}: {msg}")
    return out


def parse_config(data: Any, source: str = "<config>") -> AgentConfig:
    """Validate a mapping (already parsed YAML) into an :class:`AgentConfig`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"(top level): must be a mapping, got {type(data).__name__}"])
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_errors(exc)) from None


def load_config(path: str | os.PathLike[str] | None) -> AgentConfig:
    """Read and validate the YAML file at ``path``; a missing default path gives the defaults."""
    if path is None:
        path = DEFAULT_CONFIG_PATH
        if not Path(path).exists():
            return parse_config({}, "<defaults>")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(p), ["(file): does not exist"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(p), [f"(file): cannot be read: {exc}"]) from None
    if len(text) > 1_048_576:
        raise ConfigError(str(p), ["(file): larger than 1 MiB"])
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(p), [f"(yaml): malformed YAML{where}: {problem}"]) from None
    return parse_config(data, str(p))

"""The agent's configuration: one YAML file validated into typed objects, every option defaulted.

``load_config(path)`` raises :class:`ConfigError` listing every problem with the dotted
path of the bad key; nothing starts on a bad config, and a bad reload keeps the old one.
"""

from __future__ import annotations

import os
import re
import socket
import stat
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
)

from agent import safeyaml
from agent.config_base import Section, clip
from agent.config_sink import SinkConfig
from agent.errors import ConfigError
from agent.hookpeer import PushPolicy
from agent.tokenfile import TokenError, check_token_file

DEFAULT_CONFIG_PATH = "/etc/alpacon-agent/agent.yaml"
#: a config file larger than this is refused (and never read further)
MAX_CONFIG_BYTES = 1_048_576
#: characters of a value shown in an error, and of one problem line
MAX_PROBLEM_CHARS = 300
MAX_PROBLEMS = 50
LEVELS = ("emerg", "alert", "crit", "error", "warning", "notice", "info", "debug")

PositiveInt = Annotated[int, Field(gt=0)]


class BatchConfig(Section):
    max_events: int = Field(default=5000, ge=1, le=100_000)
    max_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1024 * 1024)
    max_wait_ms: int = Field(default=1000, ge=1, le=600_000)


class SpoolConfig(Section):
    max_bytes: int = Field(
        default=268_435_456, ge=65_536, description="cap on the spooled batches' bytes as stored (deflated)"
    )
    synchronous: Literal["full", "normal"] = Field(
        default="full",
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
    #: who may connect at all
    allow_users: list[str] = ["root"]
    allow_groups: list[str] = []
    #: who may push which kind, once connected
    push: PushPolicy = PushPolicy()
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

        for i, p in enumerate(v):
            if len(p) > 4096:
                raise ValueError(f"pattern {i} {clip(p)} is longer than 4096 characters")
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"pattern {i} {clip(p)} is not a valid regular expression: {exc}") from None
            except RecursionError:  # the compiler recurses once per group level
                raise ValueError(f"pattern {i} {clip(p)} nests groups too deeply") from None
        return v


class FilterConfig(Section):
    drop_kinds: list[str] = []
    min_level: Literal[LEVELS] = "debug"  # type: ignore[valid-type]  # a Literal of the LEVELS tuple


class JournaldConfig(Section):
    enabled: bool = True
    start_at: Literal["beginning", "end"] = "end"
    directory: str | None = None
    units: list[str] = []
    exclude_units: list[str] = []
    identifiers: list[str] = []
    exclude_identifiers: list[str] = []
    min_level: Literal[LEVELS] = "debug"  # type: ignore[valid-type]  # a Literal of the LEVELS tuple
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
    #: the time zone of FTP servers' transfer-log stamps (``Mon Dec  1 10:00:00 2026``): vsftpd
    #: writes UTC unless ``use_localtime=YES``, ProFTPD local time
    ftp_times: Literal["local", "utc"] = "local"


class AuthConfig(Section):
    enabled: bool = True
    paths: list[str] = ["/var/log/auth.log", "/var/log/secure"]
    source: Literal["auto", "journald", "file"] = "auto"
    #: where the auth files are first read from (their own, whatever collectors.syslog says):
    #: ``beginning`` back-fills a copied auth.log or secure
    start_at: Literal["beginning", "end"] = "end"
    #: PAM services whose session opened/closed lines are noise, not user activity
    ignore_pam_services: list[str] = ["cron", "CRON", "crond", "systemd-user", "atd"]


class SftpConfig(Section):
    enabled: bool = True
    #: sftp-server processes tracked at once (the oldest is forgotten beyond this)
    max_sessions: int = Field(default=4096, ge=16)


class FtpConfig(Section):
    """FTP servers' transfer logs (standard xferlog, vsftpd.log) -> ``webftp_transfer``."""

    enabled: bool = True
    #: the files read (only those that exist); lines of these formats in any other file read are used too
    paths: list[str] = ["/var/log/xferlog", "/var/log/vsftpd.log", "/var/log/proftpd/xferlog"]
    start_at: Literal["beginning", "end"] = "end"
    #: their stamps' time zone: vsftpd writes UTC unless ``use_localtime=YES``, ProFTPD local time
    times: Literal["local", "utc"] = "local"


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
    ftp: FtpConfig = FtpConfig()
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
    return ".".join(clip(p, 40) if not isinstance(p, str | int) else str(p)[:60] for p in loc
                    if not str(p).startswith("function-after"))


def _problems(source: str, lines: list[str]) -> ConfigError:
    """A ConfigError with each line clipped and at most MAX_PROBLEMS of them."""
    out = [line if len(line) <= MAX_PROBLEM_CHARS else line[:MAX_PROBLEM_CHARS] + "…" for line in lines[:MAX_PROBLEMS]]
    if len(lines) > MAX_PROBLEMS:
        out.append(f"… and {len(lines) - MAX_PROBLEMS} more problems")
    return ConfigError(source, out)


def format_errors(exc: ValidationError) -> list[str]:
    """One line per problem: ``dotted.path: why``; input values are clipped (see :func:`clip`)."""
    out = []
    for err in exc.errors(include_url=False, include_input=True):
        path = _loc(err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        if err["type"] == "literal_error":
            msg = f"{clip(err.get('input'))} is not one of {err['ctx']['expected']}"
        out.append(f"{path}: {msg}")
    return out


def config_warnings(cfg: AgentConfig) -> list[str]:
    """What is allowed but unsafe in a valid config (a token file others can read), one line each."""
    out = []
    if cfg.sink.token_file:
        try:
            out += [f"sink.token_file: {w}" for w in check_token_file(cfg.sink.token_file)]
        except TokenError as exc:  # changed since it was validated
            out.append(f"sink.token_file: {exc}")
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
        raise _problems(source, format_errors(exc)) from None


def read_config_text(p: Path) -> str:
    """The file's text, reading at most MAX_CONFIG_BYTES + 1 bytes; only a regular file is read."""
    try:
        # O_NONBLOCK: a FIFO in place of the file must not block the open
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(str(p), ["(file): does not exist"]) from None
    except OSError as exc:
        raise ConfigError(str(p), [f"(file): cannot be read: {exc.strerror}"]) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # before fdopen, which refuses a directory itself
        os.close(fd)
        raise ConfigError(str(p), ["(file): not a regular file"])
    with os.fdopen(fd, "rb") as f:
        try:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise ConfigError(str(p), [f"(file): cannot be read: {exc.strerror}"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(str(p), [f"(file): larger than {MAX_CONFIG_BYTES // 1048576} MiB"])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = f"byte {exc.start} is 0x{raw[exc.start]:02x}"
        raise ConfigError(str(p), [f"(file): cannot be read: not UTF-8 ({bad})"]) from None


def load_config(path: str | os.PathLike[str] | None) -> AgentConfig:
    """Read and validate the YAML file at ``path``; a missing default path gives the defaults."""
    if path is None:
        path = DEFAULT_CONFIG_PATH
        if not Path(path).exists():
            return parse_config({}, "<defaults>")
    p = Path(path)
    text = read_config_text(p)
    try:
        data = safeyaml.load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = str(getattr(exc, "problem", None) or exc)[:200]
        what = "refused YAML" if isinstance(exc, safeyaml.YAMLBudgetError) else "malformed YAML"
        raise ConfigError(str(p), [f"(yaml): {what}{where}: {problem}"]) from None
    except (ValueError, RecursionError) as exc:  # a scalar Python cannot hold (an int of > 4300 digits)
        raise ConfigError(str(p), [f"(yaml): a value cannot be read: {str(exc)[:200]}"]) from None
    return parse_config(data, str(p))

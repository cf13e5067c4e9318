"""The ``sink`` section of the config: where batches go (http, otlp, nats, file, stdout) and how."""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import urllib.parse
from typing import Annotated, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from agent.config_base import Section, clip
from agent.tokenfile import TokenError, check_token_file, read_token

PositiveInt = Annotated[int, Field(gt=0)]


class TLSConfig(Section):
    verify: bool = True
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")
_NATS_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


class OtlpConfig(Section):
    """``sink.type: otlp`` — OTLP/HTTP logs: ``POST {sink.url}/v1/logs``."""

    encoding: Literal["protobuf", "json"] = "protobuf"


class NatsConfig(Section):
    """``sink.type: nats`` — one JetStream message per event, ``Nats-Msg-Id`` its id."""

    servers: list[str] = Field(default=["nats://127.0.0.1:4222"], min_length=1)
    stream: str = "ALPACON"
    subject: str = Field(default="alpacon.{server}.{kind}", description="may use {server} and {kind}")
    creds_file: str | None = None
    max_pending: int = Field(default=256, ge=1, le=65_536, description="publishes awaiting their ack at once")
    auto_create_stream: bool = True
    replicas: int = Field(default=1, ge=1, le=5, description="of a stream the agent creates")
    duplicate_window_s: float = Field(default=3600.0, gt=0, description="of a stream the agent creates")
    max_age_s: float = Field(default=0.0, ge=0, description="retention of a stream the agent creates; 0: no limit")

    @field_validator("servers")
    @classmethod
    def _servers(cls, v: list[str]) -> list[str]:
        for url in v:
            if not url.startswith(("nats://", "tls://")) or not urllib.parse.urlsplit(url).hostname:
                raise ValueError(f"{url!r} must be nats://HOST:PORT or tls://HOST:PORT")
        return v

    @field_validator("stream")
    @classmethod
    def _stream(cls, v: str) -> str:
        if not _NATS_NAME.match(v):
            raise ValueError("a stream name is letters, digits, '_' and '-'")
        return v

    @field_validator("subject")
    @classmethod
    def _subject(cls, v: str) -> str:
        try:
            probe = v.format(server="s", kind="k")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"only {{server}} and {{kind}} may be used: {exc}") from None
        tokens = probe.split(".")
        if any(not t or any(c in t for c in " \t*>") for t in tokens):
            raise ValueError("must be dot-separated tokens without spaces or wildcards")
        return v

    @field_validator("creds_file")
    @classmethod
    def _creds(cls, v: str | None) -> str | None:
        if v is not None and not os.access(v, os.R_OK):
            raise ValueError(f"{v!r} does not exist or is not readable")
        return v


class SinkConfig(Section):
    type: Literal["http", "otlp", "nats", "file", "stdout"] = "http"
    url: str = "http://127.0.0.1:8765/api/v1/agent/events"
    headers: dict[str, str] = Field(default={}, description="http and otlp: extra request headers")
    otlp: OtlpConfig = OtlpConfig()
    nats: NatsConfig = NatsConfig()
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
        default=1, ge=1, le=9,
        description="deflate level of request bodies, and of batches as they are spooled (with ISA-L, "
        "installed on x86-64 and arm64, levels 2-3 give its level 2 and 4-9 its level 3)",
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

    @field_validator("token_file")
    @classmethod
    def _token_file(cls, v: str | None) -> str | None:
        """The file exists, others do not control it (agent.tokenfile) and its token can be sent."""
        if v is None:
            return v
        shown = v if v.isprintable() and len(v) <= 256 else clip(v)
        try:
            is_file = stat.S_ISREG(os.stat(v).st_mode)
        except FileNotFoundError:
            is_file = False
        except (OSError, ValueError) as exc:  # a name too long, a NUL byte, a loop of links
            raise ValueError(f"{shown} cannot be used: {getattr(exc, 'strerror', None) or exc}") from None
        if not is_file:
            raise ValueError(f"{shown} does not exist or is not a file")
        if not os.access(v, os.R_OK):
            raise ValueError(f"{shown} is not readable")
        check_token_file(v)
        try:
            read_token(v)
        except OSError as exc:
            raise ValueError(f"{shown} cannot be read: {exc.strerror}") from None
        except TokenError as exc:
            raise ValueError(f"{shown}: {exc}") from None
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if any(c in value for c in "\r\n\0") or len(value) > 8192:
                raise ValueError(f"the value of {name!r} holds a line break or NUL, or is over 8192 characters")
        return v

    @model_validator(mode="after")
    def _needs(self) -> SinkConfig:
        if self.type == "file" and not self.path:
            raise ValueError("sink.type 'file' needs 'path'")
        return self

    def token(self) -> str | None:
        """The bearer token read from ``token_file`` (stripped), or None. Raises OSError, or
        :class:`~agent.tokenfile.TokenError` for content that cannot be sent."""
        if not self.token_file:
            return None
        return read_token(self.token_file)

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
        return (
            self.type in ("http", "otlp")
            and bool(self.token_file)
            and self.url.startswith("http://")
            and not self.is_local()
        )

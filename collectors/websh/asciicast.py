"""Writes a session as an asciicast v2 file (``--record-io``), bounded in size."""

from __future__ import annotations

import codecs
import os
import time
from typing import Any

import orjson

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
TRUNCATED_NOTICE = "\r\n[alpacon-agent: recording stopped, size cap reached]\r\n"


class AsciicastWriter:
    """Header line, then ``[seconds, "o"|"i"|"r", text]`` lines; stops at ``max_bytes``."""

    def __init__(
        self,
        path: str,
        width: int,
        height: int,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        env: dict[str, str] | None = None,
        title: str | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.capped = False
        self._t0 = time.monotonic()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._f = os.fdopen(fd, "wb", buffering=65536)
        self._out = codecs.getincrementaldecoder("utf-8")("replace")
        self._in = codecs.getincrementaldecoder("utf-8")("replace")
        header: dict[str, Any] = {"version": 2, "width": width, "height": height, "timestamp": int(time.time())}
        if env:
            header["env"] = env
        if title:
            header["title"] = title
        self.size = 0
        self._write(orjson.dumps(header) + b"\n")

    def _write(self, line: bytes) -> None:
        self._f.write(line)
        self.size += len(line)

    def _event(self, code: str, text: str) -> None:
        if self.capped or not text:
            return
        line = orjson.dumps([round(time.monotonic() - self._t0, 6), code, text]) + b"\n"
        if self.size + len(line) > self.max_bytes:
            self.capped = True
            self._write(orjson.dumps([round(time.monotonic() - self._t0, 6), "o", TRUNCATED_NOTICE]) + b"\n")
            return
        self._write(line)

    def output(self, data: bytes) -> None:
        """Output the user saw."""
        self._event("o", self._out.decode(data))

    def input(self, data: bytes) -> None:
        """Input the user typed (only called while the terminal echoes)."""
        self._event("i", self._in.decode(data))

    def resize(self, width: int, height: int) -> None:
        self._event("r", f"{width}x{height}")

    def close(self) -> None:
        self._event("o", self._out.decode(b"", final=True))
        self._f.close()

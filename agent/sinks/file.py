"""Local sinks: JSON lines in a file (one event per line) or on standard output."""

from __future__ import annotations

import asyncio
import os
import sys

import orjson

from agent.errors import RetryableShipError


def _lines(payload: bytes) -> bytes:
    batch = orjson.loads(payload)
    return b"".join(orjson.dumps(e) + b"\n" for e in batch["events"])


class FileSink:
    """Appends each event as a JSON line and fsyncs before acknowledging."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _write(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    async def send(self, batch_id: str, payload: bytes, n_events: int) -> None:
        data = _lines(payload)
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._write, data)
        except OSError as exc:
            raise RetryableShipError(f"writing {self.path}: {exc}") from exc

    async def close(self) -> None:
        return None


class StdoutSink:
    """Writes each event as a JSON line to standard output."""

    async def send(self, batch_id: str, payload: bytes, n_events: int) -> None:
        try:
            sys.stdout.buffer.write(_lines(payload))
            sys.stdout.buffer.flush()
        except OSError as exc:
            raise RetryableShipError(f"writing to stdout: {exc}") from exc

    async def close(self) -> None:
        return None

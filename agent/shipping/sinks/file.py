"""Local sinks: JSON lines in a file (one event per line) or on standard output."""

from __future__ import annotations

import asyncio
import os
import sys

import orjson

from agent.shipping.retry import SendOutcome


def _lines(document: bytes) -> bytes:
    batch = orjson.loads(document)
    return b"".join(orjson.dumps(e) + b"\n" for e in batch["events"])


class _LocalSink:
    """What the local sinks share: they take the wire document as it is and have no credentials."""

    #: documents are taken uncompressed
    gzip_level: int | None = None

    def encode(self, document: bytes) -> bytes:
        return document

    async def send(self, batch_id: str, document: bytes, n_events: int) -> SendOutcome:
        return await self.send_encoded(batch_id, document, n_events)

    async def send_encoded(self, batch_id: str, body: bytes, n_events: int) -> SendOutcome:
        raise NotImplementedError

    def reload_token(self) -> None:
        return None

    async def close(self) -> None:
        return None


class FileSink(_LocalSink):
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

    async def send_encoded(self, batch_id: str, body: bytes, n_events: int) -> SendOutcome:
        data = _lines(body)
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._write, data)
        except OSError as exc:
            return SendOutcome.no_answer(f"writing {self.path}: {exc}")
        return SendOutcome.stored()


class StdoutSink(_LocalSink):
    """Writes each event as a JSON line to standard output."""

    async def send_encoded(self, batch_id: str, body: bytes, n_events: int) -> SendOutcome:
        try:
            sys.stdout.buffer.write(_lines(body))
            sys.stdout.buffer.flush()
        except OSError as exc:
            return SendOutcome.no_answer(f"writing to stdout: {exc}")
        return SendOutcome.stored()

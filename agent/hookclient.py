"""Client side of the hook API: JSON lines over the agent's Unix socket.

Protocol (one JSON object per line, each way; answers come in request order):

    -> {"op": "emit", "kind": "webftp_transfer", "data": {...}, "ts": "…", "id": "…", "ref": 7}
    <- {"status": "ok", "id": "ev-…", "ref": 7}
    <- {"status": "invalid" | "busy" | "denied" | "error", "reason": "…", "ref": 7}

``op`` defaults to ``emit``; ``ts``, ``id`` and ``ref`` are optional. A producer that may
resend (a recorder's durable queue) passes its own deterministic ``id`` so that a resend is
stored once. ``ok`` means durably spooled. Producers may pipeline many requests before
reading answers. Other ops (``exec`` …) are served by components that register them.
"""

from __future__ import annotations

import asyncio
import select
import socket
from collections.abc import Iterable
from typing import Any

import orjson

from agent.errors import HookClientError

DEFAULT_SOCKET = "/run/alpacon-agent/hook.sock"


def _encode(msg: dict[str, Any]) -> bytes:
    return orjson.dumps(msg) + b"\n"


class HookClient:
    """A blocking client: fine for command-line tools and recorders (no event loop needed)."""

    def __init__(self, path: str = DEFAULT_SOCKET, timeout: float | None = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def connect(self) -> HookClient:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except OSError as exc:
            s.close()
            raise HookClientError(f"cannot connect to {self.path}: {exc}") from exc
        self._sock = s
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> HookClient:
        return self.connect() if self._sock is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _readline(self) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buf:
            try:
                chunk = self._sock.recv(65536)
            except OSError as exc:
                raise HookClientError(f"reading from {self.path}: {exc}") from exc
            if not chunk:
                raise HookClientError("the agent closed the connection")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return orjson.loads(line)

    def _closed_by_agent(self) -> bool:
        """Whether the agent has closed this connection (it closes idle ones: hook.idle_timeout_s)."""
        assert self._sock is not None
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
            return bool(readable) and not self._buf and self._sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def request_many(self, messages: Iterable[dict[str, Any]], window: int = 512) -> list[dict[str, Any]]:
        """Send messages pipelined (at most ``window`` unanswered) and return their answers in order.
        A connection the agent closed while it was idle is opened again first."""
        if self._sock is not None and self._closed_by_agent():
            self.close()
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        answers: list[dict[str, Any]] = []
        pending = 0
        try:
            for msg in messages:
                self._sock.sendall(_encode(msg))
                pending += 1
                if pending >= window:
                    answers.append(self._readline())
                    pending -= 1
            while pending:
                answers.append(self._readline())
                pending -= 1
        except OSError as exc:
            raise HookClientError(f"writing to {self.path}: {exc}") from exc
        return answers

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Send one message and wait for its answer."""
        return self.request_many([msg])[0]

    def emit(self, kind: str, data: dict[str, Any], *, ts: str | None = None, id: str | None = None) -> dict[str, Any]:
        """Emit one event and return the agent's answer."""
        msg: dict[str, Any] = {"op": "emit", "kind": kind, "data": data}
        if ts is not None:
            msg["ts"] = ts
        if id is not None:
            msg["id"] = id
        return self.request(msg)


class AsyncHookClient:
    """The same protocol for asyncio producers."""

    def __init__(self, path: str = DEFAULT_SOCKET, limit: int = 8 * 1024 * 1024) -> None:
        self.path = path
        self.limit = limit
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> AsyncHookClient:
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(self.path, limit=self.limit)
        except OSError as exc:
            raise HookClientError(f"cannot connect to {self.path}: {exc}") from exc
        return self

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = None

    async def send(self, msg: dict[str, Any]) -> None:
        assert self._writer is not None
        self._writer.write(_encode(msg))
        await self._writer.drain()

    async def send_raw(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)
        await self._writer.drain()

    async def answer(self) -> dict[str, Any]:
        assert self._reader is not None
        line = await self._reader.readline()
        if not line:
            raise HookClientError("the agent closed the connection")
        return orjson.loads(line)

    async def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        await self.send(msg)
        return await self.answer()

"""Sinks: where shipped batches go, all behind the one :class:`Sink` Protocol.

A sink is handed the wire document of a batch (or the request body it made of one, ahead of
time, with :meth:`Sink.encode`) and reports what came of the send as a
:class:`~agent.shipping.retry.SendOutcome`; it never raises for a failed send. The shipper
turns the outcome into a decision with :func:`~agent.shipping.retry.decide`.
"""

from __future__ import annotations

from typing import Protocol

from agent.config import AgentConfig
from agent.shipping.retry import SendOutcome


class Sink(Protocol):
    @property
    def gzip_level(self) -> int | None:
        """The gzip level the sink takes wire documents in (the shipper then makes the body
        straight from a deflate-spooled batch); None: it needs the document, see :meth:`encode`."""
        ...

    def encode(self, document: bytes) -> bytes:
        """The request body for a wire document; thread-safe (the shipper calls it in a thread)."""
        ...

    async def send(self, batch_id: str, document: bytes, n_events: int) -> SendOutcome:
        """Send a batch's wire document."""
        ...

    async def send_encoded(self, batch_id: str, body: bytes, n_events: int) -> SendOutcome:
        """Send a body made by :meth:`encode` (or, with a :attr:`gzip_level`, a gzip wire document)."""
        ...

    def reload_token(self) -> None:
        """Read the credentials again (the backend refused them; the file may have been rotated)."""
        ...

    async def close(self) -> None: ...


def build_sink(cfg: AgentConfig, version: str) -> Sink:
    """The sink the config names."""
    match cfg.sink.type:
        case "http":
            from agent.shipping.sinks.http import HttpSink

            return HttpSink(cfg.sink, version)
        case "file":
            from agent.shipping.sinks.file import FileSink

            assert cfg.sink.path is not None
            return FileSink(cfg.sink.path)
        case _:
            from agent.shipping.sinks.file import StdoutSink

            return StdoutSink()

"""Sinks: where shipped batches go. Each has one method, ``send(batch_id, payload, n_events)``,
that returns when the batch is stored and raises an :mod:`agent.errors` ShipError otherwise."""

from __future__ import annotations

from typing import Protocol

from agent.config import AgentConfig


class Sink(Protocol):
    async def send(self, batch_id: str, payload: bytes, n_events: int) -> None: ...

    async def close(self) -> None: ...


def build_sink(cfg: AgentConfig, version: str) -> Sink:
    """The sink the config names."""
    match cfg.sink.type:
        case "http":
            from agent.sinks.http import HttpSink

            return HttpSink(cfg.sink, version)
        case "file":
            from agent.sinks.file import FileSink

            assert cfg.sink.path is not None
            return FileSink(cfg.sink.path)
        case _:
            from agent.sinks.file import StdoutSink

            return StdoutSink()

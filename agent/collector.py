"""The collector contract: a source reads its data and hands it on with ``await ctx.emit(...)``.

A collector is a small class built from its config section and a :class:`CollectorContext`;
the service runs ``await collector.run()`` as a task and cancels it on stop.

- Pull sources (journald, files) pass a :class:`~agent.typing.Checkpoint` with each emit;
  it is committed in the same SQLite transaction as the batch holding those events, and
  ``ctx.checkpoint(source)`` returns the last committed position on start.
- ``await ctx.emit`` blocks while the spool is full: the source simply stops reading.
- In one-shot mode (``ctx.once``) ``run()`` returns once the source is read to its current end.
- Events must carry a deterministic ``id`` (``agent.events.stable_id``) when they come from a
  position that can be re-read; the pipeline assigns one otherwise.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

import structlog

from agent.typing import Checkpoint, Emit, Event, Item


@dataclass
class CollectorContext:
    """What the service gives each collector."""

    server: str
    emit_fn: Emit
    checkpoints: dict[str, str] = field(default_factory=dict)
    once: bool = False
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    log: Any = field(default_factory=lambda: structlog.get_logger("collector"))
    #: set by the service: records a named internal event as a metric (``count("gap", source=…)``)
    counter: Any = None
    #: extra objects some collectors need (hook server for ops, the config, the state dir)
    services: dict[str, Any] = field(default_factory=dict)

    #: set by the service: the fast path for hot sources (see Batcher.emit_prepared)
    emit_prepared_fn: Any = None
    #: set by the service: a callable returning the pipeline's Prepared settings
    prepared_fn: Any = None

    async def emit(self, events: list[Event], checkpoint: Checkpoint | None = None) -> None:
        """Hand events (and the source position after them) to the pipeline; waits while the spool is full."""
        await self.emit_fn(events, checkpoint)

    async def emit_prepared(self, items: list[Item], checkpoint: Checkpoint | None = None) -> None:
        """Hand finished events as ``(kind, JSON)`` to the pipeline (hot sources only; see
        ``agent.pipeline.Batcher.emit_prepared`` for what the collector must have done)."""
        await self.emit_prepared_fn(items, checkpoint)

    def prepared(self) -> Any:
        """Server name, redaction and filter for building finished events (``agent.pipeline.Prepared``)."""
        return self.prepared_fn()

    def checkpoint(self, source: str) -> str | None:
        """The last committed position of ``source``, or None when it was never read."""
        return self.checkpoints.get(source)

    def count(self, name: str, n: int = 1, **labels: str) -> None:
        """Count a named internal event (gap, truncated line, parse failure …) as a metric."""
        if self.counter is not None:
            self.counter(name, n, **labels)


class ReaderThread:
    """A collector's one thread for blocking reads, running calls in order. It is made on first
    use, so that a collector the service runs again after ``close`` (a crash) gets a new one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor: ThreadPoolExecutor | None = None

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def close(self, last: Callable[[], Any]) -> None:
        """Run ``last`` (closing what the thread opened) after the calls before it, then let the
        thread go; nothing when it was never used."""
        if self._executor is None:
            return
        try:
            await self.call(last)
        finally:
            self._executor.shutdown(wait=False)
            self._executor = None


class Collector(abc.ABC):
    """Base of every collector. Subclasses set ``name`` and implement ``run``."""

    name: ClassVar[str]

    def __init__(self, config: Any, ctx: CollectorContext) -> None:
        self.config = config
        self.ctx = ctx
        self.log = structlog.get_logger(f"collector.{self.name}")

    @abc.abstractmethod
    async def run(self) -> None:
        """Read the source and emit; return only in one-shot mode or when the source is done."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources (files, readers) after ``run`` ends or is cancelled."""

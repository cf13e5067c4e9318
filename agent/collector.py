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
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
import structlog

from agent.pipeline.encode import Prepared, merge_derived
from agent.typing import Checkpoint, Counter, Deriver, Emit, EmitItems, Event, HookOp, Item, LineGate

log = structlog.get_logger("collector")


@dataclass
class CollectorContext:
    """What the service gives each collector: where its events go and what it may read.

    ``emit_items`` and ``prepared`` are the fast path (``agent.pipeline.encode``), set for each
    collector by the service; without them (tests, tools) finished events are decoded and
    emitted plainly, with the chain's settings of a bare pipeline."""

    server: str
    emit_fn: Emit
    checkpoints: dict[str, str] = field(default_factory=dict)
    once: bool = False
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    #: records a named internal event as a metric (``count("gap", source=…)``)
    counter: Counter | None = None
    #: where a collector keeps its own state (the commands collector's ``commands.db``)
    state_dir: str = "."
    #: what makes audit events from log lines, and the pre-check of lines for them
    derivers: Sequence[Deriver] = ()
    line_gate: LineGate | None = None
    #: the fast path for hot sources (see ``Batcher.emit_prepared``)
    emit_prepared_fn: EmitItems | None = None
    #: the pipeline's current settings for the fast path (``Batcher.prepared``)
    prepared_fn: Callable[[], Prepared] | None = None
    #: the source read to its end after a backlog (``Batcher.caught_up``)
    caught_up_fn: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        if self.derivers and self.line_gate is None:
            raise ValueError("derivers need their line gate (collectors.derivers.line_gate)")

    async def emit(self, events: list[Event], checkpoint: Checkpoint | None = None) -> None:
        """Hand events (and the source position after them) to the pipeline; waits while the spool is full."""
        await self.emit_fn(events, checkpoint)

    async def emit_items(self, items: list[Item], checkpoint: Checkpoint | None = None) -> None:
        """Hand finished events as ``(kind, JSON, n)`` items and the position after them to the
        pipeline in one call (hot sources; see ``agent.pipeline.encode``); decoded for a plain
        ``emit`` when there is no fast path."""
        if self.emit_prepared_fn is not None:
            await self.emit_prepared_fn(items, checkpoint)
        else:
            await self.emit([ev for _, blob, n in items
                             for ev in (orjson.loads(b"[" + blob + b"]") if n > 1 else (orjson.loads(blob),))],
                            checkpoint)

    def caught_up(self) -> None:
        """Say that the source has just read to its end after a backlog: the events buffered for
        a batch go now instead of at the batch's deadline (``Batcher.caught_up``)."""
        if self.caught_up_fn is not None:
            self.caught_up_fn()

    def prepared(self) -> Prepared:
        """Server name, redaction and filter for building finished events (follows reloads)."""
        if self.prepared_fn is not None:
            return self.prepared_fn()
        return Prepared.plain(self.server)

    def with_derived(self, items: list[Item], lines: list[tuple[int, Event]], prepared: Prepared,
                     source: str) -> list[Item]:
        """``items`` with what the derivers make of ``lines`` inserted after each line
        (``agent.pipeline.encode.merge_derived``); a failing deriver is logged and counted."""

        def failed(deriver: Deriver) -> None:
            log.exception("deriver_failed", deriver=getattr(deriver, "__name__", repr(deriver)), source=source)
            self.count("deriver_failed", source=source)

        return merge_derived(items, lines, self.derivers, prepared, failed)

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

    def hook_ops(self) -> Mapping[str, HookOp]:
        """The hook API operations this collector serves, by name; the service registers them."""
        return {}

    @abc.abstractmethod
    async def run(self) -> None:
        """Read the source and emit; return only in one-shot mode or when the source is done."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources (files, readers) after ``run`` ends or is cancelled."""

"""Contract types named once: what collectors emit and what the pipeline passes on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NotRequired, Protocol, TypedDict


class Event(TypedDict):
    """One audit or log record. ``id`` and ``server`` are filled in by the pipeline if absent."""

    kind: str
    ts: str
    data: dict[str, Any]
    id: NotRequired[str]
    server: NotRequired[str]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A source's position, committed in the same transaction as the batch that holds its events.

    ``source`` is a stable key (``journald:/var/log/journal``, ``file:/var/log/syslog``);
    ``position`` is opaque text the collector knows how to resume from (a cursor, JSON …).
    """

    source: str
    position: str


#: A finished item of the fast path (``emit_prepared``): ``(kind, JSON, n)`` where the JSON is
#: ``n`` complete events of that kind joined by commas (n = 1: one event object).
Item = tuple[str, bytes, int]

#: A processor of the pipeline's chain: returns the (possibly changed) event or raises DropEvent.
Processor = Callable[[Event], Event]

#: How a collector hands events to the pipeline. Awaiting it applies back-pressure:
#: it returns once the events are accepted (buffered toward the spool), and waits
#: while the spool is full, so a pull source stops reading and its data stays where it is.
Emit = Callable[[list[Event], Checkpoint | None], Awaitable[None]]

#: How a hot source hands finished events (``(kind, JSON, n)`` items, see ``agent.pipeline.encode``)
#: and the position after them to the pipeline; waits like :data:`Emit`.
EmitItems = Callable[[list[Item], Checkpoint | None], Awaitable[None]]

#: A deriver: audit events made from one ``system_log`` event (see ``collectors.derivers``).
Deriver = Callable[[Event], list[Event]]


class LineGate(Protocol):
    """A cheap pre-check of log lines for the derivers: False when no deriver can use the line."""

    def __call__(self, program: str, message: str) -> bool: ...

    def wants_any(self, programs: set[bytes], messages: bytes) -> bool:
        """Whether any line of a block passes: ``programs`` their programs (UTF-8), ``messages``
        their messages joined by newlines."""
        ...


class Counter(Protocol):
    """Records a named internal event as a metric: ``count("gap", 1, source=…)``."""

    def __call__(self, name: str, n: int = 1, **labels: str) -> None: ...


class HookOp(Protocol):
    """A hook API operation: ``handler(message, peer) -> answer`` (see ``agent.hook``)."""

    def __call__(self, msg: dict[str, Any], peer: Any) -> Awaitable[dict[str, Any]]: ...

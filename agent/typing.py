"""Contract types named once: what collectors emit and what the pipeline passes on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict


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

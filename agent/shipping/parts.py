"""What the shipper hands around while a batch is on its way: the batch or a part split off it,
and the events it sends to the dead letters (a refusal, or a copy after a partial success)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import orjson

from agent.shipping.retry import RetryAction
from agent.spool import NewBatch, SpoolBatch


@dataclass(frozen=True, slots=True)
class Part:
    """A batch, or a part of one split off after a 413, on its way to the sink."""

    batch_id: str
    body: NewBatch | SpoolBatch
    n_events: int
    priority: int
    spooled_at: float


@dataclass(frozen=True, slots=True)
class Refused:
    """Events for the dead letters; ``copy``: the backend stored them too (a partial success)."""

    part: NewBatch
    reason: str
    status: int | None
    copy: bool = False


def partial_refusal(part: Part, action: RetryAction) -> Refused:
    """The dead letter of a partial success: the refused events where the backend named them,
    else a copy of the whole part (its stored events are harmless replays if requeued)."""
    if action.rejected_ids:
        ids = set(action.rejected_ids)
        events = [e for e in orjson.loads(part.body.json()) if e.get("id") in ids]
        if events:
            return Refused(part_batch(f"{part.batch_id}.rejected", events, part.priority), action.reason,
                            action.status)
    return Refused(events_part(part), action.reason, action.status, copy=True)

def events_part(part: Part) -> NewBatch:
    """The part as a dead letter: its events re-encoded, or its body as stored when unreadable."""
    try:
        return part_batch(part.batch_id, orjson.loads(part.body.json()), part.priority)
    except (zlib.error, ValueError):
        return as_stored(part)

def as_stored(part: Part) -> NewBatch:
    b = part.body
    return NewBatch(part.batch_id, part.priority, part.n_events, dict(b.kinds), b.body, b.codec, b.raw_bytes, b.crc)

def part_batch(batch_id: str, events: list[dict[str, Any]], priority: int) -> NewBatch:
    kinds: dict[str, int] = {}
    for e in events:
        k = e.get("kind", "unknown")
        kinds[k] = kinds.get(k, 0) + 1
    return NewBatch(batch_id, priority, len(events), kinds, orjson.dumps(events))

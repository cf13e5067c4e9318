"""The pipeline's processors, enrich -> filter -> redact -> validate, and the chain built from a config.

Processors are small callables ``(event) -> event``; a filter raises :class:`DropEvent`,
which only the chain's loop catches (and counts). :func:`build_chain` names each processor
(:class:`Chain`), so that the batcher and the fast path (``agent.pipeline.encode``) reach the
one they need by name and use the same objects the chain runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from agent.config import LEVELS, AgentConfig
from agent.errors import DropEvent, InvalidEvent
from agent.events import KINDS, new_id
from agent.pipeline.redact import Redactor
from agent.schema import SchemaError, validate_data, validate_event
from agent.typing import Event, Processor


class Enrich:
    """Adds ``server`` and, where the source gave none, a fresh ``id``."""

    def __init__(self, server: str) -> None:
        self.server = server

    def __call__(self, event: Event) -> Event:
        event["server"] = self.server
        if "id" not in event:
            event["id"] = new_id()
        return event


class Filter:
    """Drops configured kinds and system logs below the minimum level."""

    def __init__(self, drop_kinds: Iterable[str] = (), min_level: str = "debug") -> None:
        self.drop_kinds = frozenset(drop_kinds)
        self.max_rank = LEVELS.index(min_level)
        self._rank = {lvl: i for i, lvl in enumerate(LEVELS)}

    def reason(self, kind: str, level: str | None = None) -> str | None:
        """Why an event of this kind (and ``system_log`` level) is dropped (``kind``, ``level``),
        or None when it is kept. An unknown or missing level counts as the most severe."""
        if kind in self.drop_kinds:
            return "kind"
        if kind == "system_log" and self._rank.get(level or "", 0) > self.max_rank:
            return "level"
        return None

    def keeps(self, kind: str, level: str | None = None) -> bool:
        """Whether an event of this kind (and ``system_log`` level) passes the filter."""
        return self.reason(kind, level) is None

    def __call__(self, event: Event) -> Event:
        kind = event["kind"]
        why = self.reason(kind, event["data"].get("level") if kind == "system_log" else None)
        if why is not None:
            raise DropEvent(why)
        return event


class Validate:
    """Checks an event against the wire schema, so that a batch is never refused for one bad event."""

    _TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
    _ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{7,127}")

    def __call__(self, event: Event) -> Event:
        # the envelope by hand (the same rules as the schema's, several times cheaper), then
        # the kind's data by the schema; anything unusual goes through the full check
        ts, ev_id, kind = event.get("ts"), event.get("id"), event.get("kind")
        simple = (
            len(event) == 5
            and type(ts) is str
            and type(ev_id) is str
            and kind in KINDS
            and self._TS.fullmatch(ts) is not None
            and self._ID.fullmatch(ev_id) is not None
            and type(event.get("server")) is str
            and 0 < len(event["server"]) <= 256
        )
        try:
            if simple:
                validate_data(str(kind), event["data"])
            else:
                validate_event(event)
        except SchemaError as exc:
            raise InvalidEvent(str(exc)) from None
        return event


@dataclass(frozen=True)
class Chain:
    """The processors in the order they run, and each by name.

    ``push`` is the chain of the hook API's lane: without validation, since the hook server
    validates what it accepts before submitting."""

    processors: tuple[Processor, ...]
    push: tuple[Processor, ...]
    enrich: Enrich | None = None
    filter: Filter | None = None
    redactor: Redactor | None = None
    validate: Validate | None = None

    @classmethod
    def of(cls, processors: Sequence[Processor]) -> Chain:
        """A chain of arbitrary processors (tests, tools): each runs on both lanes, none is named."""
        return cls(tuple(processors), tuple(processors))

    def __iter__(self) -> Iterator[Processor]:
        return iter(self.processors)

    def __len__(self) -> int:
        return len(self.processors)


def build_chain(cfg: AgentConfig) -> Chain:
    """The processor chain for a config."""
    r = cfg.redact
    enrich = Enrich(cfg.server)
    filt = Filter(cfg.filter.drop_kinds, cfg.filter.min_level)
    redactor = Redactor(r.patterns, builtin=r.builtin, replacement=r.replacement)
    validate = Validate()
    return Chain((enrich, filt, redactor, validate), (enrich, filt, redactor), enrich, filt, redactor, validate)

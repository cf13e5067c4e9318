"""The benchmark sink of ``--mode count``: counts events per kind, duplicate ids and per-source
``seq=N`` gaps without storing anything."""

from __future__ import annotations

import gc
import re
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from typing import Any

from receiver.errors import IngestError

# "seq=" is a literal prefix on purpose: a leading ``\b`` makes the regex engine try every
# position and costs this sink ten times more per batch
_SEQ_RE = re.compile(r"(?:\bsrc=(\S+)\s+)?seq=(\d+)")
_SEQ_NUM_RE = re.compile(r"seq=(\d+)")
_ID, _KIND, _DATA = itemgetter("id"), itemgetter("kind"), itemgetter("data")


@dataclass
class SourceSeq:
    """Sequence numbers seen from one source (``seq=N`` in event messages)."""

    received: int = 0
    out_of_order: int = 0
    last: int = -1
    seen: set[int] = field(default_factory=set)
    #: the smallest number seen (kept as they come: ``stats`` is polled while millions arrive)
    lo: int | None = None

    def add(self, n: int) -> None:
        self.received += 1
        if n < self.last:
            self.out_of_order += 1
        self.last = max(self.last, n)
        self.lo = n if self.lo is None else min(self.lo, n)
        self.seen.add(n)

    def add_many(self, ns: list[int]) -> None:
        last, ooo = self.last, 0
        if ns and ns[0] >= last and ns == sorted(ns):  # in order, the common case: no loop
            last = ns[-1]
        else:
            for n in ns:
                if n < last:
                    ooo += 1
                else:
                    last = n
        self.received += len(ns)
        self.out_of_order += ooo
        self.last = last
        if ns:
            low = min(ns)
            self.lo = low if self.lo is None else min(self.lo, low)
        self.seen.update(ns)

    def summary(self) -> dict[str, int]:
        distinct = len(self.seen)
        lo = self.lo if self.lo is not None else 0
        hi = self.last  # the largest seen: ``last`` only ever grows
        return {
            "received": self.received,
            "distinct": distinct,
            "duplicates": self.received - distinct,
            "min": lo,
            "max": hi,
            "missing": (hi - lo + 1) - distinct,
            "out_of_order": self.out_of_order,
        }


class CountSink:
    """The benchmark sink: counts events per kind, duplicate ids and per-source sequence gaps."""

    def __init__(self) -> None:
        self.by_kind: dict[str, int] = {}
        self.received = 0
        self.duplicates = 0
        self.ids: set[str] = set()
        self.sources: dict[str, SourceSeq] = {}
        self._keep_out_of_gc()

    @staticmethod
    def _keep_out_of_gc() -> None:
        """The sets here grow to millions of entries and hold no reference cycles, but every full
        collection walks them (and the parsed batches trigger many): freezing them moves them
        out of the collector's generations for good, their later entries included."""
        gc.freeze()

    def _source(self, key: str) -> SourceSeq:
        src = self.sources.get(key)
        if src is None:
            src = self.sources[key] = SourceSeq()
            self._keep_out_of_gc()
        return src

    def add(self, batch: Any) -> tuple[int, int]:
        if not isinstance(batch, dict) or not isinstance(batch.get("events"), list):
            raise IngestError(400, "schema: events: must be a list")
        fast = self._add_uniform(batch["events"])
        if fast is not None:
            return fast
        return self._add_each(batch["events"])

    def _add_uniform(self, events: list[Any]) -> tuple[int, int] | None:
        """The common batch — new ids, one kind and server, at most one ``seq=`` per message and no
        ``src=`` — counted with whole-batch operations (this sink must cost far less than the
        agent it measures); None when the batch is anything else, for the per-event path."""
        try:  # map() over C callables: one pass each, no Python frame per event
            ids = list(map(_ID, events))
            kinds = set(map(_KIND, events))
            servers = set(map(dict.get, events, repeat("server")))
            msgs: list[Any] = list(map(dict.get, map(_DATA, events), repeat("message")))
        except (TypeError, KeyError):
            return None
        if len(kinds) != 1 or len(servers) != 1 or set(map(type, ids)) != {str} or set(map(type, msgs)) != {str}:
            return None
        fresh = set(ids)
        if len(fresh) != len(ids) or not self.ids.isdisjoint(fresh):
            return None  # duplicates: counted one by one
        joined = "\x00".join(msgs)
        seqs = _SEQ_NUM_RE.findall(joined)
        if "src=" in joined or len(seqs) != sum(map(str.__contains__, msgs, repeat("seq="))):
            return None
        self.ids |= fresh
        kind = str(next(iter(kinds)))
        self.received += len(ids)
        self.by_kind[kind] = self.by_kind.get(kind, 0) + len(ids)
        if seqs:
            src = self._source(f"{next(iter(servers))}/{kind}")
            src.add_many(list(map(int, seqs)))
        return len(ids), 0

    def _add_each(self, events: list[Any]) -> tuple[int, int]:
        stored = 0
        for i, ev in enumerate(events):
            if not isinstance(ev, dict) or not isinstance(ev.get("id"), str):
                raise IngestError(400, f"schema: events[{i}].id: must be a string")
            self.received += 1
            if ev["id"] in self.ids:
                self.duplicates += 1
                continue
            self.ids.add(ev["id"])
            stored += 1
            kind = str(ev.get("kind"))
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
            data = ev.get("data")
            msg = data.get("message") if isinstance(data, dict) else None
            if isinstance(msg, str) and "seq=" in msg:
                m = _SEQ_RE.search(msg)
                if m:
                    key = f"{ev.get('server')}/{m.group(1) or kind}"
                    self._source(key).add(int(m.group(2)))
        return stored, len(events) - stored

    def stats(self) -> dict[str, Any]:
        return {
            "stored_by_kind": dict(self.by_kind),
            "stored": sum(self.by_kind.values()),
            "duplicates": self.duplicates,
            "sources": {k: v.summary() for k, v in self.sources.items()},
        }

"""A table with a count cap and a byte cap that evicts its least recently used entries and counts them.

Every per-key structure a deriver keeps (sessions, open files, connections) is one of these, so
no stream of log lines — however many keys, however long each — grows a deriver past its caps.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

K = TypeVar("K")
V = TypeVar("V")

#: bookkeeping bytes counted per entry on top of its keys' and values' text
ENTRY_OVERHEAD = 96


def approx_size(*parts: Any) -> int:
    """A cheap estimate of what ``parts`` cost in memory (text length plus a fixed overhead)."""
    n = ENTRY_OVERHEAD
    for p in parts:
        if isinstance(p, str | bytes):
            n += len(p) + 48
        elif isinstance(p, tuple):
            n += approx_size(*p)
        else:
            n += 32
    return n


class BoundedTable(OrderedDict[K, V]):
    """An ``OrderedDict`` (oldest first) holding at most ``max_items`` entries and about
    ``max_bytes`` (each entry's size from ``sizeof(key, value)``). Setting an entry makes it the
    newest; past either cap the oldest entries go, each reported to ``on_evict(n)``."""

    def __init__(
        self,
        max_items: int,
        max_bytes: int,
        sizeof: Callable[[Any, Any], int] = approx_size,
        on_evict: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        self.max_items = max(1, max_items)
        self.max_bytes = max(1, max_bytes)
        self.sizeof = sizeof
        self.on_evict = on_evict
        self.bytes = 0
        #: entries evicted so far
        self.evicted = 0
        self._sizes: dict[Any, int] = {}

    def __setitem__(self, key: K, value: V) -> None:
        old = self._sizes.get(key, 0)
        super().__setitem__(key, value)
        self.move_to_end(key)
        size = self.sizeof(key, value)
        self._sizes[key] = size
        self.bytes += size - old
        self._evict()

    def resize(self, key: K) -> None:
        """Measure ``key``'s entry again (its value grew or shrank in place) and enforce the caps."""
        if key not in self._sizes:
            return
        size = self.sizeof(key, super().__getitem__(key))
        self.bytes += size - self._sizes[key]
        self._sizes[key] = size
        self._evict()

    def _evict(self) -> None:
        n = 0
        while len(self) > self.max_items or (self.bytes > self.max_bytes and len(self)):
            key, _ = super().popitem(last=False)
            self.bytes -= self._sizes.pop(key, 0)
            n += 1
        if n:
            self.evicted += n
            if self.on_evict is not None:
                self.on_evict(n)

    def __delitem__(self, key: K) -> None:
        super().__delitem__(key)
        self.bytes -= self._sizes.pop(key, 0)

    def pop(self, key: K, *default: Any) -> Any:
        if key in self._sizes:
            self.bytes -= self._sizes.pop(key)
        return super().pop(key, *default)

    def popitem(self, last: bool = True) -> tuple[K, V]:
        key, value = super().popitem(last=last)
        self.bytes -= self._sizes.pop(key, 0)
        return key, value

    def clear(self) -> None:
        super().clear()
        self._sizes.clear()
        self.bytes = 0


__all__ = ["BoundedTable", "approx_size"]

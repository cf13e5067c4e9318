"""The syslog file collector's compiled block reader (``_lines.c``): a block of RFC 3339 lines
(rsyslog's /var/log/syslog) made into the events the Python block path makes, in C.

It reads what the Python block path has cached (each header's fragment, each stamp's second),
asks Python for one it has not met (``StampCache.learn_head``, ``learn_second``), and refuses
a block it cannot finish alone; the Python path then reads that block.
``tests/test_syslog_fastpath.py`` holds both to the line parser's events.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import orjson

from agent.pipeline.encode import Prepared, redact_hits, segments_of
from agent.typing import Item, LineGate
from collectors.syslog.bulk import StampCache
from collectors.syslog.tail import TailedFile
from collectors.syslog.year import YearResolver

#: ``ALPACON_SYSLOG_READER=python`` makes the collector use its Python block path only
READER_ENV = "ALPACON_SYSLOG_READER"


def compiled_block_reader() -> Callable[..., Any] | None:
    """``_lines.iso_block`` where it is built (setup.py) and not turned off."""
    if os.environ.get(READER_ENV) == "python":
        return None
    try:
        from collectors.syslog import _lines  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _lines.iso_block


def block_items(read: Callable[..., Any], stamps: StampCache, years: YearResolver, t: TailedFile, block: bytes,
                at: int, prepared: Prepared, gate: LineGate | None, max_line: int, items: list[Item]) -> int | None:
    """The lines of ``block`` (at file offset ``at``) as segment items added to ``items``, and how
    many; None (nothing added) where the compiled reader cannot make them: the block is not valid
    UTF-8 or has CRs, redaction must see every message, the filter drops the level, a deriver
    reads every line, or the reader refuses the block (another shape, a header or stamp not met
    yet, a line a deriver wants)."""
    triggers, head = prepared.triggers, prepared.envelope("info")
    programs = getattr(gate, "programs", ()) if gate is not None else ()
    if triggers is None or head is None or programs is None or b"\r" in block:
        return None
    if not block.isascii():
        try:
            block.decode("utf-8")
        except UnicodeDecodeError:
            return None
    prefixes = tuple(p.encode() for p in getattr(gate, "prefixes", ())) if gate is not None else ()
    spec = (head + t.id_prefix().encode(),
            b'Z","data":{"level":"info","facility":null,"source":' + orjson.dumps(t.source_path) + b",",
            max_line, *triggers, prefixes)
    gated = (lambda prog: gate(prog, "")) if gate is not None else (lambda prog: False)
    got = read(block, at, spec, stamps.c_heads, stamps.seconds_by_zone, lambda head: stamps.learn_head(head, gated),
               stamps.learn_second)
    if got is None:
        return None
    events, hits, last_sec, last_ms = got
    if not events:
        return 0
    redact_hits(prepared, events, hits)
    # the context of a later line without a usable date, as the block path keeps it
    years.note(f"{last_sec.decode()}{last_ms.decode()}Z")
    items.extend(segments_of("system_log", events, prepared))
    return len(events)

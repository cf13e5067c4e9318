"""The one fast path: what hot sources read, turned into finished event JSON by the chain's own processors.

Journald and the syslog-file collector read far more events than the chain could take one
dict at a time. They hand over what they read — an entry's fields, or a block of lines with
their offsets — and this module builds the events' JSON with the pipeline's processors
(:class:`Prepared` holds the chain's server, filter and redaction): the envelope carries the
server and is only made for levels the filter keeps, free text goes through the redactor, and
events the collector builds as dicts (lines the fast parsers leave aside, derived events) run
through :meth:`Prepared.finish`. The result are ``(kind, JSON, n)`` items for
``Batcher.emit_prepared``; :func:`segmented` joins runs of them so that batches fill well.
The proof that this agrees with the chain is ``tests/test_syslog_fastpath.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat

import orjson

from agent.pipeline.processors import Chain, Enrich, Filter, InvalidEvent, Validate
from agent.pipeline.redact import changed_each, redact_event
from agent.typing import Deriver, Event, Item

#: what a source appends to a message it had to cut (and it sets ``data.truncated``)
TRUNCATION_MARKER = " …[truncated]"
#: control characters a JSON string must escape (the newline separates lines there)
_CTRL = bytes(range(0x0A)) + bytes(range(0x0B, 0x20))
_CTRL_RX = re.compile(b"[" + re.escape(_CTRL) + b"]")
#: parts per line in a :func:`system_log_block` parts list
_PARTS = 10
_VALIDATE = Validate()


def _escape_ctrl(m: re.Match[bytes]) -> bytes:
    return orjson.dumps(m.group().decode())[1:-1]


@dataclass(frozen=True, slots=True)
class Prepared:
    """The pipeline's settings for collectors that build finished events (``emit_prepared``)."""

    server: str
    redact: Callable[[str], str]
    filter: Filter
    #: redaction of many texts at once: ``(texts joined by newlines) -> {index: redacted}`` for
    #: the texts it changes (None: ``redact`` on each)
    redact_lines: Callable[[str], dict[int, str]] | None = None
    #: the most events and bytes a segment item should hold, so that batches fill well
    segment_events: int = 250
    segment_bytes: int = 256 * 1024
    #: redaction of many texts at once: ``texts -> {index: redacted}`` for the texts it changes
    #: (None: ``redact`` on each)
    redact_texts: Callable[[list[str]], dict[int, str]] | None = None
    #: redaction's trigger words and their rules' bits (``Redactor.trigger_words``): an ASCII text
    #: holding none of them is never changed; None: every text must go through ``redact``
    triggers: tuple[tuple[bytes, ...], tuple[int, ...], tuple[tuple[int, bytes, bytes], ...]] | None = None
    _enrich: Enrich = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_enrich", Enrich(self.server))

    @classmethod
    def of_chain(cls, named: Chain, segment_events: int, segment_bytes: int) -> Prepared:
        """The settings of a chain: its server, filter and redactor (none: nothing redacted)."""
        r = named.redactor
        return cls(named.enrich.server if named.enrich else "",
                   r.redact_text if r else _unchanged,
                   named.filter or Filter(),
                   r.changed_lines if r else _nothing_changed,
                   segment_events, segment_bytes,
                   r.changed_texts if r else _no_text_changed,
                   r.trigger_words() if r else ((), (), ()))

    @classmethod
    def plain(cls, server: str) -> Prepared:
        """Settings without a pipeline: nothing filtered or redacted."""
        return cls(server, _unchanged, Filter(), _nothing_changed, redact_texts=_no_text_changed,
                   triggers=((), (), ()))

    def accepts(self, kind: str, level: str | None = None) -> bool:
        """Whether the configured filter keeps an event of this kind (and system_log level)."""
        return self.filter.keeps(kind, level)

    def changed_lines(self, joined: str) -> dict[int, str]:
        """``{index: redacted text}`` for the lines of ``joined`` (no line holds a newline) that
        redaction changes."""
        if self.redact_lines is not None:
            return self.redact_lines(joined)
        return changed_each(self.redact, joined)

    def changed_texts(self, texts: list[str]) -> dict[int, str]:
        """``{index: redacted text}`` for the ``texts`` that redaction changes."""
        if self.redact_texts is not None:
            return self.redact_texts(texts)
        redact = self.redact
        return {i: r for i, t in enumerate(texts) if (r := redact(t)) != t}

    def envelope(self, level: str) -> bytes | None:
        """The start of a ``system_log`` event of this level up to its id's first character
        (``{"kind":…,"server":…,"id":"``), or None when the filter drops the level."""
        if not self.accepts("system_log", level):
            return None
        return b'{"kind":"system_log","server":' + orjson.dumps(self.server) + b',"id":"'

    def text(self, message: str) -> bytes:
        """A free-text field's value, redacted, as JSON."""
        return orjson.dumps(self.redact(message))

    def finish(self, event: Event) -> tuple[bytes, bool] | None:
        """One event dict through the chain: ``(JSON, schema-valid)``, or None when the filter
        drops it. For derived events and lines the fast parsers leave aside."""
        kind = event.get("kind")
        data = event.get("data")
        level = data.get("level") if kind == "system_log" and isinstance(data, dict) else None
        if not self.accepts(str(kind), level):
            return None
        event = self._enrich(event)
        if isinstance(data, dict):
            redact_event(self.redact, event)
        try:
            _VALIDATE(event)
            valid = True
        except InvalidEvent:
            valid = False
        return orjson.dumps(event, default=str), valid

    def block_texts(self, joined: bytes) -> list[bytes]:
        """The messages of a block (valid UTF-8, joined by newlines, none holding one) as the
        insides of JSON strings, redacted."""
        changed = self.changed_lines(joined.decode("utf-8"))
        escaped = joined.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        if len(escaped.translate(None, _CTRL)) != len(escaped):
            escaped = _CTRL_RX.sub(_escape_ctrl, escaped)
        texts = escaped.split(b"\n")
        for i, text in changed.items():
            texts[i] = orjson.dumps(text)[1:-1]
        return texts


def _unchanged(text: str) -> str:
    return text


def _nothing_changed(joined: str) -> dict[int, str]:
    return {}


def _no_text_changed(texts: list[str]) -> dict[int, str]:
    return {}


def system_log_block(prepared: Prepared, items: list[Item], *, level: str, id_prefix: bytes, offsets: Iterable[bytes],
                     seconds: Sequence[bytes], millis: Sequence[bytes], data_head: bytes,
                     fragments: Sequence[bytes], messages: bytes) -> None:
    """A block of ``system_log`` lines as segment items added to ``items``: line i has the id
    ``id_prefix + offsets[i]``, the ts ``seconds[i] + millis[i] + "Z"``, a data object starting with
    ``data_head`` (fields and a comma) and ``fragments[i]`` (more fields), and the message i of
    ``messages`` (see :meth:`Prepared.block_texts`). Nothing when the filter drops the level."""
    head = prepared.envelope(level)
    if head is None:
        return
    n = len(seconds)
    parts = list(chain.from_iterable(zip(
        repeat(head + id_prefix), offsets,
        repeat(b'","ts":"'), seconds, millis,
        repeat(b'Z","data":{"level":"' + level.encode() + b'",' + data_head),
        fragments,
        repeat(b',"message":"'), prepared.block_texts(messages),
        repeat(b'"}},'), strict=False)))
    step = max(1, prepared.segment_events)
    for s in range(0, n, step):
        _segment(parts, s, min(n, s + step), prepared.segment_bytes, items)


def _segment(parts: list[bytes], start: int, end: int, cap: int, items: list[Item]) -> None:
    """Lines ``start:end`` of a parts list as one item, halved while over ``cap`` bytes."""
    blob = b"".join(parts[start * _PARTS:end * _PARTS])
    if len(blob) > cap + 1 and end - start > 1:
        mid = (start + end) // 2
        _segment(parts, start, mid, cap, items)
        _segment(parts, mid, end, cap, items)
        return
    items.append(("system_log", blob[:-1], end - start))


def redact_hits(prepared: Prepared, events: list[bytes] | list[bytes | None],
                hits: list[tuple[int, int, int, str]]) -> None:
    """Redact the messages of events a compiled reader finished: each hit ``(slot, offset, length,
    message)`` says that ``events[slot][offset:offset + length]`` is the JSON of ``message``,
    which is replaced where redaction changes it."""
    if not hits:
        return
    dumps = orjson.dumps
    for i, text in prepared.changed_texts([h[3] for h in hits]).items():
        slot, at, length, _ = hits[i]
        ev = events[slot]
        assert ev is not None
        events[slot] = ev[:at] + dumps(text) + ev[at + length:]


def segments_of(kind: str, blobs: list[bytes], prepared: Prepared) -> list[Item]:
    """Single events of one kind joined into segments of ``prepared.segment_events`` (fewer
    where they would pass about ``segment_bytes``), in their order: :func:`segmented` for a
    list of event JSON, without an item per event."""
    max_events, max_bytes = max(1, prepared.segment_events), prepared.segment_bytes
    out: list[Item] = []
    join = b",".join
    for i in range(0, len(blobs), max_events):
        part = blobs[i:i + max_events]
        if len(part) == 1:
            out.append((kind, part[0], 1))
        elif sum(map(len, part)) + len(part) <= max_bytes:
            out.append((kind, join(part), len(part)))
        else:
            out.extend(segmented([(kind, b, 1) for b in part], prepared))
    return out


def segmented(items: list[Item], prepared: Prepared) -> list[Item]:
    """``items`` with runs of single events of one kind joined into segments (at most
    ``prepared.segment_events`` and about ``segment_bytes`` each), in their order: the pipeline
    then handles a segment where it would have handled each of its events."""
    out: list[Item] = []
    run: list[bytes] = []
    run_kind = ""
    size = 0
    max_events, max_bytes = max(1, prepared.segment_events), prepared.segment_bytes
    for kind, blob, n in items:
        if run and (n != 1 or kind != run_kind or len(run) >= max_events or size + len(blob) > max_bytes):
            out.append((run_kind, b",".join(run), len(run)) if len(run) > 1 else (run_kind, run[0], 1))
            run = []
            size = 0
        if n != 1:
            out.append((kind, blob, n))
            continue
        run_kind = kind
        run.append(blob)
        size += len(blob) + 1
    if run:
        out.append((run_kind, b",".join(run), len(run)) if len(run) > 1 else (run_kind, run[0], 1))
    return out


def apply_derivers(events: list[Event], derivers: Sequence[Deriver],
                   failed: Callable[[Deriver], None]) -> list[Event]:
    """Each event followed by what the derivers make of it (audit events from log lines).

    Derived events travel in the same emit (same checkpoint) as their line, so they are never
    lost or doubled; a failing deriver is reported to ``failed`` (from within its ``except``),
    and the line is still emitted.
    """
    out: list[Event] = []
    for ev in events:
        out.append(ev)
        for deriver in derivers:
            try:
                out.extend(deriver(ev))
            except Exception:
                failed(deriver)
    return out


def merge_derived(items: list[Item], derive: list[tuple[int, Event]], derivers: Sequence[Deriver],
                  prepared: Prepared, failed: Callable[[Deriver], None]) -> list[Item]:
    """``items`` with the derived events of the lines in ``derive`` inserted after their line,
    through the chain (:meth:`Prepared.finish`). ``derive`` holds ``(position, event)``: the
    number of items up to and including the line (the line itself may have been filtered out).

    The pipeline schema-checks the first item of a call and, if it fails, every item (dead-
    lettering the bad ones): a derived event that fails the schema therefore goes first. With
    ``derive`` the result is :func:`segmented` (without, the reader thread segments ``items``).
    """
    if not derive:
        return items
    out: list[Item] = []
    bad: list[Item] = []
    done = 0
    for pos, ev in derive:
        out += items[done:pos]
        done = pos
        for new in apply_derivers([ev], derivers, failed)[1:]:
            fin = prepared.finish(new)
            if fin is not None:
                (out if fin[1] else bad).append((new["kind"], fin[0], 1))
    out += items[done:]
    return segmented(bad + out if bad else out, prepared)

"""The wire document of a batch, and the compressed form batch bodies are spooled in.

A batch's events are deflated once, when it is spooled (``pack``): the spool holds a fraction
of the bytes, and sending needs no compression of the events at all. The document puts the
events first, ``{"events":[…],"schema":1,"agent":…,"batch_id":…,"sent_at":…}``, so that its
gzip form is three raw deflate streams laid end to end — the constant ``{"events":``, the
spooled body (sync-flushed, so another stream may follow it) and the fresh tail — behind a
gzip header, with a CRC-32 that continues the body's, stored beside it, over the tail.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

from agent.events import format_ts

_fast_zlib: Any
try:  # ISA-L's deflate: the same format, four times zlib's speed at level 1 (bench/pipeline.py)
    from isal import isal_zlib as _fast_zlib
except ImportError:  # pragma: no cover - zlib makes the same streams, slower
    _fast_zlib = None

EVENTS_PREFIX = b'{"events":'
PREFIX_CRC = zlib.crc32(EVENTS_PREFIX)
#: the stored forms of a batch body
CODEC_JSON = "json"
CODEC_DEFLATE = "deflate"
#: gzip member header: deflate, no name or time, unknown OS
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def _compressor(level: int) -> Any:
    """A raw deflate compressor for a batch body: ISA-L's where it is installed (its levels are
    0-3: 1 stays 1, 2-3 give 2, higher 3), else zlib's at ``level``."""
    if _fast_zlib is not None:
        return _fast_zlib.compressobj(1 if level <= 1 else 2 if level <= 3 else 3, zlib.DEFLATED, -15)
    return zlib.compressobj(level, zlib.DEFLATED, -15)


def _deflate(data: bytes, level: int, final: bool, small: bool = False) -> bytes:
    # ``small``: a 512-byte window and the least memory, for a few hundred bytes (a full-size
    # compressor costs ten times more to set up than to use on them); any inflater reads it
    c = zlib.compressobj(level, zlib.DEFLATED, -9, 1) if small else _compressor(level)
    return c.compress(data) + c.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)


_PREFIX_DEFLATED = _deflate(EVENTS_PREFIX, 1, final=False)


@dataclass(frozen=True, slots=True)
class Packed:
    """A batch body as spooled: ``data`` in ``codec``; for deflate, the JSON's length and the
    CRC-32 of ``EVENTS_PREFIX`` followed by the JSON."""

    codec: str
    data: bytes
    raw_bytes: int
    crc: int


def pack(body: bytes, level: int) -> Packed:
    """Deflate a batch's JSON array for the spool."""
    return Packed(CODEC_DEFLATE, _deflate(body, level, final=False), len(body), zlib.crc32(body, PREFIX_CRC))


def unpack(codec: str, data: bytes) -> bytes:
    """The JSON array of a spooled body."""
    if codec == CODEC_JSON:
        return data
    if codec == CODEC_DEFLATE:
        d = zlib.decompressobj(-15)
        out = d.decompress(data)
        return out + d.flush()
    raise ValueError(f"unknown batch body codec {codec!r}")


def tail(agent_json: bytes, batch_id: str, sent_at: str | None = None) -> bytes:
    """What follows the events in a document; ``sent_at`` is the time of the attempt."""
    return b"".join((b',"schema":1,"agent":', agent_json, b',"batch_id":"', batch_id.encode(),
                     b'","sent_at":"', (sent_at or format_ts()).encode(), b'"}'))


def document(agent_json: bytes, batch_id: str, events: bytes, sent_at: str | None = None) -> bytes:
    """The wire document for a batch whose events are the JSON array ``events``."""
    return b"".join((EVENTS_PREFIX, events, tail(agent_json, batch_id, sent_at)))


def gzip_document(agent_json: bytes, batch_id: str, body: Packed, level: int, sent_at: str | None = None) -> bytes:
    """The gzip form of :func:`document` for a deflate-packed body, without inflating it."""
    if body.codec != CODEC_DEFLATE:
        raise ValueError("gzip_document needs a deflate-packed body")
    end = tail(agent_json, batch_id, sent_at)
    size = (len(EVENTS_PREFIX) + body.raw_bytes + len(end)) & 0xFFFFFFFF
    return b"".join((_GZIP_HEADER, _PREFIX_DEFLATED, body.data, _deflate(end, level, final=True, small=True),
                     struct.pack("<II", zlib.crc32(end, body.crc), size)))

"""A session's asciicast recording as ``websh_recording`` events, so the backend can play it back.

The recorder writes the asciicast v2 file (``--record-io``) as the session runs; when the session
ends, the file is cut at line boundaries into chunks of at most :data:`CHUNK_BYTES` and each chunk
becomes one event, delivered through the same durable queue and spool as the session's records.
Their ids are derived from the session and the chunk number, so a replay is stored once. A
recording longer than ``max_bytes`` is shipped up to the last whole line under the cap, and its
last chunk says ``truncated``; the file on disk keeps everything.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from agent.events import format_ts, stable_id

#: the largest chunk (the schema allows 256 KiB of text per event)
CHUNK_BYTES = 192 * 1024
#: the most one session ships by default
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
#: the schema's bound on chunk numbers
MAX_CHUNKS = 4096


def _pieces(data: bytes, limit: int) -> Iterator[bytes]:
    """``data`` cut after newlines into pieces of at most ``limit`` bytes (a longer line is cut)."""
    start = 0
    while start < len(data):
        end = min(start + limit, len(data))
        if end < len(data):
            nl = data.rfind(b"\n", start, end)
            if nl >= start:
                end = nl + 1
        yield data[start:end]
        start = end


def recording_messages(path: str | os.PathLike[str], session_id: str, max_bytes: int = DEFAULT_MAX_BYTES,
                       chunk_bytes: int = CHUNK_BYTES) -> list[dict[str, Any]]:
    """The hook messages that carry the recording at ``path`` (none when it is missing or empty)."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError:
        return []
    truncated = len(data) > max_bytes
    if truncated:
        cut = data.rfind(b"\n", 0, max_bytes)
        data = data[: cut + 1] if cut >= 0 else b""
    pieces = list(_pieces(data, min(chunk_bytes, CHUNK_BYTES)))[:MAX_CHUNKS]
    ts = format_ts()
    out = []
    for seq, piece in enumerate(pieces):
        last = seq == len(pieces) - 1
        body: dict[str, Any] = {"session_id": session_id, "seq": seq, "format": "asciicast-v2",
                                "data": piece.decode("utf-8", "replace"), "final": last}
        if last and truncated:
            body["truncated"] = True
        out.append({"op": "emit", "kind": "websh_recording", "data": body, "ts": ts,
                    "id": stable_id("wsrec", session_id, seq)})
    return out

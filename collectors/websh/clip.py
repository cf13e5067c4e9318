"""Free text from a producer, cut to the schema's caps with a visible marker, before it is recorded.

The Websh runtime hands the recorder metadata (operator, browser, remote address …) it does not
bound; a value over its ``maxLength`` in ``agent/schema/batch.schema.json`` would make the whole
session record invalid, and an invalid record is parked, not shipped. :func:`clip_data` cuts
every string field of a ``data`` object to its cap instead and says which fields it cut.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from agent.schema import schema

MARKER = "…[clipped: {n} chars]"


@cache
def caps(kind: str) -> dict[str, int]:
    """``{field: maxLength}`` of the string fields of ``kind``'s data."""
    props = schema().get("$defs", {}).get(f"data_{kind}", {}).get("properties", {})
    return {name: int(p["maxLength"]) for name, p in props.items() if isinstance(p, dict) and "maxLength" in p}


def clip_text(value: str, cap: int) -> str:
    """``value`` itself when within ``cap`` characters, else its head and a marker, ``cap`` in all."""
    if len(value) <= cap:
        return value
    marker = MARKER.format(n=len(value))
    if len(marker) >= cap:
        return value[:cap]
    return value[: cap - len(marker)] + marker


def clip_data(kind: str, data: dict[str, Any]) -> list[str]:
    """Clip ``data``'s string fields to their caps in place; the names of the fields cut."""
    cut: list[str] = []
    for name, cap in caps(kind).items():
        value = data.get(name)
        if isinstance(value, str) and len(value) > cap:
            data[name] = clip_text(value, cap)
            cut.append(name)
    return cut

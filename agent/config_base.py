"""What every config section shares: the strict base model and how a bad value is shown."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

#: at most this much of a value appears in an error message
MAX_SHOWN_CHARS = 60


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are checked strictly."""

    model_config = ConfigDict(extra="forbid", strict=False, validate_default=True)


def clip(value: Any, limit: int = MAX_SHOWN_CHARS) -> str:
    """``value`` as an error may show it: a string or number cut to ``limit`` characters before
    ``repr``, a collection by its type and size. Never walks a structure."""
    if isinstance(value, str):
        return repr(value[:limit]) + ("…" if len(value) > limit else "")
    if isinstance(value, bool | int | float) or value is None:
        text = repr(value)
        return text[:limit] + ("…" if len(text) > limit else "")
    if isinstance(value, list | dict | tuple | set):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"

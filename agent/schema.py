"""The wire schema (``schema/batch.schema.json``): one file validates batches and single events
for the agent, its tests and the reference receiver."""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

import fastjsonschema

from agent.errors import SchemaError

SCHEMA_FILE = "batch.schema.json"


@functools.cache
def schema() -> dict[str, Any]:
    """The parsed JSON Schema document."""
    text = resources.files("agent").joinpath("schema", SCHEMA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def _compile(root_ref: str | None) -> Any:
    # fastjsonschema rewrites the refs of the document it is given: hand it a copy
    doc = copy.deepcopy(schema())
    if root_ref is not None:
        doc = {"$schema": doc["$schema"], "$defs": doc["$defs"], "$ref": root_ref}
    return fastjsonschema.compile(doc)


@functools.cache
def _batch_validator() -> Any:
    return _compile(None)


@functools.cache
def _event_validator() -> Any:
    # the envelope only: the per-kind data check runs once, by kind, in validate_event
    doc = copy.deepcopy(schema())
    defs = dict(doc["$defs"])
    defs["event"] = {k: v for k, v in defs["event"].items() if k != "allOf"}
    return fastjsonschema.compile({"$schema": doc["$schema"], "$defs": defs, "$ref": "#/$defs/event"})


@functools.cache
def _data_validator(kind: str) -> Any:
    return _compile(f"#/$defs/data_{kind}")


def _raise(exc: fastjsonschema.JsonSchemaValueException) -> None:
    raise SchemaError(exc.message.replace("data.", "", 1) if exc.message.startswith("data.") else exc.message) from None


def validate_batch(batch: Any) -> None:
    """Raise :class:`SchemaError` unless ``batch`` is a valid version-1 batch."""
    try:
        _batch_validator()(batch)
    except fastjsonschema.JsonSchemaValueException as exc:
        _raise(exc)


def validate_event(event: Any) -> None:
    """Raise :class:`SchemaError` unless ``event`` is a complete, valid event."""
    try:
        _event_validator()(event)
    except fastjsonschema.JsonSchemaValueException as exc:
        _raise(exc)
    # the if/then dispatch reports a data problem without saying which kind; name it
    kind = event["kind"]
    try:
        _data_validator(kind)(event["data"])
    except fastjsonschema.JsonSchemaValueException as exc:
        raise SchemaError(f"{kind}: {exc.message}") from None


def validate_data(kind: str, data: Any) -> None:
    """Raise :class:`SchemaError` unless ``data`` is valid for ``kind``."""
    from agent.events import KINDS

    if kind not in KINDS:
        raise SchemaError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    try:
        _data_validator(kind)(data)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise SchemaError(f"{kind}: {exc.message}") from None


#: how deep a producer's JSON may nest (a message, a batch's event): deeper input is refused at
#: parse time, before any code walks it recursively
MAX_JSON_DEPTH = 32


def json_depth_exceeds(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` (parsed JSON) nests objects and arrays more than ``limit`` deep (the outer
    one counts as 1). Walks with its own stack: any depth is measured without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False

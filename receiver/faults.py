"""Fault injection for the ingest endpoint: decides, per request, how the receiver misbehaves.

Faults are what a real backend does to an agent: 5xx answers, 429 with ``Retry-After``, slow
answers, connections dropped without an answer, a status forced on every request (401 while a
token is wrong, 400 while the backend rejects a schema), and "fail after store" — the batch is
stored, then answered 503 — which is how real backends cause replays. Everything except
fail-after-store happens before storing, so a faulted request stores nothing.

A ``script`` of outcomes is consumed one per request before any random draw, for tests that need
an exact sequence (``[503, "drop", 429, "ok"]``). Random draws come from one seeded generator.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from receiver.errors import FaultSettingsError

__all__ = ["Decision", "FaultInjector", "FaultSettings", "FaultSettingsError", "describe_validation_error"]

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
ErrorStatus = Annotated[int, Field(ge=400, le=599)]
ScriptStep = ErrorStatus | Literal["ok", "drop", "slow", "fail_after_store"]

MiB = 1024 * 1024


class FaultSettings(BaseModel):
    """The receiver's fault and limit settings (CLI flags at start, ``POST /api/v1/_faults`` later)."""

    model_config = ConfigDict(extra="forbid")

    error_rate: Rate = 0.0
    error_status: ErrorStatus = 503
    throttle_rate: Rate = 0.0
    retry_after: Annotated[int, Field(ge=0, le=3600)] = 1
    slow_rate: Rate = 0.0
    slow_ms: Annotated[int, Field(ge=0, le=600_000)] = 0
    drop_rate: Rate = 0.0
    force_status: ErrorStatus | None = None
    fail_after_store_rate: Rate = 0.0
    script: list[ScriptStep] = Field(default_factory=list)
    seed: int | None = None
    max_body_bytes: Annotated[int, Field(ge=1)] = 32 * MiB
    max_compressed_bytes: Annotated[int, Field(ge=1)] = 32 * MiB


def describe_validation_error(exc: ValidationError) -> str:
    """``field: why`` for each problem, joined with ``; ``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(body)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one ingest request.

    ``status`` set: answer it without storing (429 carries ``retry_after``). ``drop``: close
    the connection without an answer. ``delay_s``: wait first. ``after_store_status``: store,
    then answer this status instead of 200.
    """

    status: int | None = None
    retry_after: int | None = None
    drop: bool = False
    delay_s: float = 0.0
    after_store_status: int | None = None
    reason: str = "none"


NO_FAULT = Decision()


class FaultInjector:
    """Holds the current settings and draws a :class:`Decision` per ingest request."""

    def __init__(self, settings: FaultSettings | None = None) -> None:
        self.initial = settings or FaultSettings()
        self.settings = self.initial.model_copy(deep=True)
        self._rng = random.Random(self.settings.seed)
        self.injected: dict[str, int] = {}

    def update(self, changes: Any) -> FaultSettings:
        """Apply a JSON object of changes; ``{"reset": true}`` first restores the start settings.

        Raises :class:`FaultSettingsError` naming the bad field; the old settings stay then.
        """
        if not isinstance(changes, dict):
            raise FaultSettingsError("(body): must be a JSON object")
        changes = dict(changes)
        reset = changes.pop("reset", False)
        if not isinstance(reset, bool):
            raise FaultSettingsError("reset: must be true or false")
        base = self.initial if reset else self.settings
        merged = base.model_dump() | changes
        try:
            new = FaultSettings.model_validate(merged)
        except ValidationError as exc:
            raise FaultSettingsError(describe_validation_error(exc)) from None
        self.settings = new
        if reset or "seed" in changes:
            self._rng = random.Random(new.seed)
        return new

    def _count(self, reason: str) -> None:
        self.injected[reason] = self.injected.get(reason, 0) + 1

    def _hit(self, rate: float) -> bool:
        return rate > 0.0 and self._rng.random() < rate

    def _scripted(self, step: int | str) -> Decision:
        s = self.settings
        if step == "ok":
            return NO_FAULT
        if step == "drop":
            return Decision(drop=True, reason="drop")
        if step == "slow":
            return Decision(delay_s=s.slow_ms / 1000.0, reason="slow")
        if step == "fail_after_store":
            return Decision(after_store_status=503, reason="fail_after_store")
        assert isinstance(step, int)
        retry = s.retry_after if step in (429, 503) else None
        return Decision(status=step, retry_after=retry, reason=str(step))

    def decide(self) -> Decision:
        """The fault (if any) for the next ingest request; counts what it injects."""
        s = self.settings
        if s.script:
            d = self._scripted(s.script.pop(0))
        elif s.force_status is not None:
            d = Decision(status=s.force_status, reason=f"forced_{s.force_status}")
        elif self._hit(s.drop_rate):
            d = Decision(drop=True, reason="drop")
        elif self._hit(s.error_rate):
            d = Decision(status=s.error_status, reason=str(s.error_status))
        elif self._hit(s.throttle_rate):
            d = Decision(status=429, retry_after=s.retry_after, reason="429")
        else:
            delay = s.slow_ms / 1000.0 if self._hit(s.slow_rate) else 0.0
            after = 503 if self._hit(s.fail_after_store_rate) else None
            if after is not None:
                d = Decision(delay_s=delay, after_store_status=after, reason="fail_after_store")
            elif delay:
                d = Decision(delay_s=delay, reason="slow")
            else:
                return NO_FAULT
            if delay and after is not None:
                self._count("slow")
        if d.reason != "none":
            self._count(d.reason)
        return d

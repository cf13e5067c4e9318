"""The retry decision: a pure function from what a sink saw (a :class:`SendOutcome`) to what the
shipper does next (a :class:`RetryAction`).

Kept apart from the backoff schedule (tenacity, in the shipper) so that each is tested alone.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from enum import Enum

from agent.errors import AuthError, Rejected, RetryableShipError, ShipError, TooLarge

#: the longest a Retry-After may hold the shipper back: a hostile answer cannot park it for ever
RETRY_AFTER_CAP_S = 3600.0


class Action(Enum):
    SUCCESS = "success"
    PARTIAL = "partial"  # stored, but the backend refused part of it: a copy goes to the dead letters
    RETRY = "retry"  # connection errors, timeouts, 408, 429, 5xx: forever, with backoff
    PAUSE = "pause"  # 401/403: keep the data, shout, retry slowly
    SPLIT = "split"  # 413: halve the batch
    DEAD_LETTER = "dead_letter"  # other 4xx: the batch itself is refused


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What one send of a batch came to: the one thing every sink reports.

    ``status`` is the answer's HTTP status; sinks that do not speak HTTP answer in the same terms
    (None: no answer — connection error, timeout; 503: try later; 400: refused as it is).
    ``retry_after`` is the Retry-After header as received. ``rejected`` counts the events a
    backend refused out of a batch it otherwise stored (a partial success). ``retryable``
    overrides the status's usual meaning where a sink's protocol says otherwise (OTLP retries
    only 429, 502, 503 and 504).
    """

    status: int | None
    reason: str = ""
    retry_after: str | None = None
    rejected: int = 0
    retryable: bool | None = None

    @classmethod
    def stored(cls) -> SendOutcome:
        return cls(200)

    @classmethod
    def no_answer(cls, reason: str) -> SendOutcome:
        return cls(None, reason)


@dataclass(frozen=True, slots=True)
class RetryAction:
    """What the shipper does with a batch after one send."""

    action: Action
    reason: str = ""
    retry_after: float | None = None
    status: int | None = None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent/garbage.

    Capped at :data:`RETRY_AFTER_CAP_S` so that a hostile answer cannot park the shipper forever.
    """
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # isdigit alone accepts '²', which float() refuses
        return min(float(value), RETRY_AFTER_CAP_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    delta = when.timestamp() - (time.time() if now is None else now)
    return min(max(delta, 0.0), RETRY_AFTER_CAP_S)


def decide(outcome: SendOutcome) -> RetryAction:
    """What to do after a send that came to ``outcome``."""
    status = outcome.status
    reason = outcome.reason
    if status is None:
        return RetryAction(Action.RETRY, reason or "no answer")
    if 200 <= status < 300:
        if outcome.rejected > 0:
            return RetryAction(Action.PARTIAL, reason or f"{outcome.rejected} events rejected", None, status)
        return RetryAction(Action.SUCCESS, status=status)
    if status in (401, 403):
        return RetryAction(Action.PAUSE, reason or f"HTTP {status}", None, status)
    if status == 413:
        return RetryAction(Action.SPLIT, reason or "HTTP 413", None, status)
    retryable = outcome.retryable
    if retryable is None:
        # 1xx/3xx are not answers this protocol knows: retry, the backend may be mid-deploy
        retryable = status in (408, 429) or status >= 500 or not 400 <= status < 500
    if retryable:
        return RetryAction(Action.RETRY, reason or f"HTTP {status}", parse_retry_after(outcome.retry_after), status)
    return RetryAction(Action.DEAD_LETTER, reason or f"HTTP {status}", None, status)


def to_error(action: RetryAction) -> ShipError | None:
    """The exception for an action, for a caller that raises rather than acts (None on success)."""
    match action.action:
        case Action.SUCCESS | Action.PARTIAL:
            return None
        case Action.RETRY:
            return RetryableShipError(action.reason, action.status, action.retry_after)
        case Action.PAUSE:
            return AuthError(action.reason, action.status)
        case Action.SPLIT:
            return TooLarge(action.reason, action.status)
        case _:
            return Rejected(action.reason, action.status)

"""The retry decision: a pure function from a sink's outcome to what the shipper does next.

Kept apart from the backoff schedule (tenacity) so that each is tested alone.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from enum import Enum

from agent.errors import AuthError, Rejected, RetryableShipError, ShipError, TooLarge


class Action(Enum):
    SUCCESS = "success"
    RETRY = "retry"  # connection errors, timeouts, 408, 429, 5xx: forever, with backoff
    PAUSE = "pause"  # 401/403: keep the data, shout, retry slowly
    SPLIT = "split"  # 413: halve the batch
    DEAD_LETTER = "dead_letter"  # other 4xx: the batch itself is refused


@dataclass(frozen=True, slots=True)
class RetryAction:
    action: Action
    reason: str = ""
    retry_after: float | None = None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent/garbage.

    Capped at one hour so that a hostile answer cannot park the shipper forever.
    """
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # isdigit alone accepts '²', which float() refuses
        return min(float(value), 3600.0)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    delta = when.timestamp() - (time.time() if now is None else now)
    return min(max(delta, 0.0), 3600.0)


def decide(status: int | None, reason: str = "", retry_after: str | None = None) -> RetryAction:
    """What to do after an answer with ``status`` (None: no answer — connection error, timeout)."""
    if status is None:
        return RetryAction(Action.RETRY, reason or "no answer")
    if 200 <= status < 300:
        return RetryAction(Action.SUCCESS)
    if status in (408, 429) or 500 <= status < 600:
        return RetryAction(Action.RETRY, reason or f"HTTP {status}", parse_retry_after(retry_after))
    if status in (401, 403):
        return RetryAction(Action.PAUSE, reason or f"HTTP {status}")
    if status == 413:
        return RetryAction(Action.SPLIT, reason or "HTTP 413")
    if 400 <= status < 500:
        return RetryAction(Action.DEAD_LETTER, reason or f"HTTP {status}")
    # 1xx/3xx are not answers this protocol knows: retry, the backend may be mid-deploy
    return RetryAction(Action.RETRY, reason or f"unexpected HTTP {status}")


def to_error(action: RetryAction, status: int | None) -> ShipError | None:
    """The exception the shipper raises for an action (None on success)."""
    match action.action:
        case Action.SUCCESS:
            return None
        case Action.RETRY:
            return RetryableShipError(action.reason, status, action.retry_after)
        case Action.PAUSE:
            return AuthError(action.reason, status)
        case Action.SPLIT:
            return TooLarge(action.reason, status)
        case _:
            return Rejected(action.reason, status)

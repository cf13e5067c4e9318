"""What the running agent says about itself: to systemd (sd_notify), on ``/health`` and in STATUS=."""

from __future__ import annotations

import os
import time
from typing import Any, Protocol

import structlog

from agent import __version__
from agent.spool import SpoolStats

log = structlog.get_logger("service")


class ShippingState(Protocol):
    """What the shipper tells about its last attempts."""

    paused_reason: str | None
    last_error: str | None
    last_success: float | None


def sd_notify(message: str) -> None:
    """Send a state to systemd's NOTIFY_SOCKET (a no-op without one)."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    try:
        import systemd.daemon as daemon

        daemon.notify(message)
    except (ImportError, OSError) as exc:  # pragma: no cover - depends on the host
        log.warning("sd_notify failed", error=str(exc))


def stuck_reason(problems: dict[str, str], stalled_for: float) -> str | None:
    """Why shipping makes no progress, or None while it does: a supervised task failing (it ended
    and is being restarted) or a shipper that has not moved for longer than its waits explain."""
    if problems:
        return "; ".join(f"{task} failed: {why}" for task, why in sorted(problems.items()))
    if stalled_for > 0:
        return f"the shipper has not moved for {stalled_for:.0f} s past its longest wait"
    return None


def health_report(st: SpoolStats, shipping: ShippingState, *, agent_id: str, server: str,
                  collectors: list[str], stuck: str | None = None) -> dict[str, Any]:
    """The ``/health`` answer: ok unless the backend refuses the credentials or shipping is stuck
    (``stuck``, see :func:`stuck_reason`)."""
    return {
        "ok": shipping.paused_reason is None and stuck is None,
        "stuck": stuck,
        "version": __version__,
        "agent_id": agent_id,
        "server": server,
        "spool": {"batches": st.batches, "bytes": st.bytes, "oldest_age_s": st.oldest_age_s,
                  "dead_letters": st.dead_letters, "max_bytes": st.max_bytes},
        "last_successful_ship": shipping.last_success,
        "last_error": shipping.last_error,
        "paused": shipping.paused_reason,
        "collectors": collectors,
    }


def status_line(rate: float, spool_bytes: int, shipping: ShippingState, stuck: str | None = None) -> str:
    """systemd's STATUS= line: the event rate, the spool's size and the last shipment; first, when
    shipping is stuck, why."""
    last = shipping.last_success
    ago = f"{time.time() - last:.0f}s ago" if last else "never"
    paused = " PAUSED: backend refuses credentials" if shipping.paused_reason else ""
    line = f"{rate:.0f} events/s, spool {spool_bytes / 1048576:.1f} MiB, last ship {ago}{paused}"
    return f"STUCK: {stuck[:300]} | {line}" if stuck else line

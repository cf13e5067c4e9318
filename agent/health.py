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


def health_report(st: SpoolStats, shipping: ShippingState, *, agent_id: str, server: str,
                  collectors: list[str]) -> dict[str, Any]:
    """The ``/health`` answer: ok unless the backend refuses the credentials."""
    return {
        "ok": shipping.paused_reason is None,
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


def status_line(rate: float, spool_bytes: int, shipping: ShippingState) -> str:
    """systemd's STATUS= line: the event rate, the spool's size and the last shipment."""
    last = shipping.last_success
    ago = f"{time.time() - last:.0f}s ago" if last else "never"
    paused = " PAUSED: backend refuses credentials" if shipping.paused_reason else ""
    return f"{rate:.0f} events/s, spool {spool_bytes / 1048576:.1f} MiB, last ship {ago}{paused}"

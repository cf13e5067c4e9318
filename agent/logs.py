"""structlog configured for a service: JSON lines on stderr (journald captures them), and a
rate limit for lines an outsider can cause."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", json: bool = True) -> None:
    """Route structlog (and the standard library's logging) to stderr at ``level``."""
    lvl = _LEVELS.get(level, logging.INFO)
    logging.basicConfig(stream=sys.stderr, level=max(lvl, logging.WARNING), format="%(name)s: %(message)s")
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


class RateLimitedLog:
    """Log lines an outsider can cause (one per refused message …): at most ``burst`` at once and
    ``rate`` a second after that; the lines held back are counted in the next one written."""

    def __init__(self, logger: Any, rate: float = 10.0, burst: float = 20.0) -> None:
        self.logger = logger
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = time.monotonic()
        self.held_back = 0

    def warning(self, event: str, **fields: Any) -> bool:
        """Log ``event`` unless over the rate; True when it was written."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1:
            self.held_back += 1
            return False
        self._tokens -= 1
        if self.held_back:
            fields["lines_held_back"] = self.held_back
            self.held_back = 0
        self.logger.warning(event, **fields)
        return True

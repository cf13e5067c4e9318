"""The agent's exceptions, translated from foreign ones at one boundary each.

    AgentError
     ├── ConfigError                  bad configuration: never starts, reload keeps the old one
     ├── InputError                   bad input from a producer (hook message, log line)
     ├── SpoolFull                    the spool is at its cap: pull sources pause, pushes get "busy"
     └── ShipError                    the backend did not store a batch
          ├── RetryableShipError      connection errors, timeouts, 408, 429, 5xx: retry forever
          └── PermanentShipError      the batch itself is refused
               ├── AuthError          401/403: pause shipping, keep data, retry slowly
               ├── TooLarge           413: split the batch
               └── Rejected           other 4xx: dead-letter with the reason
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of everything the agent raises on purpose."""


class ConfigError(AgentError):
    """A configuration that does not validate; ``problems`` holds one ``path: why`` line each."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class InputError(AgentError):
    """A producer's input that cannot be accepted; the message says why."""


class SpoolFull(AgentError):
    """The spool is at its byte cap and nothing may be evicted for this data."""


class ShipError(AgentError):
    """A batch was not stored by the backend."""

    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None) -> None:
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        super().__init__(reason)


class RetryableShipError(ShipError):
    """Try again later: connection errors, timeouts, 408, 429, 5xx."""


class PermanentShipError(ShipError):
    """The backend refuses this batch as it is."""


class AuthError(PermanentShipError):
    """401/403: the credentials are refused; shipping pauses and the data stays."""


class TooLarge(PermanentShipError):
    """413: the batch must be split."""


class Rejected(PermanentShipError):
    """Other 4xx: the batch goes to the dead-letter table with the reason."""

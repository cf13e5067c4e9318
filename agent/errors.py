"""The agent's exceptions, one tree, translated from foreign ones at one boundary each.

The second level says what a caller does about one: try again later, fix the cause, or refuse
the input (with the reason) and carry on with the rest.

    AgentError
     ├── RetryableError                  nothing is wrong with the data: try again later
     │    ├── SpoolFull                  the spool is at its cap: pull sources pause, pushes get "busy"
     │    ├── HookClientError            the agent's hook socket cannot be reached (also a ConnectionError)
     │    ├── DeliveryRefused            the agent is unreachable or busy: a queued message waits
     │    └── RetryableShipError         connection errors, timeouts, 408, 429, 5xx: retry forever
     ├── PermanentError                  the same thing fails again until someone fixes the cause
     │    ├── ConfigError                bad configuration: never starts, reload keeps the old one
     │    ├── SetupError                 setup cannot proceed; nothing was changed
     │    ├── RecorderError              a Websh session cannot start (unknown user, no permission …)
     │    └── PermanentShipError         the sink refuses the batch as it is
     │         ├── AuthError             401/403: pause shipping, keep data, retry slowly
     │         ├── TooLarge              413: split the batch
     │         └── Rejected              other 4xx: dead-letter with the reason
     ├── BadInput                        input from a producer, a file or a backend that is refused
     │    ├── InputError                 a producer's request (hook message, exec request)
     │    ├── SchemaError                a batch or event that does not match the schema (also a ValueError)
     │    └── InvalidEvent               an event the pipeline's validator refuses
     └── DropEvent                       not a failure: a processor drops an event on purpose

``ShipError`` is the common base of the two ship errors (retryable and permanent); each ship
error is also in its branch above. The shipper itself does not raise them: sinks report a
:class:`~agent.shipping.retry.SendOutcome`, and :func:`~agent.shipping.retry.to_error` makes one
of these from a decision for a caller that wants an exception.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of everything the agent raises on purpose."""


# -- the three branches --------------------------------------------------------------------------
class RetryableError(AgentError):
    """Nothing is wrong with the data or the request: the same thing may work later."""


class PermanentError(AgentError):
    """Trying again changes nothing until the cause is fixed."""


class BadInput(AgentError):
    """Input that is refused with a reason; everything around it carries on."""


# -- retryable -----------------------------------------------------------------------------------
class SpoolFull(RetryableError):
    """The spool is at its byte cap and nothing may be evicted for this data."""


class HookClientError(RetryableError, ConnectionError):
    """The agent could not be reached or closed the connection early."""


class DeliveryRefused(RetryableError):
    """The agent is unreachable or answered busy/error: try again later."""


# -- permanent -----------------------------------------------------------------------------------
class ConfigError(PermanentError):
    """A configuration that does not validate; ``problems`` holds one ``path: why`` line each."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class SetupError(PermanentError):
    """Setup cannot proceed; the message says why and nothing was changed."""


class RecorderError(PermanentError):
    """The session cannot start (unknown user, no permission …)."""


# -- shipping ------------------------------------------------------------------------------------
class ShipError(AgentError):
    """A batch was not stored by the sink."""

    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None) -> None:
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        super().__init__(reason)


class RetryableShipError(ShipError, RetryableError):
    """Try again later: connection errors, timeouts, 408, 429, 5xx."""


class PermanentShipError(ShipError, PermanentError):
    """The sink refuses this batch as it is."""


class AuthError(PermanentShipError):
    """401/403: the credentials are refused; shipping pauses and the data stays."""


class TooLarge(PermanentShipError):
    """413: the batch must be split."""


class Rejected(PermanentShipError):
    """Other 4xx: the batch goes to the dead-letter table with the reason."""


# -- bad input -----------------------------------------------------------------------------------
class InputError(BadInput):
    """A producer's input that cannot be accepted; the message says why."""


class SchemaError(BadInput, ValueError):
    """A batch or event that does not match the schema; the message names the field."""


class InvalidEvent(BadInput):  # noqa: N818 - named for what it is, like DropEvent
    """An event that does not match the schema."""


class DropEvent(AgentError):  # noqa: N818 - named like structlog's
    """Raised by a processor to drop an event on purpose; ``reason`` becomes a metric label."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)

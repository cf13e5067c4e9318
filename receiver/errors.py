"""The receiver's exceptions: one tree under :class:`ReceiverError`, each carrying what its answer says."""

from __future__ import annotations


class ReceiverError(Exception):
    """Base of every error the receiver raises on purpose."""


class IngestError(ReceiverError):
    """A request refused with ``status`` and a reason for the JSON ``error`` body."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ParamError(ReceiverError, ValueError):
    """A query parameter that is unknown or malformed; the message names it."""


class FaultSettingsError(ReceiverError, ValueError):
    """Fault settings that do not validate; the message names each bad field."""


class StoreError(ReceiverError):
    """The store failed (unreachable, broken schema, disk); answered 500 ``store: …``."""

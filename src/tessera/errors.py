"""The whole exception tree, named by whose fault an error is.

- ``ConfigError``: the user's job description is wrong; names the field.
- ``DataError``: a data source or partition cannot give what was asked.
- ``LocalProtocolError``: our own code asked a protocol machine for something
  illegal (a bug on this side).
- ``RemoteProtocolError``: a peer sent something wrong; drop or blame it.
"""

from __future__ import annotations


class TesseraError(Exception):
    """Base of every error Tessera raises on purpose."""


class ConfigError(TesseraError):
    """A job configuration is invalid; ``field`` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class DataError(TesseraError):
    """A dataset, column or partition cannot satisfy the request."""


class ProtocolError(TesseraError):
    """Base of protocol violations."""


class LocalProtocolError(ProtocolError):
    """This side asked a state machine for an illegal transition."""


class RemoteProtocolError(ProtocolError):
    """A peer sent a message that is wrong for the current state."""

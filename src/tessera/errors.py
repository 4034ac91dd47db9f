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


class InvalidEnvelope(RemoteProtocolError):
    """A received envelope failed a check; drop it and log ``reason``.

    One opaque type for every failure (malformed, too large, wrong job, round
    or recipient, bad signature, replayed, cannot decrypt), as cryptography's
    ``InvalidToken``. ``reason`` is a short fixed category from
    ``tessera.crypto.envelope``, never key material or a library message.
    A subclass of ``RemoteProtocolError`` because bad bytes come from the
    other side, so the boundary that already drops bad peer messages catches
    it too. It does not prove the *claimed* sender misbehaved: most checks
    run before (or are) the signature check, and anyone can forge a header.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid envelope: {reason}")
        self.reason = reason

    def __reduce__(self) -> tuple[type[InvalidEnvelope], tuple[str]]:
        return (type(self), (self.reason,))

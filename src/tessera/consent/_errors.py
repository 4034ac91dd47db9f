"""Refusals of a consent, a revocation or a records request: the peer's fault."""

from __future__ import annotations

from tessera.errors import RemoteProtocolError

__all__ = ["ConsentError", "ReplayedRequest"]


class ConsentError(RemoteProtocolError):
    """A consent receipt, revocation or records request does not allow what was asked.

    ``reason`` is a sentence meant for people ("consent revoked", "field
    'score' not covered by consent"); ``str(error)`` is the same sentence.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __reduce__(self) -> tuple[type[ConsentError], tuple[str]]:
        return (type(self), (self.reason,))


class ReplayedRequest(ConsentError):
    """A records request whose nonce was already used: a replay, or a retry to re-sign."""

"""Errors the store raises, named for what the caller did wrong.

``Conflict`` and ``Replayed`` mean a write disagrees with what is already
committed (a peer or our own bug); ``NotFound`` means a read or update named
something that was never written. Driver exceptions never leave the store
for these three cases; anything else (a lost connection, a full disk) is
raised as the driver's own error, since retrying is the caller's decision.
"""

from __future__ import annotations

from tessera.errors import TesseraError


class StoreError(TesseraError):
    """Base of every error the store raises on purpose."""


class Conflict(StoreError):
    """A write names an existing key with different content."""


class NotFound(StoreError):
    """No record with that key."""


class Replayed(StoreError):
    """The mailbox already holds a message with this (sender, nonce)."""


class OverQuota(StoreError):
    """A write would take its sender past the count or bytes it is allowed."""

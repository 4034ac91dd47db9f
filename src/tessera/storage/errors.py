"""Errors the store raises, named for what the caller did wrong.

``Conflict`` and ``Replayed`` mean a write disagrees with what is already
committed (a peer or our own bug); ``NotFound`` means a read or update named
something that was never written. ``Unavailable`` means the database failed,
not the request (its server restarting, a connection lost, a full disk): the
same call may succeed later. Retrying is the caller's decision; the driver's
own exception is the ``__cause__``.
"""

from __future__ import annotations

from tessera.errors import TesseraError


class StoreError(TesseraError):
    """Base of every error the store raises on purpose."""


class DiskFull(StoreError):
    """A file could not be written: its disk is full (nothing of it was written)."""


class Conflict(StoreError):
    """A write names an existing key with different content."""


class NotFound(StoreError):
    """No record with that key."""


class Replayed(StoreError):
    """The mailbox already holds a message with this (sender, nonce)."""


class OverQuota(StoreError):
    """A write would take its sender past the count or bytes it is allowed."""


class Unavailable(StoreError):
    """The database failed the call (unreachable, restarting, a lost connection, a full
    disk): nothing of it committed, unless the connection was lost in the COMMIT itself."""

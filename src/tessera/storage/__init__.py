"""The coordinator's persistent store (SQLite file or PostgreSQL, via SQLAlchemy).

Everything a coordinator must not lose when it is killed lives here:
content-addressed artefacts, nodes, jobs, consent receipts, the mailbox of
sealed envelopes, and the event log with the round records it produced.
Every call is one committed transaction; see ``store`` for the rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tessera.storage.errors import (
    Conflict,
    NotFound,
    OverQuota,
    Replayed,
    StoreError,
    Unavailable,
)
from tessera.storage.records import (
    ConsentRecord,
    EventRecord,
    JobRecord,
    MailItem,
    NodeRecord,
)

if TYPE_CHECKING:
    from tessera.storage.store import Store


def __getattr__(name: str) -> object:
    # The SQL store loads SQLAlchemy: only when asked for, so a node agent that
    # only reads its key file (storage.keyfile) stays light.
    if name == "Store":
        from tessera.storage.store import Store

        return Store
    raise AttributeError(f"module 'tessera.storage' has no attribute {name!r}")


__all__ = [
    "Conflict",
    "ConsentRecord",
    "EventRecord",
    "JobRecord",
    "MailItem",
    "NodeRecord",
    "NotFound",
    "OverQuota",
    "Replayed",
    "Store",
    "StoreError",
    "Unavailable",
]

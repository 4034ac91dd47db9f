"""The coordinator's persistent store (SQLite file or PostgreSQL, via SQLAlchemy).

Everything a coordinator must not lose when it is killed lives here:
content-addressed artefacts, nodes, jobs, consent receipts, the mailbox of
sealed envelopes, and the event log with the round records it produced.
Every call is one committed transaction; see ``store`` for the rules.
"""

from __future__ import annotations

from tessera.storage.errors import Conflict, NotFound, Replayed, StoreError
from tessera.storage.records import (
    ConsentRecord,
    EventRecord,
    JobRecord,
    MailItem,
    NodeRecord,
    RoundRecord,
)
from tessera.storage.store import Store

__all__ = [
    "Conflict",
    "ConsentRecord",
    "EventRecord",
    "JobRecord",
    "MailItem",
    "NodeRecord",
    "NotFound",
    "Replayed",
    "RoundRecord",
    "Store",
    "StoreError",
]

"""A job's audit log: signed, hash-chained records in DIR/audit.jsonl.

``AuditWriter`` appends records as a job runs (``tessera run`` and ``tessera
up`` write DIR/audit.jsonl beside metrics.json); ``verify_log`` checks a log
(``tessera audit verify``) and names the first broken record. The format,
who signs and what a log proves: ``tessera.audit.record`` and
docs/architecture.md.
"""

from tessera.audit.record import GENESIS, KINDS, AuditRecord, BrokenLog, line_hash
from tessera.audit.verify import ConsentCheck, Verified, verify_log
from tessera.audit.writer import AuditWriter, weights_hash

__all__ = [
    "GENESIS",
    "KINDS",
    "AuditRecord",
    "AuditWriter",
    "BrokenLog",
    "ConsentCheck",
    "Verified",
    "line_hash",
    "verify_log",
    "weights_hash",
]

"""A job's audit log: signed, hash-chained records in DIR/audit.jsonl.

``AuditWriter`` appends records as a job runs (``tessera run`` writes
DIR/audit.jsonl beside metrics.json; the coordinator writes one log per job,
which ``tessera up`` fetches into DIR/audit.jsonl); ``verify_log`` checks a log
(``tessera audit verify``) and names the first broken record. The format,
who signs and what a log proves: ``tessera.audit.record`` and
docs/architecture.md.
"""

from tessera.audit.record import GENESIS, KINDS, AuditRecord, BrokenLog, line_hash, record_key
from tessera.audit.verify import ConsentCheck, Verified, read_log, verify_log
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
    "read_log",
    "record_key",
    "verify_log",
    "weights_hash",
]

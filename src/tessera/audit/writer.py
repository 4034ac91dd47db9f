"""``AuditWriter``: appends a job's signed, chained records to DIR/audit.jsonl.

Each record is written and flushed as it happens; ``sync`` (at every round's
end and the last record) also fsyncs, so a crash leaves a valid prefix of
the log: every line whole and verifiable, only ``model_final`` missing.
A new writer on the same path (a new run) starts the log afresh.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

from tessera.audit.record import GENESIS, AuditRecord, line_hash
from tessera.crypto.auditsig import sign_audit_record
from tessera.crypto.keys import NodeKeys
from tessera.jobs.records import RoundRecord

__all__ = ["AuditWriter", "weights_hash"]


def weights_hash(weights: Any) -> str:
    """Hex SHA-256 of a model's flat weights as little-endian float32: a round's ``aggregate``."""
    return hashlib.sha256(np.ascontiguousarray(weights, dtype="<f4").tobytes()).hexdigest()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


class AuditWriter:
    """Signs each record with ``keys`` and appends it to ``path``."""

    def __init__(
        self, path: Path, keys: NodeKeys, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path, self._keys, self._clock = path, keys, clock
        self.signer = keys.public.signing.hex()
        self.seq, self._prev = 0, GENESIS
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = path.open("wb")

    def append(self, kind: str, body: dict[str, Any]) -> AuditRecord:
        """Sign and write one record (flushed, not yet fsync'd)."""
        unsigned = AuditRecord(
            self.seq, self._prev, kind, _iso(self._clock()), body, self.signer, ""
        )
        signature = sign_audit_record(self._keys, unsigned.unsigned()).hex()
        record = AuditRecord(**{**unsigned.unsigned(), "signature": signature})
        record.check_body()  # our own records follow the format, or it is our bug
        line = record.to_line()
        self._file.write(line + b"\n")
        self._file.flush()
        self.seq, self._prev = self.seq + 1, line_hash(line)
        return record

    def sync(self) -> None:
        """Flush and fsync: what is written survives a crash."""
        self._file.flush()
        os.fsync(self._file.fileno())

    # The events of a job, in the words the verifier reads.

    def job_submitted(self, job: str, digest: str, job_id: str | None = None) -> None:
        self.append("job_submitted", {"job": job, "digest": digest, "job_id": job_id})

    def participants(self, nodes: Iterable[str], **extra: Any) -> None:
        ids = list(nodes)
        self.append("participants", {"count": len(ids), "nodes": ids, **extra})

    def consent_granted(self, node: str, receipt: str | None = None) -> None:
        self.append("consent_granted", {"node": node, "receipt": receipt})

    def consent_revoked(self, node: str, receipt: str | None = None) -> None:
        self.append("consent_revoked", {"node": node, "receipt": receipt})

    def tree(self, round: int, seed: str, digest: str) -> None:
        self.append("tree", {"round": round, "seed": seed, "digest": digest})

    def round_closed(self, rec: RoundRecord, weights: Any) -> None:
        """A closed round: its audits, its exclusions, then the round itself; fsync'd."""
        for entry in rec.blamed:
            self.append("audit", {"round": rec.round, "blamed": entry})
        for entry in rec.excluded:
            self.append("exclusion", {"round": rec.round, "excluded": entry})
        self.append(
            "round_committed",
            {
                "round": rec.round,
                "skipped": rec.skipped,
                "selected": rec.selected,
                "participants": rec.participants,
                "included": sorted(rec.included),
                "excluded": list(rec.excluded),
                "blamed": list(rec.blamed),
                "aggregate": weights_hash(weights),
                "artefact": rec.weights,  # a deployment's model artefact (sha256:...), or null
            },
        )
        self.sync()

    def hook(
        self, on_round: Callable[[RoundRecord, Any], None]
    ) -> Callable[[RoundRecord, Any], None]:
        """``on_round``, recording each round here first (a decorator)."""

        def recorded(rec: RoundRecord, weights: Any) -> None:
            self.round_closed(rec, weights)
            on_round(rec, weights)

        return recorded

    def model_final(self, model: Path, *, rounds: int, status: str) -> None:
        """The last record: the SHA-256 of the model file's bytes; fsync'd and closed."""
        digest = hashlib.sha256(model.read_bytes()).hexdigest()
        self.append("model_final", {"model": digest, "rounds": rounds, "status": status})
        self.close()

    def close(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()

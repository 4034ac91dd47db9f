"""``AuditWriter``: appends a job's signed, chained records to a log file.

Each record is written and flushed as it happens; ``sync`` (at every round's
end and the last record) also fsyncs, so a crash leaves a valid prefix of
the log: every line whole and verifiable, only ``model_final`` missing, or
at worst a last line cut short. A new writer on the same path (a new run)
starts the log afresh; ``AuditWriter.resume`` continues one (the
coordinator's, after a restart): it checks every record first, drops only
a cut last line, and writes each event at most once (``record_key``), so
events replayed after a restart are not logged twice.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from tessera.audit.record import (
    GENESIS,
    AuditRecord,
    BrokenLog,
    line_hash,
    record_key,
    weights_hash,  # here since the first logs: tessera.audit.writer.weights_hash
)
from tessera.audit.verify import read_log
from tessera.crypto.auditsig import sign_audit_record
from tessera.crypto.keys import NodeKeys
from tessera.jobs.records import RoundRecord

__all__ = ["AuditWriter", "weights_hash"]

_MODE = 0o600  # a job's log names its nodes: its owner's to hand out


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
        self.written: set[tuple[Any, ...]] | None = None  # record_key of each (resume only)
        self.finished = False  # model_final written: the log takes no more
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = _open(path, os.O_TRUNC)

    @classmethod
    def resume(
        cls, path: Path, keys: NodeKeys, *, clock: Callable[[], float] = time.time
    ) -> AuditWriter:
        """Continue the log at ``path`` (a new one if there is none), writing each event once.

        Every record is checked against ``keys`` first: a log broken anywhere but in a
        cut last line (a crash mid-write, dropped here) is ``BrokenLog``, and left as it
        is: a new chain over it would hide what broke it.
        """
        data = path.read_bytes() if path.exists() else b""
        cut = data.rfind(b"\n") + 1  # a last line without its newline was never whole
        records = read_log(data[:cut], signer=keys.public.signing.hex())
        writer = cls.__new__(cls)
        writer.path, writer._keys, writer._clock = path, keys, clock
        writer.signer = keys.public.signing.hex()
        writer.seq, writer._prev = len(records), GENESIS
        if records:
            writer._prev = line_hash(data[:cut].split(b"\n")[-2])
        writer.written = {record_key(r.kind, r.body) for r in records}
        writer.finished = any(r.kind == "model_final" for r in records)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer._file = _open(path, 0)
        if cut < len(data):
            writer._file.truncate(cut)
        writer._file.seek(cut)
        writer.sync()
        return writer

    def append(self, kind: str, body: dict[str, Any]) -> AuditRecord | None:
        """Sign and write one record (flushed, not yet fsync'd); None if a resumed log
        holds this event already (or ended: nothing follows ``model_final``)."""
        key = record_key(kind, body)
        if self.written is not None and (key in self.written or self.finished):
            return None
        if self.finished:
            raise BrokenLog(self.seq, f"a {kind} record after model_final")
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
        if self.written is not None:
            self.written.add(key)
        self.finished = kind == "model_final"
        return record

    def holds(self, kind: str, **fields: Any) -> bool:
        """Whether a resumed log holds this event already (``record_key``'s fields)."""
        return self.written is not None and record_key(kind, fields) in self.written

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

    def round_closed(self, rec: RoundRecord, weights: Any, **extra: Any) -> None:
        """A closed round: its audits, its exclusions, then the round itself; fsync'd.
        ``extra``: more of the round's body (the coordinator's ``commitments``)."""
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
                **extra,
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

    def model_weights(
        self, weights: Any, *, tensors: Sequence[str], rounds: int, status: str, **extra: Any
    ) -> None:
        """The last record from whoever holds the weights, not the file (the coordinator):
        the hash of the flat float32 weights, and the tensors' order that rebuilds them
        from a safetensors file (``verify_log``); ``weights`` None: the job has no model."""
        self.append(
            "model_final",
            {
                "model": "" if weights is None else weights_hash(weights),
                "hash": "weights",
                "tensors": list(tensors),
                "rounds": rounds,
                "status": status,
                **extra,
            },
        )
        self.close()

    def close(self) -> None:
        if not self._file.closed:
            self.sync()
            self._file.close()


def _open(path: Path, flags: int) -> IO[bytes]:
    """``path`` for writing, made 0600 whatever the umask (an existing file kept)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | flags, _MODE)
    try:
        os.fchmod(fd, _MODE)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise

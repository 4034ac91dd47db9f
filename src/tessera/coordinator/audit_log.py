"""Each job's signed audit log, written by the coordinator as the job's events happen.

One file a job, ``<folder>/<job_id>.jsonl`` (0600, the folder 0700), signed
with the coordinator's own keys (those it signs envelopes with), in the
format of ``tessera.audit``. The service and the job's driver write a record
once the event it tells of is committed to the store, so a record never
claims what the store does not hold. Every writer is a resumed one
(``AuditWriter.resume``): it writes each event at most once, so a restart
can call ``catch_up``, which re-derives from the store what a crash between
an event and its record left out, without duplicating anything.

A log that cannot be written (a full disk, a log broken by someone else) never
stops the job: the event is already committed, the error is logged, and the
log stays as it was (``catch_up`` fills it in on the next start). A log
found broken when it is opened is never replaced by a fresh chain.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tessera.audit import AuditWriter, BrokenLog
from tessera.crypto.documents import SignedDocument, canonical_json
from tessera.crypto.keys import NodeKeys
from tessera.jobs.records import RoundRecord
from tessera.runtime.transport.mail import read_weights_artefact
from tessera.storage import JobRecord, Store
from tessera.storage.private import private_dir

log = logging.getLogger("tessera.coordinator.audit")

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")  # a job id as a file name


def commitments_digest(committed: Mapping[str, Sequence[str] | None]) -> str:
    """SHA-256 of a secure round's commitments: each group's committed contributors
    (sorted; null: the group left the round), as canonical JSON by group id."""
    body = {group: None if ids is None else sorted(ids) for group, ids in committed.items()}
    return hashlib.sha256(canonical_json(body)).hexdigest()


class AuditLogs:
    """The coordinator's audit logs, one writer a job, opened when first written."""

    def __init__(
        self, folder: Path | None, keys: NodeKeys, *, clock: Callable[[], float] = time.time
    ) -> None:
        """``folder`` None: no logs are kept (a service built for a test of something else)."""
        self.folder, self.keys, self.clock = folder, keys, clock
        self._writers: dict[str, AuditWriter] = {}
        self._lock = threading.RLock()  # HTTP threads and drivers write; reads take whole lines
        if folder is not None:
            private_dir(folder, tighten=True)

    def path(self, job_id: str) -> Path | None:
        if self.folder is None or not _SAFE_ID.fullmatch(job_id):
            return None
        return self.folder / f"{job_id}.jsonl"

    def open(self, job_id: str) -> AuditWriter | None:
        """The job's writer, its log checked when first opened: ``BrokenLog`` if it is
        broken (left as it is), None if no logs are kept."""
        with self._lock:
            found = self._writers.get(job_id)
            path = self.path(job_id)
            if found is None and path is not None:
                found = AuditWriter.resume(path, self.keys, clock=self.clock)
                self._writers[job_id] = found
            return found

    def write(self, job_id: str, what: Callable[[AuditWriter], None]) -> None:
        """Write with the job's writer; an error is logged, never raised (see the module)."""
        with self._lock:
            try:
                writer = self.open(job_id)
                if writer is not None:
                    seq = writer.seq
                    what(writer)
                    if writer.seq != seq and not writer.finished:  # the last record synced
                        writer.sync()
            except (BrokenLog, OSError, ValueError) as exc:
                log.error("%s: audit log not written: %s", job_id, exc)

    def read(self, job_id: str) -> bytes | None:
        """The log's bytes as written so far (whole lines), None if there is none."""
        path = self.path(job_id)
        with self._lock:
            if path is None or not path.is_file():
                return None
            return path.read_bytes()

    def ended(self, job_id: str) -> bool:
        """Whether the job's log ends with its ``model_final`` (read from its tail)."""
        path = self.path(job_id)
        if path is None or not path.is_file():
            return False
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 8192))
            last = f.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
        return b'"kind":"model_final"' in last

    def close(self) -> None:
        with self._lock:
            for writer in self._writers.values():
                writer.close()
            self._writers.clear()

    # -- the events, in the words of ``tessera.audit`` ---------------------------------
    def submitted(self, job_id: str, document: SignedDocument) -> None:
        def write(w: AuditWriter) -> None:
            w.append(
                "job_submitted",
                {
                    "job": str(document.body.get("name")),
                    "digest": document.digest,
                    "job_id": job_id,
                    "ai_provider": document.signer.fingerprint,
                },
            )

        self.write(job_id, write)

    def consented(self, job_id: str, node: str, receipt: str) -> None:
        self.write(job_id, lambda w: w.consent_granted(node, receipt))

    def revoked(self, job_id: str, node: str, receipt: str, from_round: int) -> None:
        """``from_round``: the first round the node is in no more (the one open when the
        revocation came may still hold its update, as the protocol says)."""
        body = {"node": node, "receipt": receipt, "from_round": from_round}
        self.write(job_id, lambda w: _append(w, "consent_revoked", body))

    def participants(self, job_id: str, nodes: Iterable[str]) -> None:
        self.write(job_id, lambda w: w.participants(sorted(nodes)))

    def beacon(self, job_id: str, beacon: str) -> None:
        self.write(job_id, lambda w: _append(w, "beacon", {"beacon": beacon}))

    def tree(self, job_id: str, round: int, seed: bytes, digest: str) -> None:
        self.write(job_id, lambda w: w.tree(round, seed.hex(), digest))

    def round_closed(
        self, job_id: str, rec: RoundRecord, weights: Any, commitments: str | None = None
    ) -> None:
        extra = {} if commitments is None else {"commitments": commitments}
        self.write(job_id, lambda w: w.round_closed(rec, weights, **extra))

    def finished(
        self,
        job_id: str,
        weights: Any,
        *,
        tensors: Sequence[str],
        rounds: int,
        status: str,
        error: str | None = None,
    ) -> None:
        """The last record: the final weights' hash (None: the job ended without a model)."""
        extra = {} if error is None else {"error": error}

        def write(w: AuditWriter) -> None:
            w.model_weights(weights, tensors=tensors, rounds=rounds, status=status, **extra)

        with self._lock:
            self.write(job_id, write)
            self._writers.pop(job_id, None)  # closed by its last record

    def catch_up(self, store: Store, job: JobRecord, tensors: Callable[[], Sequence[str]]) -> None:
        """Write what the store holds and the log does not (a crash came between an event
        and its record): the records each event would have written, in the order of a
        job's life. Not re-derived: a secure round's commitments (the machine kept them
        only while the round was open) and the round a lost revocation held from (the
        round open now is taken: the least a record could claim)."""
        job_id = job.job_id
        document = SignedDocument.from_json(job.document)
        self.submitted(job_id, document)
        consents = store.consents(job_id)
        for c in consents:
            self.consented(job_id, c.node_id, c.digest)
        if job.participants is not None:
            self.participants(job_id, job.participants)
        if job.beacon is not None:
            self.beacon(job_id, job.beacon)
        open_round = job.current_round or 0
        for c in consents:
            if c.revoked_at is not None:
                self.revoked(job_id, c.node_id, c.digest, open_round + 1)
        rounds = store.rounds(job_id)
        for rec in rounds:
            writer = self.open_quietly(job_id)
            if writer is None or writer.holds("round_committed", round=rec.round):
                continue
            if rec.weights is None:
                continue
            length = int(document.body["weights"]["length"])
            model = read_weights_artefact(store.get_artefact(rec.weights), rec.weights, length)
            self.round_closed(job_id, rec, model)
        if job.state in ("finished", "failed"):
            weights: Any = None
            if job.final_weights is not None:
                sha, length = job.final_weights, int(document.body["weights"]["length"])
                weights = read_weights_artefact(store.get_artefact(sha), sha, length)
            status = job.state
            self.finished(
                job_id,
                weights,
                tensors=tensors(),
                rounds=len(rounds),
                status=status,
                error=job.error or None,
            )

    def open_quietly(self, job_id: str) -> AuditWriter | None:
        try:
            return self.open(job_id)
        except (BrokenLog, OSError) as exc:
            log.error("%s: audit log not written: %s", job_id, exc)
            return None


def _append(writer: AuditWriter, kind: str, body: dict[str, Any]) -> None:
    writer.append(kind, body)

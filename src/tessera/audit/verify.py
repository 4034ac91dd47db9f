"""``verify_log``: check an audit log and name its first broken record.

Checks, record by record: the line's form, ``seq``, ``prev`` (the chain),
the signer (the expected key, or the first record's when trusted), the
signature, the kind and its required fields; then that the log ends with
one ``model_final`` whose hash matches the model file (the file's bytes, or
its flat float32 weights when the record says ``hash: "weights"``, as the
coordinator writes it: it holds the weights, not the file). With ``node``,
also the rounds committed after the node's consent was revoked, and those
that still include it (``ConsentCheck.violations``): an authentic log can
prove that consent was *not* honoured, so that is a finding, not a broken log.
A revocation whose record says ``from_round`` (the coordinator's) holds from
that round: the round open when it came may still include the node.

``read_log`` checks the chain and signatures of a log still being written
(no ``model_final`` needed): what a writer resuming a log trusts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tessera.audit.record import GENESIS, AuditRecord, BrokenLog, line_hash, weights_hash
from tessera.crypto.auditsig import verify_audit_record
from tessera.errors import DataError
from tessera.weights import load_file

__all__ = ["ConsentCheck", "Verified", "read_log", "verify_log"]


@dataclass
class ConsentCheck:
    """What the log says of one node's consent."""

    node: str
    revoked_at: int | None = None  # the seq of its consent_revoked record
    from_round: int = 0  # the first round the revocation holds for (the record's, or 0)
    rounds_after: list[int] = field(default_factory=list)  # rounds bound by it
    included_in: list[int] = field(default_factory=list)  # rounds that include the node
    # (seq, round) of each round committed after the revocation that includes the node
    violations: list[tuple[int, int]] = field(default_factory=list)

    @property
    def honoured(self) -> bool:
        """Revoked, and in no round committed after it (never revoked: nothing to honour)."""
        return not self.violations


@dataclass
class Verified:
    """A log that passed: what it holds."""

    records: int
    signer: str
    trusted: str  # how the signer was chosen: "--key" or "first record"
    job: str
    rounds: int
    model: str
    status: str
    consent: ConsentCheck | None = None


def verify_log(
    path: Path,
    *,
    key: str | None = None,
    trust_first: bool = False,
    model: Path | None = None,
    node: str | None = None,
) -> Verified:
    """Check the log at ``path``; ``BrokenLog`` names the first broken record.

    ``key``: the expected signer's Ed25519 public key (64 hex digits); or
    ``trust_first``: whoever signed record 0. ``model``: the model file
    (default: model.safetensors beside the log).
    """
    if (key is None) == (not trust_first):
        raise ValueError("give the expected signer's key, or trust the first record's")
    expected = key.lower() if key is not None else None
    model = model if model is not None else path.parent / "model.safetensors"
    lines = _lines(path.read_bytes())
    job, rounds, final = "?", 0, None
    consent = ConsentCheck(node) if node is not None else None
    for rec in _records(lines, expected):
        expected = rec.signer
        if final is not None:
            raise BrokenLog(rec.seq, "a record after model_final")
        if rec.kind == "job_submitted":
            job = str(rec.body["job"])
        elif rec.kind == "round_committed":
            rounds += 1
            if consent is not None:
                _consent(consent, rec)
        elif rec.kind == "consent_revoked" and consent is not None:
            if rec.body["node"] == consent.node and consent.revoked_at is None:
                consent.revoked_at = rec.seq
                from_round = rec.body.get("from_round")
                if isinstance(from_round, int) and not isinstance(from_round, bool):
                    consent.from_round = from_round
        elif rec.kind == "model_final":
            final = rec
    if final is None:
        raise BrokenLog(len(lines), "missing: the log ends without model_final (cut short)")
    actual = _model_hash(final, model)
    assert expected is not None
    return Verified(
        records=len(lines),
        signer=expected,
        trusted="first record" if key is None else "--key",
        job=job,
        rounds=rounds,
        model=actual,
        status=str(final.body["status"]),
        consent=consent,
    )


def read_log(data: bytes, *, signer: str) -> list[AuditRecord]:
    """The records of a log being written, each checked (form, seq, chain, ``signer``,
    signature, body); ``BrokenLog`` names the first that fails, a cut last line too."""
    return list(_records(_lines(data), signer.lower()))


def _lines(data: bytes) -> list[bytes]:
    """The log's lines; a last line without its newline was cut."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline ending the last record
    elif lines:
        raise BrokenLog(len(lines) - 1, "the last line is cut (no newline)")
    return lines


def _records(lines: list[bytes], signer: str | None) -> Iterator[AuditRecord]:
    """Each line checked in order; ``signer`` None: the first record's, from then on."""
    prev = GENESIS
    for seq, line in enumerate(lines):
        rec = _record(seq, line, prev, signer)
        signer, prev = rec.signer, line_hash(line)
        yield rec


def _record(seq: int, line: bytes, prev: str, signer: str | None) -> AuditRecord:
    """Record ``seq`` parsed and checked: seq, chain, signer (None: any), signature, body."""
    rec = AuditRecord.parse(seq, line)
    if rec.seq != seq:
        raise BrokenLog(seq, f"seq is {rec.seq}, expected {seq} (records reordered or lost)")
    if rec.prev != prev:
        what = "GENESIS" if seq == 0 else f"the hash of record {seq - 1}"
        raise BrokenLog(seq, f"prev is not {what}: the chain is broken")
    if signer is not None and rec.signer != signer:
        raise BrokenLog(seq, f"signed by {rec.signer[:16]}..., not {signer[:16]}...")
    if not verify_audit_record(
        bytes.fromhex(rec.signer), rec.unsigned(), bytes.fromhex(rec.signature)
    ):
        raise BrokenLog(seq, "bad signature (the record was changed)")
    rec.check_body()
    return rec


def _model_hash(final: AuditRecord, model: Path) -> str:
    """The model's hash, if it is what the final record says ("": a job that ended
    without a model, whose record names none)."""
    if final.body["model"] == "" and final.body["status"] != "finished":
        return ""
    if not model.is_file():
        raise BrokenLog(final.seq, f"model_final: no model file at {model}")
    if final.body.get("hash") == "weights":
        actual = _weights_hash(final, model)
    else:
        actual = hashlib.sha256(model.read_bytes()).hexdigest()
    if actual != final.body["model"]:
        raise BrokenLog(
            final.seq,
            f"model_final says {str(final.body['model'])[:16]}..., but {model} hashes to "
            f"{actual[:16]}...",
        )
    return actual


def _weights_hash(final: AuditRecord, model: Path) -> str:
    """The flat float32 weights' hash of a safetensors file, its tensors taken in the
    order the record names (the model's own, which the file does not keep)."""
    names = final.body.get("tensors")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BrokenLog(final.seq, "model_final: a weights hash without its tensors' order")
    if not names:  # its coordinator ran without torch, so could not lay the model out
        raise BrokenLog(
            final.seq, "model_final names no tensor order: the model file cannot be checked"
        )
    try:
        arrays = load_file(model)
    except DataError as exc:
        raise BrokenLog(final.seq, f"model_final: {model}: {exc}") from None
    if sorted(arrays) != sorted(names):
        raise BrokenLog(final.seq, f"model_final: {model} holds other tensors than it names")
    flat = [np.asarray(arrays[name], dtype="<f4").reshape(-1) for name in names]
    return weights_hash(np.concatenate(flat) if flat else np.zeros(0, "<f4"))


def _consent(check: ConsentCheck, rec: AuditRecord) -> None:
    """One committed round, against the node's consent."""
    round_ = int(rec.body["round"])
    included = check.node in rec.body["included"]
    if included:
        check.included_in.append(round_)
    if check.revoked_at is None:
        return
    if round_ < check.from_round:  # open when the revocation came: not bound by it
        return
    check.rounds_after.append(round_)
    if included:
        check.violations.append((rec.seq, round_))

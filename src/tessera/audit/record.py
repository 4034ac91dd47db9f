"""One audit record: its fields, its byte form, its kinds and what each must say.

A log is UTF-8 text, one record a line, each line the canonical JSON
(``crypto.documents.canonical_json``: sorted keys, no spaces, ASCII) of an
object with exactly these fields:

- ``seq``: 0 for the first record, then 1, 2, ... (no gaps);
- ``prev``: hex SHA-256 of the previous line's bytes (without its newline);
  the first record's is ``GENESIS``, 64 zeros (the job's id and document
  digest are in its first record's body, so they are chained and signed);
- ``kind``: one of ``KINDS``; ``body``: a JSON object with the kind's
  required fields (more may follow: readers ignore what they do not know);
- ``at``: when it was written, ISO 8601 UTC (the writer's clock: a claim);
- ``signer``: the raw Ed25519 public key that signed it, 64 hex digits;
- ``signature``: 128 hex digits, Ed25519 over ``b"tessera-audit/v1\\x00"``
  and the canonical JSON of the record without ``signature``
  (``crypto.auditsig``).

Hex is lower case and a line must be exactly its canonical form, so every
changed byte changes what is signed or what the next record's ``prev``
hashes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from tessera.crypto.documents import canonical_json

__all__ = [
    "FIELDS",
    "GENESIS",
    "KINDS",
    "AuditRecord",
    "BrokenLog",
    "line_hash",
    "record_key",
    "weights_hash",
]

GENESIS = "0" * 64
FIELDS = frozenset({"seq", "prev", "kind", "at", "body", "signer", "signature"})
HEX64 = re.compile(r"[0-9a-f]{64}")
HEX128 = re.compile(r"[0-9a-f]{128}")

# Each kind's required body fields and their JSON types (a tuple: any of them).
_STR, _INT, _BOOL, _LIST = (str,), (int,), (bool,), (list,)
_OPT_STR = (str, type(None))
KINDS: dict[str, dict[str, tuple[type, ...]]] = {
    # The job: its name, the digest of its signed document or config, its id.
    "job_submitted": {"job": _STR, "digest": _STR, "job_id": _OPT_STR},
    "consent_granted": {"node": _STR},  # a node's consent (``receipt``: its digest, if known)
    "consent_revoked": {"node": _STR},  # from here on the node is in no round
    "participants": {"count": _INT, "nodes": _LIST},  # the job's nodes
    "beacon": {"beacon": _STR},  # a secure job's tree beacon, fixed by the reveals
    "tree": {"round": _INT, "seed": _STR, "digest": _STR},  # a secure round's tree
    # A closed round: who is in its model, and the model's hash after it.
    "round_committed": {
        "round": _INT,
        "skipped": _BOOL,
        "selected": _INT,
        "participants": _INT,
        "included": _LIST,
        "excluded": _LIST,
        "blamed": _LIST,
        "aggregate": _STR,
    },
    "audit": {"round": _INT, "blamed": _STR},  # an aggregator's sum failed its audit
    "exclusion": {"round": _INT, "excluded": _STR},  # a contributor left out from then on
    # SHA-256 of the model file, or (``hash``: "weights") of its flat float32 weights.
    "model_final": {"model": _STR, "rounds": _INT, "status": _STR},
}

# What makes a record of each kind one event: a log written once per event (the
# coordinator's, replayed after a restart) holds at most one record per key.
_KEY_FIELDS: dict[str, tuple[str, ...]] = {
    "consent_granted": ("node", "receipt"),
    "consent_revoked": ("node", "receipt"),
    "tree": ("round",),
    "round_committed": ("round",),
    "audit": ("round", "blamed"),
    "exclusion": ("round", "excluded"),
}


def record_key(kind: str, body: dict[str, Any]) -> tuple[Any, ...]:
    """The event a record stands for: its kind and the body fields that tell events apart
    (the kinds a job has once, such as ``job_submitted``, are their kind alone)."""
    return (kind, *(body.get(name) for name in _KEY_FIELDS.get(kind, ())))


class BrokenLog(Exception):
    """A log that fails a check: ``seq`` is the first broken record's number."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"record {seq}: {reason}")
        self.seq, self.reason = seq, reason


def weights_hash(weights: Any) -> str:
    """Hex SHA-256 of a model's flat weights as little-endian float32: a round's ``aggregate``."""
    return hashlib.sha256(np.ascontiguousarray(weights, dtype="<f4").tobytes()).hexdigest()


def line_hash(line: bytes) -> str:
    """Hex SHA-256 of one line's bytes (no newline): the next record's ``prev``."""
    return hashlib.sha256(line).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    prev: str
    kind: str
    at: str
    body: dict[str, Any]
    signer: str
    signature: str

    def unsigned(self) -> dict[str, Any]:
        """What the signature covers: every field but ``signature``."""
        return {
            "seq": self.seq,
            "prev": self.prev,
            "kind": self.kind,
            "at": self.at,
            "body": self.body,
            "signer": self.signer,
        }

    def to_line(self) -> bytes:
        """The record's line, without its newline."""
        return canonical_json({**self.unsigned(), "signature": self.signature})

    @classmethod
    def parse(cls, seq: int, line: bytes) -> AuditRecord:
        """Parse line number ``seq`` (0-based); any bad shape is ``BrokenLog(seq, ...)``."""
        import json

        try:
            value = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise BrokenLog(seq, "not a JSON line (changed or cut)") from None
        if not isinstance(value, dict) or set(value) != FIELDS:
            raise BrokenLog(seq, f"a record has exactly the fields {', '.join(sorted(FIELDS))}")
        try:
            canonical = canonical_json(value)
        except ValueError:
            raise BrokenLog(seq, "holds a number JSON cannot carry") from None
        if canonical != line:
            raise BrokenLog(seq, "not in canonical form (changed)")
        types = {"seq": int, "prev": str, "kind": str, "at": str, "body": dict}
        for name, kind in types.items():
            if not isinstance(value[name], kind) or isinstance(value[name], bool):
                raise BrokenLog(seq, f"{name} must be a {kind.__name__}")
        for name, pattern in (("signer", HEX64), ("signature", HEX128), ("prev", HEX64)):
            if not isinstance(value[name], str) or not pattern.fullmatch(value[name]):
                raise BrokenLog(seq, f"{name} must be lower-case hex of the right length")
        return cls(**value)

    def check_body(self) -> None:
        """``BrokenLog`` unless the kind is known and its body has the required fields."""
        required = KINDS.get(self.kind)
        if required is None:
            raise BrokenLog(self.seq, f"unknown kind {self.kind!r}")
        for name, types in required.items():
            if name not in self.body:
                raise BrokenLog(self.seq, f"{self.kind} record lacks {name}")
            value = self.body[name]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise BrokenLog(self.seq, f"{self.kind} record: {name} has the wrong type")

"""Accusations a third party can check: the auditor's proof, and the coordinator's judgement.

Theory of operation. An auditor that finds a child's sum wrong accuses it
(``Kind.ACCUSE``). Taken on the auditor's word, an accusation would let a
dishonest auditor discard a round and have an honest child excluded. So the
accusation carries a proof made only of what the accused signed:

- the accused's sealed sum to the auditor (``Kind.PARTIAL``) and its box key,
  which the auditor discloses (``crypto.envelope.disclose_key``);
- the accused's clear, signed evidence (``Kind.EVIDENCE``) and the key of the
  sealed block of input keys inside it;
- the accused's signed copies of its inputs (``Kind.INPUT_COPY``).

The coordinator redoes the auditor's check on them (``judge``):

- upheld: the accused's own signed messages do not add up; it is excluded;
- false: they do add up, or the proof is not the accused's signed messages to
  this auditor; the accuser is excluded;
- undecidable: the sealed keys do not open with the key the auditor names, or
  a copy the evidence relies on is not in the proof. Either side may be lying
  (junk sealed, or a key or a copy withheld), so nobody is excluded.

Every outcome discards the round (its sum went up before the check). What
the coordinator learns is what the accuser already saw: one position's
inputs of one group, so judging adds no party to the collusion bound.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tessera.crypto.envelope import clear_payload, disclose_key, open_envelope
from tessera.crypto.fixedpoint import Ring
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.errors import InvalidEnvelope, RemoteProtocolError
from tessera.ids import NodeId
from tessera.protocol.audit import Undecidable, open_evidence, parse_evidence, verify_evidence
from tessera.protocol.codec import decode_labelled, decode_named, decode_partial
from tessera.protocol.kinds import Kind
from tessera.protocol.limits import ENVELOPE_LIMITS

_MAGIC = b"PRF1"
_LEN = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Proof:
    """The accused's own signed messages to its auditor, and the keys to their sealed parts."""

    partial: bytes  # the accused's sealed sum to the auditor
    partial_key: bytes  # that box's key
    evidence: bytes  # the accused's clear, signed evidence envelope
    evidence_key: bytes  # the key of the sealed block of input keys inside it
    copies: tuple[bytes, ...] = ()  # the accused's signed input copies, as received


def encode_proof(proof: Proof) -> bytes:
    parts = [_MAGIC]
    for part in (proof.partial, proof.partial_key, proof.evidence, proof.evidence_key):
        parts += [_LEN.pack(len(part)), part]
    parts.append(_LEN.pack(len(proof.copies)))
    for copy in proof.copies:
        parts += [_LEN.pack(len(copy)), copy]
    return b"".join(parts)


def decode_proof(data: bytes | memoryview) -> Proof:
    view = memoryview(data)
    if bytes(view[:4]) != _MAGIC:
        raise RemoteProtocolError("an accusation's proof has the wrong format")
    pos = 4

    def take() -> bytes:
        nonlocal pos
        if pos + 4 > len(view):
            raise RemoteProtocolError("an accusation's proof is truncated")
        (n,) = _LEN.unpack_from(view, pos)
        if pos + 4 + n > len(view):
            raise RemoteProtocolError("an accusation's proof is truncated")
        pos += 4 + n
        return bytes(view[pos - n : pos])

    partial, partial_key, evidence, evidence_key = take(), take(), take(), take()
    if pos + 4 > len(view):
        raise RemoteProtocolError("an accusation's proof is truncated")
    (count,) = _LEN.unpack_from(view, pos)
    pos += 4
    if count > (len(view) - pos) // 4:  # each copy costs at least its length word
        raise RemoteProtocolError("an accusation's proof is truncated")
    copies = tuple(take() for _ in range(count))
    if pos != len(view):
        raise RemoteProtocolError("an accusation's proof has trailing bytes")
    return Proof(partial, partial_key, evidence, evidence_key, copies)


def make_proof(
    *,
    partial: bytes,
    evidence: bytes,
    body: bytes,
    copies: Iterable[bytes],
    keys: NodeKeys,
    accused: PublicKeys,
) -> Proof:
    """The auditor's side: the accused's messages as received (``body``: the evidence
    envelope's payload), with the keys of their sealed parts disclosed."""
    partial_key = disclose_key(partial, recipient_keys=keys, sender_public=accused)
    try:
        sealed_keys = parse_evidence(body)[0]
        evidence_key = disclose_key(sealed_keys, recipient_keys=keys, sender_public=accused)
    except (InvalidEnvelope, RemoteProtocolError):
        evidence_key = b""  # malformed evidence: its own signed bytes say so
    return Proof(partial, partial_key, evidence, evidence_key, tuple(copies))


class Finding(enum.Enum):
    UPHELD = "upheld"  # the accused's own messages do not add up
    FALSE = "false"  # they do, or the proof is not theirs: the accuser lied
    UNDECIDABLE = "undecidable"  # a key or a copy either side may have withheld


@dataclass(frozen=True, slots=True)
class Judgement:
    finding: Finding
    reason: str


@dataclass(frozen=True, slots=True)
class Case:
    """What the coordinator knows of the accused seat: who sits where, and what it sums."""

    accused: NodeId
    accuser: NodeId
    group: str
    position: int
    expected: Mapping[str, NodeId]  # input id -> its sender, from the coordinator's own tree
    leaf: bool
    ring: Ring
    length: int


class _NotTheirs(RemoteProtocolError):
    """Part of the proof is not a message the accused signed to the accuser."""


def judge(
    proof: Proof,
    case: Case,
    *,
    directory: Mapping[NodeId, PublicKeys],
    job_id: str,
    round: int,
) -> Judgement:
    """Redo the accuser's audit of ``case.accused`` from the accused's own signed messages."""
    try:
        partial = _accused_message(
            proof.partial,
            case,
            Kind.PARTIAL,
            directory=directory,
            job_id=job_id,
            round=round,
            key=proof.partial_key,
        )
        claimed = decode_partial(partial)
        if (claimed.group, claimed.position) != (case.group, case.position):
            raise _NotTheirs("the proof's sum is for another seat")
        group, position, body = decode_labelled(
            _accused_message(
                proof.evidence, case, Kind.EVIDENCE, directory=directory, job_id=job_id, round=round
            )
        )
        if (group, position) != (case.group, case.position):
            raise _NotTheirs("the proof's evidence is for another seat")
        copies = _copies(proof.copies, case, directory, job_id, round)
    except RemoteProtocolError as exc:
        return Judgement(Finding.FALSE, f"the proof is not the accused's: {exc}")
    try:
        evidence = open_evidence(
            body,
            job_id=job_id,
            round=round,
            audited=case.accused,
            keys=None,
            auditor=case.accuser,
            directory=directory,
            copies=copies,
            disclosed_key=proof.evidence_key,
        )
        verify_evidence(
            evidence,
            audited=case.accused,
            partial=claimed,
            expected=case.expected,
            leaf=case.leaf,
            ring=case.ring,
            length=case.length,
            directory=directory,
            job_id=job_id,
            round=round,
        )
    except Undecidable as exc:
        return Judgement(Finding.UNDECIDABLE, str(exc))
    except RemoteProtocolError as exc:
        return Judgement(Finding.UPHELD, str(exc))
    return Judgement(Finding.FALSE, "the accused's evidence adds up to the sum it sent")


def _accused_message(
    data: bytes,
    case: Case,
    kind: Kind,
    *,
    directory: Mapping[NodeId, PublicKeys],
    job_id: str,
    round: int,
    key: bytes | None = None,
) -> bytes:
    """The payload of a message the accused signed to the accuser this round, or raise."""
    try:
        env = open_envelope(
            data,
            recipient_keys=None,
            directory=directory,
            expect_job=job_id,
            expect_round=round,
            expect_recipient=case.accuser,
            max_bytes=ENVELOPE_LIMITS[kind],  # its kind's: a copy is over a share's bound
            replay=None,
            disclosed_key=key,
        )
    except InvalidEnvelope as exc:
        raise _NotTheirs(f"a {kind.name} does not open: {exc.reason}") from None
    if env.sender != case.accused or env.kind != kind:
        raise _NotTheirs(f"a {kind.name} of the proof is not the accused's")
    return env.payload


def _copies(
    copies: tuple[bytes, ...],
    case: Case,
    directory: Mapping[NodeId, PublicKeys],
    job_id: str,
    round: int,
) -> dict[str, bytes | memoryview]:
    held: dict[str, bytes | memoryview] = {}
    for data in copies:
        group, position, body = decode_labelled(
            _accused_message(
                data, case, Kind.INPUT_COPY, directory=directory, job_id=job_id, round=round
            )
        )
        input_id, start = decode_named(body)
        if (group, position) != (case.group, case.position) or input_id in held:
            raise _NotTheirs(f"the copy of {input_id} is for another seat, or twice")
        held[input_id] = memoryview(body)[start:]
    return held


def copy_box(data: bytes) -> tuple[str, memoryview]:
    """An input copy kept whole (its signature binds it to its forwarder): its input id
    and its box, read again without a copy (the envelope was checked on arrival)."""
    _, _, body = decode_labelled(clear_payload(data))
    input_id, start = decode_named(body)
    return input_id, memoryview(body)[start:]

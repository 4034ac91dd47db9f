"""Audits: every partial sum is checked against what its aggregator received.

Theory of operation. An aggregator's output must be the sum of exactly the
inputs the coordinator committed. It sends its auditor (the aggregator at the
same position one level up) the evidence:

- the coordinator's signed commitment naming the inputs to sum, and
- each committed input's original envelope, still signed by its sender, with
  the one-box key that opens it (``crypto.envelope.disclose_key``).

The auditor opens every box with its disclosed key, checks each sender's
signature and role, re-adds the shares and compares with the sum it
received. A forged box fails its signature, a made-up key fails to decrypt,
and a wrong sum fails the comparison, so the aggregator cannot lie about
its inputs. The auditor sees only shares of its own position, which are
uniformly random: an audit reveals nothing about any update, but it is one
more party that sees that position (the collusion bound counts it).

Audits are optimistic: the auditor adds a child's sum at once and checks the
evidence beside the sums flowing up; it tells the coordinator when its
checks are done (``Kind.AUDITED``), or accuses (``Kind.ACCUSE``), and the
coordinator applies a round only once every check is done and none failed.

The evidence travels in a clear, signed envelope: the boxes in it are
ciphertext already, so only the small block of disclosed keys is sealed for
the auditor (``seal_evidence``). A relay sees boxes it cannot open, and the
outer signature binds the keys to exactly these boxes and this commitment.

The root group's sums go to the coordinator; it audits k-1 of them, chosen
after they arrive, so it never holds all k positions' inputs of one group.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from tessera.crypto.envelope import CANNOT_DECRYPT, open_envelope, seal
from tessera.crypto.fixedpoint import Ring
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.crypto.sharing import FullShare, ShareAccumulator
from tessera.errors import InvalidEnvelope, RemoteProtocolError
from tessera.ids import COORDINATOR, NodeId
from tessera.protocol.codec import (
    PartialPayload,
    decode_commit,
    decode_named,
    decode_partial,
    decode_share,
    encode_named,
)
from tessera.protocol.kinds import Kind
from tessera.protocol.limits import MAX_ENVELOPE_BYTES, MAX_SHARE_BYTES

_MAGIC = b"EVD2"
_LEN = struct.Struct("<I")
KEY_BYTES = 32


class AuditFailure(RemoteProtocolError):
    """The audited aggregator's sum does not match its evidence."""


class Undecidable(AuditFailure):
    """A failure a third party cannot pin on either side: the evidence's sealed keys do
    not open with the key the auditor names, or a copy never reached the auditor."""


@dataclass(frozen=True, slots=True)
class Evidence:
    commit: bytes  # the coordinator's signed commitment envelope
    boxes: tuple[tuple[bytes | memoryview, bytes], ...]  # (input envelope, its disclosed key)
    inputs: tuple[str, ...] = ()  # each box's input id (a member, or a child group)


def seal_evidence(
    evidence: Evidence,
    *,
    job_id: str,
    round: int,
    sender: NodeId,
    auditor: NodeId,
    keys: NodeKeys,
    directory: Mapping[NodeId, PublicKeys],
    inline: bool = True,
) -> bytes:
    """The evidence body: each input's id and disclosed key, sealed for ``auditor``; the
    commitment; and the boxes, unless the auditor holds copies already (``inline=False``)."""
    named = b"".join(
        encode_named(input_id, key)
        for input_id, (_, key) in zip(evidence.inputs, evidence.boxes, strict=True)
    )
    sealed_keys = seal(
        kind=int(Kind.EVIDENCE),
        job_id=job_id,
        round=round,
        sender=sender,
        recipient=auditor,
        payload=named,
        sender_keys=keys,
        recipient_public=directory[auditor],
    )
    boxes = evidence.boxes if inline else ()
    parts: list[bytes | memoryview] = [_MAGIC, _LEN.pack(len(sealed_keys)), sealed_keys]
    parts += [_LEN.pack(len(evidence.commit)), evidence.commit, _LEN.pack(len(boxes))]
    for box, _ in boxes:
        parts += [_LEN.pack(len(box)), box]
    return b"".join(parts)


def parse_evidence(data: bytes) -> tuple[bytes, bytes, list[bytes]]:
    """An evidence body's parts, unopened: (sealed keys, commitment, inline boxes)."""
    if data[:4] != _MAGIC:
        raise AuditFailure("evidence has the wrong format")
    pos = 4

    def take(n: int) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(data):
            raise AuditFailure("evidence is truncated")
        chunk = data[pos : pos + n]
        pos += n
        return chunk

    sealed_keys = take(_LEN.unpack(take(4))[0])
    commit = take(_LEN.unpack(take(4))[0])
    count = _LEN.unpack(take(4))[0]
    if count > len(data) // 4:  # each box costs at least its length word
        raise AuditFailure("evidence is truncated")
    boxes = [take(_LEN.unpack(take(4))[0]) for _ in range(count)]
    if pos != len(data):
        raise AuditFailure("evidence has trailing bytes")
    return sealed_keys, commit, boxes


def open_evidence(
    data: bytes,
    *,
    job_id: str,
    round: int,
    audited: NodeId,
    keys: NodeKeys | None,
    auditor: NodeId,
    directory: Mapping[NodeId, PublicKeys],
    copies: Mapping[str, bytes | memoryview] | None = None,
    disclosed_key: bytes | None = None,
) -> Evidence:
    """Parse an evidence body and open its sealed keys; any fault is an ``AuditFailure``.

    Evidence without inline boxes takes them from ``copies``: the input boxes the
    audited aggregator forwarded as they reached it (``Kind.INPUT_COPY``). A
    third party judging an accusation opens the keys with the key the auditor
    disclosed for them (``disclosed_key``) instead of the auditor's ``keys``.
    """
    sealed_keys, commit, boxes_inline = parse_evidence(data)
    boxes: list[bytes | memoryview] = list(boxes_inline)
    try:
        env = open_envelope(
            sealed_keys,
            recipient_keys=keys,
            directory=directory,
            expect_job=job_id,
            expect_round=round,
            expect_recipient=auditor,
            max_bytes=len(sealed_keys),
            replay=None,  # the outer envelope was checked for replay
            disclosed_key=disclosed_key,
        )
    except InvalidEnvelope as exc:
        # Junk sealed by the audited, or a wrong key named by the auditor: only the two
        # of them know which, so a third party cannot blame either (accusation.py).
        failure = Undecidable if exc.reason == CANNOT_DECRYPT else AuditFailure
        raise failure(f"the evidence's keys: {exc.reason}") from None
    if env.sender != audited or env.kind != Kind.EVIDENCE or not env.sealed:
        raise AuditFailure("the evidence's keys are not sealed by the audited aggregator")
    inputs: list[str] = []
    disclosed: list[bytes] = []
    pos, payload = 0, env.payload
    try:
        while pos < len(payload):
            input_id, pos = decode_named(payload, pos)
            if pos + KEY_BYTES > len(payload):
                raise AuditFailure("the evidence's keys are truncated")
            inputs.append(input_id)
            disclosed.append(payload[pos : pos + KEY_BYTES])
            pos += KEY_BYTES
    except RemoteProtocolError as exc:
        raise AuditFailure(f"the evidence's keys: {exc}") from None
    if not boxes and copies is not None:
        missing = [i for i in inputs if i not in copies]
        if missing:
            raise Undecidable(f"no copy of input {missing[0]} reached the auditor")
        boxes = [copies[i] for i in inputs]
    if len(boxes) != len(inputs):
        raise AuditFailure("the evidence has a key for each box, no more and no fewer")
    return Evidence(commit, tuple(zip(boxes, disclosed, strict=True)), tuple(inputs))


def verify_evidence(
    evidence: Evidence,
    *,
    audited: NodeId,
    partial: PartialPayload,
    expected: Mapping[str, NodeId],
    leaf: bool,
    ring: Ring,
    length: int,
    directory: Mapping[NodeId, PublicKeys],
    job_id: str,
    round: int,
) -> None:
    """Raise ``AuditFailure`` unless ``partial`` is the sum of the committed inputs."""
    try:
        commit_env = open_envelope(
            evidence.commit,
            recipient_keys=None,
            directory=directory,
            expect_job=job_id,
            expect_round=round,
            expect_recipient=audited,
            max_bytes=MAX_ENVELOPE_BYTES,
            replay=None,
        )
    except InvalidEnvelope as exc:
        raise AuditFailure(f"commitment in evidence: {exc.reason}") from None
    if commit_env.sender != COORDINATOR or commit_env.kind != Kind.COMMIT:
        raise AuditFailure("evidence does not carry the coordinator's commitment")
    commit = decode_commit(commit_env.payload)
    if commit.group != partial.group or commit.included is None:
        raise AuditFailure("the commitment is for another group, or dropped it")
    acc = ShareAccumulator(length, ring)
    seen: set[str] = set()
    contributors = 0
    for box, key in evidence.boxes:
        input_id: str
        try:
            env = open_envelope(
                box,
                recipient_keys=None,
                directory=directory,
                expect_job=job_id,
                expect_round=round,
                expect_recipient=audited,
                max_bytes=MAX_SHARE_BYTES,
                replay=None,
                disclosed_key=key,
            )
        except InvalidEnvelope as exc:
            raise AuditFailure(f"an input box does not open: {exc.reason}") from None
        if leaf and env.kind == Kind.SHARE:
            share = decode_share(env.payload)
            input_id, ok = env.sender, share.group == partial.group
            ok = ok and share.position == partial.position and share.length == length
            acc_share, count = share.share, 1
        elif not leaf and env.kind == Kind.PARTIAL:
            child = decode_partial(env.payload)
            input_id, ok = child.group, child.position == partial.position
            ok = ok and child.words.shape[0] == length
            acc_share, count = FullShare(child.words), child.contributors
        else:
            raise AuditFailure("an input box has the wrong kind")
        if not ok or expected.get(input_id) != env.sender or input_id in seen:
            raise AuditFailure(f"input {input_id} is not a valid input of {partial.group}")
        seen.add(input_id)
        acc.add(acc_share)
        contributors += count
    if seen != set(commit.included):
        raise AuditFailure("the evidence does not cover exactly the committed inputs")
    if contributors != partial.contributors:
        raise AuditFailure("the sum claims a wrong number of contributors")
    if not (acc.value == partial.words).all():
        raise AuditFailure("the sum is not the sum of the committed inputs")

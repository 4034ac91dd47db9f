"""Audits: every partial sum is checked against what its aggregator received.

Theory of operation. An aggregator's output must be the sum of exactly the
inputs the coordinator committed. Alongside each sum it sends its auditor
(the aggregator at the same position one level up) the evidence:

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

The root group's sums go to the coordinator; it audits k-1 of them, chosen
after they arrive, so it never holds all k positions' inputs of one group.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from tessera.crypto.envelope import open_envelope
from tessera.crypto.fixedpoint import Ring
from tessera.crypto.keys import PublicKeys
from tessera.crypto.sharing import FullShare, ShareAccumulator
from tessera.errors import InvalidEnvelope, RemoteProtocolError
from tessera.ids import COORDINATOR, NodeId
from tessera.protocol.codec import PartialPayload, decode_commit, decode_partial, decode_share
from tessera.protocol.kinds import Kind
from tessera.protocol.limits import MAX_ENVELOPE_BYTES, MAX_SHARE_BYTES

_MAGIC = b"EVD1"
_LEN = struct.Struct("<I")
KEY_BYTES = 32


class AuditFailure(RemoteProtocolError):
    """The audited aggregator's sum does not match its evidence."""


@dataclass(frozen=True, slots=True)
class Evidence:
    commit: bytes  # the coordinator's signed commitment envelope
    boxes: tuple[tuple[bytes, bytes], ...]  # (original input envelope, its disclosed key)


def encode_evidence(evidence: Evidence) -> bytes:
    parts = [
        _MAGIC,
        _LEN.pack(len(evidence.commit)),
        evidence.commit,
        _LEN.pack(len(evidence.boxes)),
    ]
    for box, key in evidence.boxes:
        parts += [_LEN.pack(len(box)), box, key]
    return b"".join(parts)


def decode_evidence(data: bytes) -> Evidence:
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

    commit = take(_LEN.unpack(take(4))[0])
    count = _LEN.unpack(take(4))[0]
    boxes = []
    for _ in range(count):
        box = take(_LEN.unpack(take(4))[0])
        boxes.append((box, take(KEY_BYTES)))
    if pos != len(data):
        raise AuditFailure("evidence has trailing bytes")
    return Evidence(commit, tuple(boxes))


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

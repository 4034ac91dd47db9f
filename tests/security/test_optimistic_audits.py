"""Optimistic audits by reference: what a dishonest seat, relay or coordinator can do.

An audited seat forwards each input's box to its auditor as it arrives
(``Kind.INPUT_COPY``) and, once it has summed, sends only the commitment and the
disclosed keys, sealed for the auditor (``Kind.EVIDENCE``, clear outside). The
attacks: forge a copy; send copies as someone else; read the keys as the relay;
open the spared root position's boxes as the coordinator, which holds them all.
"""

from __future__ import annotations

import numpy as np
import pytest

from tessera.crypto.envelope import open_envelope, peek
from tessera.errors import InvalidEnvelope
from tessera.ids import COORDINATOR, NodeId
from tessera.protocol.aggregator import Aggregator, AggregatorRole
from tessera.protocol.audit import AuditFailure, open_evidence
from tessera.protocol.codec import decode_labelled, decode_named, encode_labelled, encode_named
from tessera.protocol.effects import Effect, RoundClosed
from tessera.protocol.kinds import Kind
from tessera.protocol.messages import AggregateRequest, Sealed
from tessera.protocol.node import Node
from tessera.protocol.secure_coordinator import SecureParams
from tessera.protocol.topology import TreeParams
from tessera.testing import MiniFederation, Update, secure_federation

SECURE = SecureParams(
    tree=TreeParams(k=3, group_size=4, fan_in=3, min_group=2),
    clip=1.0,
    max_weight=10.0,
    phase_timeout=1.0,
)


class ForgingCopies(Aggregator):
    """Sums honestly, but flips a byte of every input's box it forwards to its auditor."""

    def _copy(self, role: AggregatorRole, input_id: str, box: bytes) -> list[Effect]:
        forged = bytearray(box)
        forged[len(forged) // 2] ^= 0x01
        return super()._copy(role, input_id, bytes(forged))


DIRECTORY: dict = {}


def _federation() -> MiniFederation:
    fed = secure_federation(16, secure=SECURE, dim=3)
    DIRECTORY.clear()
    DIRECTORY.update(fed.coordinator.directory)  # type: ignore[attr-defined]
    return fed


def _updates(fed: MiniFederation) -> dict[NodeId, Update]:
    return {
        n: Update(
            delta=np.random.default_rng([5, i]).uniform(-0.3, 0.3, 3).astype(np.float32),
            num_samples=i + 1,
            loss=0.5,
        )
        for i, n in enumerate(sorted(fed.nodes))
    }


def _node(fed: MiniFederation, name: NodeId) -> Node:
    machine = fed.nodes[name]
    assert isinstance(machine, Node)
    return machine


def _leaf_seat(fed: MiniFederation) -> AggregateRequest:
    return next(
        w.message
        for w in fed.network.queue
        if isinstance(w.message, AggregateRequest) and w.message.leaf
    )


def _round(fed: MiniFederation) -> RoundClosed:
    fed.run()
    fed.train(_updates(fed))
    fed.settle(until=lambda: bool(fed.closed))
    return fed.closed[0]


def _sent(fed: MiniFederation, kind: Kind) -> list[tuple[NodeId, NodeId, bytes]]:
    return [
        (w.sender, w.recipient, w.message.data)
        for w in fed.delivered
        if isinstance(w.message, Sealed) and peek(w.message.data).kind == kind
    ]


def test_a_forged_copy_fails_the_audit_and_names_its_forwarder() -> None:
    fed = _federation()
    fed.begin()
    seat = _leaf_seat(fed)
    bad = next(w.recipient for w in fed.network.queue if w.message is seat)
    honest = _node(fed, bad).aggregator
    assert honest is not None
    _node(fed, bad).aggregator = ForgingCopies(
        bad, honest.job_id, honest.keys, honest.directory, honest.tree_check
    )
    closed = _round(fed)
    assert any(e.startswith(bad) and seat.group in e for e in closed.blamed), closed.blamed
    assert closed.skipped and bad in fed.coordinator.excluded  # type: ignore[attr-defined]


def test_copies_sent_as_someone_else_are_refused() -> None:
    fed = _federation()
    fed.begin()
    seat = _leaf_seat(fed)
    fed.run()
    fed.train(_updates(fed))

    def copies() -> list[tuple[NodeId, NodeId, bytes]]:
        sent = _sent(fed, Kind.INPUT_COPY)
        return [c for c in sent if decode_labelled(peek_payload(c[2]))[0] == seat.group]

    fed.run(until=lambda: bool(copies()))  # the round is still open
    copy = copies()[0]
    _, auditor, data = copy
    outsider = next(n for n in sorted(fed.nodes) if n not in (copy[0], auditor))
    machine = _node(fed, outsider).aggregator
    assert machine is not None
    _, _, body = decode_labelled(peek_payload(data))
    name, start = decode_named(body)
    payload = encode_labelled(seat.group, seat.position, encode_named(name, body[start:]))
    forged = machine.wire.send(auditor, Kind.INPUT_COPY, seat.round, payload, sealed=False)
    before = len(fed.refused)
    fed.inject(auditor, forged.message, sender=outsider)
    assert len(fed.refused) == before + 1
    assert "no inputs of" in fed.refused[-1][1].reason


def peek_payload(data: bytes) -> bytes:
    """A clear envelope's payload (copies and evidence are clear outside), checked."""
    header = peek(data)
    env = open_envelope(
        data,
        recipient_keys=None,
        directory=DIRECTORY,
        expect_job=header.job_id,
        expect_round=header.round,
        expect_recipient=header.recipient,
        max_bytes=len(data),
        replay=None,
    )
    assert not env.sealed
    return env.payload


def test_the_relay_sees_evidence_boxes_but_cannot_read_their_keys() -> None:
    fed = _federation()
    fed.begin()
    closed = _round(fed)
    assert closed.participants == 16 and not closed.blamed
    evidence = _sent(fed, Kind.EVIDENCE)
    assert evidence
    for sender, auditor, data in evidence:
        assert not peek(data).sealed  # no second encryption of what is ciphertext already
        _, _, body = decode_labelled(peek_payload(data))
        outsider = next(n for n in sorted(fed.nodes) if n not in (sender, auditor))
        keys = _node(fed, outsider).aggregator
        assert keys is not None
        with pytest.raises(AuditFailure, match="keys"):
            open_evidence(
                body,
                job_id=keys.job_id,
                round=0,
                audited=sender,
                keys=keys.keys,
                auditor=auditor,
                directory=keys.directory,
            )


def test_the_coordinator_holds_every_root_box_but_opens_only_k_minus_1_positions() -> None:
    fed = _federation()
    fed.begin()
    closed = _round(fed)
    assert closed.participants == 16 and not closed.blamed
    coordinator = fed.coordinator
    copies = [data for _, to, data in _sent(fed, Kind.INPUT_COPY) if to == COORDINATOR]
    positions = {decode_labelled(peek_payload(d))[1] for d in copies}
    assert positions == set(range(SECURE.tree.k))  # it holds every root position's boxes
    for data in copies:
        _, _, body = decode_labelled(peek_payload(data))
        _, start = decode_named(body)
        with pytest.raises(InvalidEnvelope):  # sealed for the root seat, not for it
            open_envelope(
                body[start:],
                recipient_keys=coordinator.keys,  # type: ignore[attr-defined]
                directory=DIRECTORY,
                expect_job=peek(body[start:]).job_id,
                expect_round=0,
                expect_recipient=None,
                max_bytes=len(body),
                replay=None,
            )
    evidence = [d for _, to, d in _sent(fed, Kind.EVIDENCE) if to == COORDINATOR]
    audited = {decode_labelled(peek_payload(d))[1] for d in evidence}
    assert len(audited) == SECURE.tree.k - 1  # the keys of k-1 positions, never all k


def _share_with_a_broken_signature(audit: bool) -> list:
    """Deliver one share whose signature bytes are flipped; what the aggregator refused."""
    from dataclasses import replace

    fed = secure_federation(16, secure=replace(SECURE, audit=audit), dim=3)
    fed.begin()
    fed.run()
    fed.train(_updates(fed))
    wire = fed.network.take(
        lambda w: isinstance(w.message, Sealed) and peek(w.message.data).kind == Kind.SHARE
    )
    broken = bytearray(wire.message.data)
    broken[-1] ^= 0x01  # the last byte of the Ed25519 signature
    before = len(fed.refused)
    fed.inject(wire.recipient, Sealed(bytes(broken)), sender=wire.sender)
    return fed.refused[before:]


def test_a_share_no_auditor_will_see_is_taken_without_its_signature_check() -> None:
    # Audits off: only its sender and the seat hold its key, so the AEAD authenticates
    # it; the signature (a SHA-256 pass and an Ed25519 check) would protect nobody.
    assert _share_with_a_broken_signature(audit=False) == []


def test_a_share_that_may_become_evidence_is_checked_on_arrival() -> None:
    # Audits on: the box is forwarded to the auditor; had the seat not checked the
    # signature, its sender could frame it with a box the signature disowns.
    refused = _share_with_a_broken_signature(audit=True)
    assert len(refused) == 1 and "signature" in refused[0][1].reason

"""Accusations the coordinator checks: an auditor can no longer frame an honest seat.

An auditor that accuses a child now sends the child's own signed messages as
proof (``protocol.accusation``), and the coordinator redoes the audit. The
attacks: a dishonest auditor accuses an honest child (the accuser is
excluded, not the child); it then doctors its proof anywhere, byte by byte
(never does the honest child come out guilty); a real tamperer is still
excluded on the proof.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tessera.protocol.aggregator as aggregator_module
from tessera.crypto.envelope import peek
from tessera.ids import COORDINATOR, NodeId
from tessera.protocol.accusation import Finding, Proof, decode_proof, encode_proof
from tessera.protocol.aggregator import Aggregator, AggregatorRole
from tessera.protocol.audit import AuditFailure
from tessera.protocol.codec import decode_accusation
from tessera.protocol.effects import Effect
from tessera.protocol.kinds import Kind
from tessera.protocol.messages import AggregateRequest, Sealed
from tessera.protocol.node import Node
from tessera.protocol.secure_coordinator import SecureParams
from tessera.protocol.topology import TreeParams
from tessera.protocol.wire import open_checked
from tessera.testing import MiniFederation, Update, secure_federation
from tessera.testing.adversaries import TamperingAggregator

SECURE = SecureParams(
    tree=TreeParams(k=3, group_size=4, fan_in=3, min_group=2),
    clip=1.0,
    max_weight=10.0,
    phase_timeout=1.0,
)


@contextmanager
def _every_audit_fails() -> Iterator[None]:
    real = aggregator_module.verify_evidence

    def made_up(*_: object, **__: object) -> None:
        raise AuditFailure("the sum is not the sum of the committed inputs")

    aggregator_module.verify_evidence = made_up  # type: ignore[assignment]
    try:
        yield
    finally:
        aggregator_module.verify_evidence = real


class LyingAuditor(Aggregator):
    """Sums honestly, but accuses every child it audits, with the child's real messages."""

    def _audit_child(
        self, role: AggregatorRole, child: str, evidence_in: tuple[bytes, bytes]
    ) -> list[Effect]:
        with _every_audit_fails():
            return super()._audit_child(role, child, evidence_in)


def _updates(fed: MiniFederation) -> dict[NodeId, Update]:
    return {
        n: Update(
            delta=np.random.default_rng([7, i]).uniform(-0.3, 0.3, 3).astype(np.float32),
            num_samples=i + 1,
            loss=0.5,
        )
        for i, n in enumerate(sorted(fed.nodes))
    }


def _node(fed: MiniFederation, name: NodeId) -> Node:
    machine = fed.nodes[name]
    assert isinstance(machine, Node)
    return machine


def _replace(fed: MiniFederation, name: NodeId, kind: type[Aggregator]) -> None:
    honest = _node(fed, name).aggregator
    assert honest is not None
    _node(fed, name).aggregator = kind(
        name, honest.job_id, honest.keys, honest.directory, honest.tree_check
    )


def _seat(fed: MiniFederation, *, leaf: bool) -> tuple[NodeId, AggregateRequest]:
    """A seat of this round, and who holds it (an upper seat audits its children)."""
    return next(
        (w.recipient, w.message)
        for w in fed.network.queue
        if isinstance(w.message, AggregateRequest) and w.message.leaf == leaf
    )


def _accusation_in_flight(fed: MiniFederation) -> Sealed | None:
    for w in fed.network.queue:
        if isinstance(w.message, Sealed) and peek(w.message.data).kind == Kind.ACCUSE:
            return w.message
    return None


def _run_to_accusation(kind: type[Aggregator], *, leaf: bool) -> tuple[MiniFederation, NodeId]:
    fed = secure_federation(16, secure=SECURE, dim=3)
    fed.begin()
    name, _ = _seat(fed, leaf=leaf)
    _replace(fed, name, kind)
    fed.run()
    fed.train(_updates(fed))
    fed.run(until=lambda: _accusation_in_flight(fed) is not None)
    return fed, name


def _proof_and_case(fed: MiniFederation) -> tuple[NodeId, Proof, dict]:
    """The accusation in flight, opened as the coordinator opens it, and its seat."""
    sealed = _accusation_in_flight(fed)
    assert sealed is not None
    coordinator = fed.coordinator
    env = open_checked(  # as the coordinator does, but leaving its replay guard alone
        sealed.data,
        node=COORDINATOR,
        job_id=coordinator.params.job_id,
        keys=coordinator.keys,  # type: ignore[attr-defined]
        directory=coordinator.directory,  # type: ignore[attr-defined]
        round=coordinator.round,
        max_bytes=len(sealed.data),
        replay=None,
    )
    accusation, proof = decode_accusation(env.payload)
    rs = coordinator._rs  # type: ignore[attr-defined]
    where = {
        "rs": rs,
        "group": rs.tree.group(accusation.group),
        "position": accusation.position,
        "accused": NodeId(accusation.accused),
        "accuser": NodeId(env.sender),
    }
    return NodeId(env.sender), decode_proof(proof), where


def _judge(fed: MiniFederation, proof: bytes, where: dict) -> Finding:
    judgement = fed.coordinator._judge(proof=proof, **where)  # type: ignore[attr-defined]
    return judgement.finding  # type: ignore[no-any-return]


def test_a_false_accusation_excludes_the_accuser_and_spares_the_child() -> None:
    fed, liar = _run_to_accusation(LyingAuditor, leaf=False)
    fed.settle(until=lambda: bool(fed.closed))
    closed = fed.closed[0]
    excluded = fed.coordinator.excluded  # type: ignore[attr-defined]
    assert closed.skipped  # its sum went up before the check: never applied
    assert liar in excluded and len(excluded) == 1, (excluded, closed.blamed)
    assert any(b.startswith(liar) and "falsely" in b for b in closed.blamed), closed.blamed


def test_a_real_tamperer_is_excluded_on_its_own_signed_messages() -> None:
    fed, tamperer = _run_to_accusation(TamperingAggregator, leaf=True)
    accuser, _, where = _proof_and_case(fed)
    assert where["accused"] == tamperer and accuser != COORDINATOR
    fed.settle(until=lambda: bool(fed.closed))
    assert set(fed.coordinator.excluded) == {tamperer}  # type: ignore[attr-defined]


def test_a_proof_without_a_copy_or_with_another_key_blames_nobody() -> None:
    fed, _ = _run_to_accusation(TamperingAggregator, leaf=True)
    _, proof, where = _proof_and_case(fed)
    assert _judge(fed, encode_proof(proof), where) is Finding.UPHELD
    assert proof.copies, "the auditor held copies: the evidence brought only keys"
    withheld = Proof(proof.partial, proof.partial_key, proof.evidence, proof.evidence_key)
    assert _judge(fed, encode_proof(withheld), where) is Finding.UNDECIDABLE
    other = bytes(b ^ 1 for b in proof.evidence_key)
    rekeyed = Proof(proof.partial, proof.partial_key, proof.evidence, other, proof.copies)
    assert _judge(fed, encode_proof(rekeyed), where) is Finding.UNDECIDABLE


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_doctored_proof_makes_an_honest_child_guilty(data: st.DataObject) -> None:
    fed, _ = _run_to_accusation(LyingAuditor, leaf=False)
    _, proof, where = _proof_and_case(fed)
    honest = encode_proof(proof)
    assert _judge(fed, honest, where) is Finding.FALSE
    # Flip any byte, cut anywhere, or drop the copies: the child never comes out guilty.
    how = data.draw(st.sampled_from(["flip", "cut", "drop"]))
    if how == "flip":
        at = data.draw(st.integers(0, len(honest) - 1))
        bit = data.draw(st.integers(1, 255))
        doctored = honest[:at] + bytes([honest[at] ^ bit]) + honest[at + 1 :]
    elif how == "cut":
        doctored = honest[: data.draw(st.integers(0, len(honest) - 1))]
    else:
        doctored = encode_proof(
            Proof(proof.partial, proof.partial_key, proof.evidence, proof.evidence_key)
        )
    assert _judge(fed, doctored, where) is not Finding.UPHELD


def test_an_accusation_lost_on_the_way_leaves_the_round_unapplied() -> None:
    """The auditor's notice that its checks are done must not vouch for a failed one:
    were the accusation dropped (by a relay, or for its size), the tampered sum
    would be applied."""
    fed, tamperer = _run_to_accusation(TamperingAggregator, leaf=True)
    lost = fed.network.take(
        lambda w: isinstance(w.message, Sealed) and peek(w.message.data).kind == Kind.ACCUSE
    )
    assert lost is not None
    fed.settle(until=lambda: bool(fed.closed))
    closed = fed.closed[0]
    assert closed.skipped, closed  # discarded at the audit deadline, never applied
    assert tamperer not in fed.coordinator.excluded  # type: ignore[attr-defined]

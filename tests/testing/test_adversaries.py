"""Every scripted adversary is caught or refused by the honest parties around it."""

from __future__ import annotations

import numpy as np

from tessera.ids import COORDINATOR, NodeId
from tessera.protocol.effects import RoundClosed
from tessera.protocol.messages import AggregateRequest, UpdateSubmission
from tessera.protocol.node import Node
from tessera.protocol.secure_coordinator import SecureParams
from tessera.protocol.topology import TreeParams
from tessera.testing import (
    MiniFederation,
    Replaying,
    TamperingAggregator,
    TruncatingContributor,
    Update,
    plaintext_federation,
    replay,
    secure_federation,
)

SECURE = SecureParams(
    tree=TreeParams(k=3, group_size=4, fan_in=3, min_group=2),
    clip=1.0,
    max_weight=10.0,
    phase_timeout=1.0,
)


def updates(fed: MiniFederation) -> dict[NodeId, Update]:
    return {
        n: Update(
            delta=np.random.default_rng([5, i]).uniform(-0.3, 0.3, 3).astype(np.float32),
            num_samples=i + 1,
            loss=0.5,
        )
        for i, n in enumerate(sorted(fed.nodes))
    }


def node(fed: MiniFederation, name: NodeId) -> Node:
    machine = fed.nodes[name]
    assert isinstance(machine, Node)
    return machine


def secure_round(fed: MiniFederation) -> RoundClosed:
    """Start, train every node that was asked, and let the deadlines settle the round."""
    fed.begin()
    fed.run()
    fed.train(updates(fed))
    fed.settle(until=lambda: bool(fed.closed))
    return fed.closed[0]


def honest_secure_round() -> RoundClosed:
    fed = secure_federation(9, secure=SECURE, dim=3)
    closed = secure_round(fed)
    assert fed.refused == [] and closed.participants == 9
    return closed


def leaf_seat(fed: MiniFederation) -> AggregateRequest:
    """Round 0's first leaf seat, read off the coordinator's queued requests."""
    return next(
        w.message
        for w in fed.network.queue
        if isinstance(w.message, AggregateRequest) and w.message.leaf
    )


def test_a_tampering_aggregator_is_named_the_round_discarded_and_it_excluded() -> None:
    # 16 nodes: a leaf's parent is not the root group. Audits are optimistic: the forged
    # sum was added upstream before its evidence was checked, so nothing is applied.
    fed = secure_federation(16, secure=SECURE, dim=3)
    fed.begin()
    seat = leaf_seat(fed)
    bad = next(w.recipient for w in fed.network.queue if w.message is seat)
    honest = node(fed, bad).aggregator
    assert honest is not None
    node(fed, bad).aggregator = TamperingAggregator(
        bad, honest.job_id, honest.keys, honest.directory, targets=(seat.group,)
    )
    fed.run()
    fed.train(updates(fed))
    fed.settle(until=lambda: bool(fed.closed))
    closed = fed.closed[0]
    assert any(e.startswith(bad) and seat.group in e for e in closed.blamed), closed.blamed
    assert closed.skipped and closed.participants == 0
    assert bad in fed.coordinator.excluded  # it serves and trains no more


def test_a_truncated_secure_update_is_refused_by_every_aggregator() -> None:
    fed = secure_federation(9, secure=SECURE, dim=3)
    bad = NodeId("node-004")
    honest = node(fed, bad).contributor
    node(fed, bad).contributor = TruncatingContributor(bad, honest.job_id, honest.secure)
    closed = secure_round(fed)
    refusals = [(seat, r) for seat, r in fed.refused if r.sender == bad]
    assert len(refusals) == SECURE.tree.k  # each of its k aggregators refused its share
    assert all("ring or model size" in r.reason for _, r in refusals)
    assert bad not in closed.included and closed.participants == 8


def test_a_replaying_node_changes_nothing_in_a_plaintext_round() -> None:
    def run(copies: int) -> tuple[MiniFederation, RoundClosed]:
        fed = plaintext_federation(nodes=3, dim=3, rounds=1)
        loud = NodeId("node-001")
        fed.hosts[loud].machine = Replaying(fed.nodes[loud], copies=copies)
        fed.begin()
        fed.run()
        fed.train(updates(fed))
        fed.run()
        return fed, fed.closed[0]

    fed, closed = run(copies=2)
    _, honest = run(copies=0)
    assert [(a, r.reason) for a, r in fed.refused] == [
        (COORDINATOR, "node-001 already answered round 0")
    ] * 2
    assert closed.weights.tobytes() == honest.weights.tobytes()


def test_a_replaying_secure_node_changes_nothing() -> None:
    fed = secure_federation(9, secure=SECURE, dim=3)
    loud = NodeId("node-002")
    fed.hosts[loud].machine = Replaying(fed.nodes[loud], lambda s: s.recipient != COORDINATOR)
    closed = secure_round(fed)
    copies = [r for _, r in fed.refused if r.sender == loud]
    assert copies and all("replay" in r.reason for r in copies), fed.refused
    assert closed.weights.tobytes() == honest_secure_round().weights.tobytes()


def test_a_captured_share_replayed_later_is_refused() -> None:
    fed = secure_federation(9, secure=SECURE, dim=3)
    fed.begin()
    fed.run()
    fed.train(updates(fed))
    share = next(w for w in fed.network.queue if w.kind is not None and w.sender != COORDINATOR)
    fed.settle(until=lambda: bool(fed.closed))
    before = len(fed.refused)
    replay(fed, share)
    assert len(fed.refused) == before + 1
    assert fed.refused[-1][0] == share.recipient


def test_a_replayed_update_after_the_round_is_refused() -> None:
    fed = plaintext_federation(nodes=2, dim=3, rounds=2)
    fed.begin()
    fed.run()
    fed.train(updates(fed))
    update = next(w for w in fed.network.queue if isinstance(w.message, UpdateSubmission))
    fed.run()
    replay(fed, update)
    assert fed.refused == [(COORDINATOR, fed.refused[0][1])]
    assert fed.refused[0][1].reason == "round 0 is not open"

"""Nodes refuse a tree that is not the public derivation: no hand-picked aggregators."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from tessera.crypto.keys import NodeKeys
from tessera.ids import COORDINATOR, JobId, NodeId
from tessera.protocol.aggregator import Aggregator
from tessera.protocol.contributor import Contributor, SecureContext
from tessera.protocol.effects import Rejected, RequestLocalTraining, StartTimer
from tessera.protocol.events import MessageReceived
from tessera.protocol.messages import AggregateRequest, SecureAssignment, TrainRequest
from tessera.protocol.params import RoundParams
from tessera.protocol.states import ContributorState
from tessera.protocol.topology import TreeParams
from tessera.protocol.treecheck import TreeCheck

JOB = JobId("tree-job")
NODES = [NodeId(f"n{i:02d}") for i in range(24)]
PARAMS = RoundParams(job_id=JOB, rounds=3, fraction=0.75, seed=4)
TREE = TreeParams(k=3, group_size=4, fan_in=3, min_group=2, backups=1)
CHECK = TreeCheck(PARAMS, NODES, TREE)


def honest_assignment(node: NodeId, round: int = 1) -> SecureAssignment:
    tree = CHECK.tree(round)
    group = tree.leaf_of(node)
    return SecureAssignment(
        group=group.id,
        aggregators=group.aggregators,
        backups=group.backups,
        full_position=0,
        ring_bits=32,
        frac_bits=16,
        ring_terms=18,
        clip=1.0,
        max_weight=10.0,
        loss_cap=20.0,
        tree_digest=tree.digest(),
    )


def a_contributor(round: int = 1) -> NodeId:
    return CHECK.tree(round).leaves[0].members[0]


def test_the_honest_assignment_passes() -> None:
    node = a_contributor()
    assert CHECK.assignment_problem(node, 1, honest_assignment(node)) is None


def test_a_swapped_aggregator_or_a_foreign_digest_is_caught() -> None:
    node = a_contributor()
    honest = honest_assignment(node)
    outsider = next(n for n in NODES if n not in honest.aggregators and n != node)
    forged = replace(honest, aggregators=(outsider, *honest.aggregators[1:]))
    assert "aggregators" in (CHECK.assignment_problem(node, 1, forged) or "")
    assert "derivation" in (
        CHECK.assignment_problem(node, 1, replace(honest, tree_digest="0" * 64)) or ""
    )
    other_group = next(g for g in CHECK.tree(1).leaves if node not in g.members)
    moved = replace(honest, group=other_group.id)
    assert "not a member" in (CHECK.assignment_problem(node, 1, moved) or "")


def test_a_contributor_refuses_a_forged_tree_and_stays_idle() -> None:
    node = a_contributor()
    keys = NodeKeys.from_seed(bytes(32))
    ctx = SecureContext(
        keys=keys,
        directory={node: keys.public},
        tree_check=CHECK,
    )
    k = Contributor(node, JOB, ctx)
    honest = honest_assignment(node)
    forged = replace(honest, aggregators=tuple(reversed(honest.aggregators)))

    def request(a: SecureAssignment) -> MessageReceived:
        msg = TrainRequest(
            job_id=JOB, round=1, weights=np.zeros(3, np.float32), deadline=9.0, secure=a
        )
        return MessageReceived(sender=COORDINATOR, message=msg)

    (rejected,) = k.handle(request(forged), 0.0)
    assert isinstance(rejected, Rejected) and "aggregators" in rejected.reason
    assert k.state is ContributorState.IDLE and k.round == -1
    (ok,) = k.handle(request(honest), 0.0)
    assert isinstance(ok, RequestLocalTraining)


def test_an_aggregator_refuses_a_role_outside_the_derived_tree() -> None:
    tree = CHECK.tree(1)
    group = tree.leaves[0]
    seat = group.aggregators[1]
    stranger = next(n for n in NODES if n not in group.aggregators and n not in group.backups)
    keys = NodeKeys.from_seed(bytes(32))

    def role(node: NodeId) -> list:
        request = AggregateRequest(
            job_id=JOB,
            round=1,
            group=group.id,
            position=1,
            inputs=group.members,
            senders=group.members,
            leaf=True,
            parent=COORDINATOR,
            parent_group="",
            report_at=5.0,
            ring_bits=32,
            frac_bits=16,
            ring_terms=18,
            length=5,
            tree_digest=tree.digest(),
        )
        agg = Aggregator(node, JOB, keys, {}, CHECK)
        return agg.handle(MessageReceived(sender=COORDINATOR, message=request), 0.0)

    (refused,) = role(stranger)
    assert isinstance(refused, Rejected) and "no seat" in refused.reason
    (timer,) = role(seat)
    assert isinstance(timer, StartTimer)


def test_a_role_whose_audit_flags_are_not_the_jobs_is_refused() -> None:
    tree = CHECK.tree(1)
    leaf = tree.leaves[0]
    assert leaf.parent is not None  # a leaf below an upper group: its sums are audited
    honest = AggregateRequest(
        job_id=JOB,
        round=1,
        group=leaf.id,
        position=0,
        inputs=leaf.members,
        senders=leaf.members,
        leaf=True,
        parent=tree.group(leaf.parent).aggregators[0],
        parent_group=leaf.parent,
        report_at=5.0,
        ring_bits=32,
        frac_bits=16,
        ring_terms=18,
        length=5,
        tree_digest=tree.digest(),
        audit_fraction=1.0,
        send_evidence=True,
    )
    every = TreeCheck(PARAMS, NODES, TREE, audit=(True, 1.0))
    node = leaf.aggregators[0]
    assert every.role_problem(node, honest) is None
    turned_down = [
        replace(honest, send_evidence=False),  # audits silently off
        replace(honest, audit_fraction=0.01),  # audits nearly off
        replace(honest, send_evidence=False, evidence_on_request=True),  # sampled, undeclared
    ]
    for forged in turned_down:
        assert "audit settings" in (every.role_problem(node, forged) or "")
    sampled = TreeCheck(PARAMS, NODES, TREE, audit=(True, 0.25))
    on_request = replace(honest, audit_fraction=0.25, send_evidence=False, evidence_on_request=True)
    assert sampled.role_problem(node, on_request) is None
    assert "audit settings" in (sampled.role_problem(node, honest) or "")
    upper = tree.group(leaf.parent)
    parent_role = replace(
        honest,
        group=upper.id,
        inputs=upper.children,
        senders=tuple(tree.group(c).aggregators[0] for c in upper.children),
        leaf=False,
        parent=COORDINATOR if upper.parent is None else tree.group(upper.parent).aggregators[0],
        send_evidence=upper.parent is not None,
        evidence_on_request=upper.parent is None,
        audit={c: (True, {}) for c in upper.children},
    )
    assert every.role_problem(upper.aggregators[0], parent_role) is None
    unaudited = replace(parent_role, audit={})  # the parent told to check no child
    assert "audit settings" in (every.role_problem(upper.aggregators[0], unaudited) or "")


def test_a_tree_that_shows_a_node_two_positions_is_refused(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Should the derivation ever seat a node at two positions a group (its seat in a
    leaf, and a seat of the leaf's parent at another position), every role and
    assignment of that round is refused, naming the node and both seats."""
    from tessera.protocol import treecheck

    honest = CHECK.tree(1)
    leaf = honest.leaves[0]
    parent = honest.group(leaf.parent or "")
    node = leaf.aggregators[0]
    forged_parent = replace(parent, aggregators=(*parent.aggregators[:2], node))
    groups = tuple(forged_parent if g.id == parent.id else g for g in honest.groups)
    forged = replace(honest, groups=groups)
    monkeypatch.setattr(treecheck, "derive_tree", lambda **_: forged)
    check = TreeCheck(PARAMS, NODES, TREE)
    member = leaf.members[0]
    problem = check.assignment_problem(member, 1, honest_assignment(member))
    assert problem == (
        f"the tree lets a node see two positions of a group: {node} sees two positions "
        f"of group {leaf.id}: as seat {leaf.id} position 0 and as seat {parent.id} position 2"
    )
    role = AggregateRequest(
        job_id=JOB,
        round=1,
        group=parent.id,
        position=2,
        inputs=parent.children,
        senders=tuple(honest.group(c).aggregators[2] for c in parent.children),
        leaf=False,
        parent=node,
        parent_group="",
        report_at=5.0,
        ring_bits=32,
        frac_bits=16,
        ring_terms=18,
        length=5,
        tree_digest=forged.digest(),
    )
    assert problem == check.role_problem(node, role)

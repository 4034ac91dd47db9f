"""What a dishonest coordinator could do to a contributor's update in a secure job.

1. Ask for it in the clear: a train request without a secure assignment, sent to
   a node of a secure job, made the node submit its raw update to the
   coordinator (the plaintext path). A secure job's node now refuses it.
2. Shrink a private job's noise: the noise is integer, in ring units, so a
   coordinator choosing a finer scale (more fraction bits) would shrink it in
   real units. A private job's node refuses any scale but the job's.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tessera.crypto.keys import NodeKeys
from tessera.ids import COORDINATOR, JobId, NodeId
from tessera.protocol.contributor import Contributor, SecureContext
from tessera.protocol.effects import Rejected, RequestLocalTraining
from tessera.protocol.events import MessageReceived
from tessera.protocol.messages import SecureAssignment, TrainRequest
from tessera.protocol.noise import PrivacyParams
from tessera.protocol.params import RoundParams
from tessera.protocol.topology import TreeParams
from tessera.protocol.treecheck import TreeCheck

NODES = [NodeId(f"n{i}") for i in range(6)]
PRIVACY = PrivacyParams(epsilon=3.0, delta=1e-5, variance=1e12, frac_bits=16, l1=1e6, l2=1e6)


def _node(privacy: PrivacyParams | None) -> tuple[Contributor, SecureAssignment]:
    check = TreeCheck(
        RoundParams(job_id=JobId("j"), rounds=2), NODES, TreeParams(k=3, group_size=2, fan_in=3)
    )
    tree = check.tree(0)
    group = tree.leaves[0]
    keys = NodeKeys.from_seed(bytes(32))
    node = Contributor(group.members[0], JobId("j"), SecureContext(keys, {}, check, privacy))
    assignment = SecureAssignment(
        group=group.id,
        clip=1.0,
        aggregators=group.aggregators,
        backups=group.backups,
        full_position=0,
        ring_bits=64,
        frac_bits=16,
        ring_terms=tree.contributors,
        max_weight=1.0,
        loss_cap=20.0,
        tree_digest=tree.digest(),
    )
    return node, assignment


def _ask(node: Contributor, secure: SecureAssignment | None) -> object:
    request = TrainRequest(
        job_id=JobId("j"), round=0, weights=np.zeros(2, np.float32), deadline=9.0, secure=secure
    )
    [effect] = node.handle(MessageReceived(sender=COORDINATOR, message=request), 0.0)
    return effect


def test_a_secure_jobs_node_never_trains_for_a_plaintext_submission() -> None:
    node, assignment = _node(None)
    refused = _ask(node, None)
    assert isinstance(refused, Rejected) and "secure" in refused.reason
    node, assignment = _node(None)
    assert isinstance(_ask(node, assignment), RequestLocalTraining)  # the honest request


def test_a_private_jobs_node_refuses_a_finer_scale() -> None:
    node, assignment = _node(PRIVACY)
    refused = _ask(node, replace(assignment, frac_bits=24))
    assert isinstance(refused, Rejected) and "16 fraction bits" in refused.reason
    node, assignment = _node(PRIVACY)
    assert isinstance(_ask(node, assignment), RequestLocalTraining)


def _ask_round(node: Contributor, secure: SecureAssignment, round: int) -> object:
    request = TrainRequest(
        job_id=JobId("j"), round=round, weights=np.zeros(2, np.float32), deadline=9.0, secure=secure
    )
    [effect] = node.handle(MessageReceived(sender=COORDINATOR, message=request), 0.0)
    return effect


@pytest.mark.parametrize("privacy", [None, PRIVACY])
def test_a_node_trains_no_round_past_the_jobs_rounds(privacy: PrivacyParams | None) -> None:
    """The job has 2 rounds: a third would release the user's data once more than
    consented to (and past what a private job's noise was calibrated for)."""
    node, assignment = _node(privacy)
    assert isinstance(_ask_round(node, assignment, 0), RequestLocalTraining)
    node, _ = _node(privacy)
    refused = _ask_round(node, assignment, 2)
    assert isinstance(refused, Rejected) and "past the job's 2 training rounds" in refused.reason


def test_quality_words_only_for_a_job_that_discloses_group_sums() -> None:
    node, assignment = _node(None)  # a job without [contributions]
    refused = _ask(node, replace(assignment, quality=5))
    assert isinstance(refused, Rejected) and "no group sums" in refused.reason


def test_a_private_jobs_node_refuses_a_weight_factor() -> None:
    """A private job divides its total by the count of the included: a factor below 1
    would shrink one contributor's share of the noise budget unseen, so it is refused."""
    node, assignment = _node(PRIVACY)
    refused = _ask(node, replace(assignment, weight=0.5))
    assert isinstance(refused, Rejected) and "alike" in refused.reason
    node, assignment = _node(None)  # a job without privacy takes it
    assert isinstance(_ask(node, replace(assignment, weight=0.5)), RequestLocalTraining)


def test_a_leaf_seat_refuses_to_sum_one_contributor_whatever_the_job() -> None:
    """3. A total of one: with no group sums disclosed, nothing checked the size of a
    leaf commitment, so a coordinator committing one contributor at one leaf (and
    dropping every other group) decoded one contributor's update as the round's
    "total". A leaf seat now refuses a commitment below the tree's min_group."""
    from tests.security.test_group_sums import (
        JOB_SECURE,
        _commit_of,
        _from_coordinator,
        _hold,
        federation,
    )

    from tessera.protocol.codec import Commit, encode_commit
    from tessera.protocol.effects import Send as SendEffect
    from tessera.protocol.kinds import Kind
    from tessera.testing import fixed_updates

    fed = federation(JOB_SECURE, JOB_SECURE)  # no group sums, no privacy: a plain job
    _hold(fed, Kind.COMMIT)
    fed.begin()
    fed.run()
    fed.answer(fixed_updates(fed))
    fed.run()
    held = fed.network.held[0]
    commit = _commit_of(fed, held)
    assert commit.included is not None and len(commit.included) >= 2
    one = encode_commit(Commit(commit.group, commit.included[:1]))  # one person's update
    effects = _from_coordinator(fed, held.recipient, Kind.COMMIT, one)
    assert not [e for e in effects if isinstance(e, SendEffect)]  # nothing summed, sent
    assert any("below the tree's min_group of 2" in r.reason for _, r in fed.refused)

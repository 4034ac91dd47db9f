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

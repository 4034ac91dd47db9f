"""Issue 14, item 6: a node seated in a group and in its parent saw two positions.

Seats were filled group by group, excluding only the group's members and its
other seats, so one node could hold seat j' of a leaf group and seat j of the
parent. It then received the leaf's position-j' shares (its own inputs) and,
auditing the leaf's seat j, every member's position-j share with its key: two
positions of every member's update. With k = 3 one colluder at the third
position read every member's update: 2 nodes instead of k.

The attack here reads what the coordinator's own aggregate requests hand each
node at a round's open (its inputs, and the inputs of the seats it audits),
for federations of 12 to 29 nodes, and asks whether any node is handed two
positions of one group. Before the fix most of these federations had such a
node (12 nodes: node-000 handed L0's positions 1 and 2, node-004 positions 0
and 1); now the derivation forbids it (``topology.seen_twice``).
"""

from __future__ import annotations

import pytest

from tessera.ids import NodeId
from tessera.protocol.messages import AggregateRequest
from tessera.protocol.secure_coordinator import SecureParams
from tessera.protocol.topology import TreeParams
from tessera.testing import secure_federation

SECURE = SecureParams(
    tree=TreeParams(k=3, group_size=4, fan_in=3, min_group=2, backups=1),
    clip=1.0,
    max_weight=10.0,
    phase_timeout=1.0,
)  # audits on: the default


def handed(req: AggregateRequest, groups: set[str]) -> set[str]:
    """The groups of which ``req``'s seat receives position ``req.position``: its own
    (its inputs), its children (their sums), the audited children and their inputs
    (each box with its key: a leaf child's members' shares one by one)."""
    seen = {req.group}
    if not req.leaf:
        seen.update(req.inputs)
    for child, (_, senders) in req.audit.items():
        seen.add(child)
        seen.update(i for i in senders if i in groups)
    return seen


@pytest.mark.parametrize("n", range(12, 30))
def test_no_node_is_handed_two_positions_of_a_group(n: int) -> None:
    fed = secure_federation(n, secure=SECURE, dim=2)
    fed.begin()
    requests = [w.message for w in fed.network.queue if isinstance(w.message, AggregateRequest)]
    holders = {
        (w.message.group, w.message.position): w.recipient
        for w in fed.network.queue
        if isinstance(w.message, AggregateRequest)
    }
    groups = {g for g, _ in holders}
    positions: dict[tuple[NodeId, str], set[int]] = {}
    for req in requests:
        node = holders[(req.group, req.position)]
        for group in handed(req, groups):
            positions.setdefault((node, group), set()).add(req.position)
    twice = {key: seen for key, seen in positions.items() if len(seen) > 1}
    assert twice == {}, f"nodes handed two positions of a group: {twice}"

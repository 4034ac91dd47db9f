"""Finding 6: a revocation must not slow every later round to its timeout.

The kit's federation never fires a timer unless a test does, so an honest
round closes on message flow alone and a stalled one shows no RoundClosed.
Before the fix a withdrawn member was simply not asked to train: its leaf
aggregators waited for its share, and its own aggregator seats stayed silent,
until their deadlines, in every later round.
"""

from __future__ import annotations

from tests.protocol.secure_kit import Federation, honest_updates

from tessera.ids import COORDINATOR, NodeId
from tessera.protocol.events import JobStarted, ParticipantWithdrawn

#: 12 nodes, not the kit's 8: a backup may hold no other role within two levels of its
#: group (no node sees two positions of a group), and 8 nodes leave no group a backup.
TWELVE = tuple(NodeId(f"n{i}") for i in range(12))


def test_a_withdrawn_node_leaves_the_round_at_once() -> None:
    fed = Federation(nodes=TWELVE)
    gone = TWELVE[3]
    fed.handle(COORDINATOR, ParticipantWithdrawn(node=gone))
    fed.handle(COORDINATOR, JobStarted())
    fed.run()
    tree = fed.coordinator._rs.tree  # type: ignore[union-attr]
    assert tree.roles_of(gone) and all(tree.group(g).backups for g, _ in tree.roles_of(gone))
    assert set(fed.training) == set(TWELVE) - {gone}
    fed.train({n: u for n, u in honest_updates(TWELVE).items() if n != gone})
    fed.run()
    closed = fed.closed_round()  # no timer fired: nobody waited for the withdrawn node
    assert not closed.skipped
    assert set(closed.included) == set(TWELVE) - {gone}
    roles = [w for w in fed.delivered if w.recipient == gone]
    assert roles == [], f"the withdrawn node was still sent {len(roles)} message(s)"

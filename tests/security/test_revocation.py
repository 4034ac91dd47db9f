"""Finding 6: a revocation must not slow every later round to its timeout.

The kit's federation never fires a timer unless a test does, so an honest
round closes on message flow alone and a stalled one shows no RoundClosed.
Before the fix a withdrawn member was simply not asked to train: its leaf
aggregators waited for its share, and its own aggregator seats stayed silent,
until their deadlines, in every later round.
"""

from __future__ import annotations

from tests.protocol.secure_kit import NODES, Federation, honest_updates

from tessera.ids import COORDINATOR
from tessera.protocol.events import JobStarted, ParticipantWithdrawn


def test_a_withdrawn_node_leaves_the_round_at_once() -> None:
    fed = Federation()
    gone = NODES[3]
    fed.handle(COORDINATOR, ParticipantWithdrawn(node=gone))
    fed.handle(COORDINATOR, JobStarted())
    fed.run()
    assert set(fed.training) == set(NODES) - {gone}
    fed.train({n: u for n, u in honest_updates().items() if n != gone})
    fed.run()
    closed = fed.closed_round()  # no timer fired: nobody waited for the withdrawn node
    assert not closed.skipped
    assert set(closed.included) == set(NODES) - {gone}
    roles = [w for w in fed.delivered if w.recipient == gone]
    assert roles == [], f"the withdrawn node was still sent {len(roles)} message(s)"

"""``SecureCoordinator.relay_problem``: which node-to-node envelopes the open round's tree asks for.

The relay asks it before storing an envelope; here the machine is asked
directly, over the kit's federation (two leaf groups under one root).
"""

from __future__ import annotations

from tests.protocol.secure_kit import NODES, Federation

from tessera.ids import COORDINATOR, NodeId
from tessera.protocol.events import JobStarted
from tessera.protocol.kinds import Kind


def test_no_round_no_relay() -> None:
    fed = Federation()
    assert fed.coordinator.relay_problem(NODES[0], NODES[1], Kind.SHARE) == "no round is open"


def test_the_trees_roles_decide_who_may_send_what_to_whom() -> None:
    fed = Federation()
    fed.handle(COORDINATOR, JobStarted())
    ask = fed.coordinator.relay_problem
    leaf, root = fed.leaves()[0], fed.root()
    member = fed.members(leaf)[0]
    seat, root_seat = fed.seat(leaf, 0), fed.seat(root, 0)
    tree = fed.coordinator._rs.tree if fed.coordinator._rs else None
    assert tree is not None
    serving_root = {*tree.root.aggregators, *tree.root.backups}
    outsider = next(n for n in NODES if n not in serving_root)  # serves no group above a leaf

    assert ask(member, seat, Kind.SHARE) is None
    assert "serves no seat" in str(ask(member, fed.members(leaf)[1], Kind.SHARE))
    assert "contributes to no group" in str(ask(NodeId("stranger"), seat, Kind.SHARE))
    # Sums and evidence go up, to the group that sums or audits them; requests come down.
    assert ask(seat, root_seat, Kind.PARTIAL) is None
    assert ask(root_seat, COORDINATOR, Kind.PARTIAL) is None
    assert ask(seat, root_seat, Kind.EVIDENCE) is None
    assert ask(root_seat, seat, Kind.AUDIT_REQUEST) is None
    assert "feeds one" in str(ask(seat, outsider, Kind.PARTIAL))
    assert "feeds one" in str(ask(outsider, seat, Kind.AUDIT_REQUEST))
    assert ask(seat, COORDINATOR, Kind.REPORT) is None  # the coordinator's own machine decides

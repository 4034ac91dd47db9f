"""Finding 3: a coordinator walks one backup through several positions of a group.

With two or more backups per group, the coordinator could "replace" position
0 by backup b1, then position 0 again by b2 (b1 "failed"), then position 1
by b1: the seats are distinct at every instant, yet b1 has received share 0
and share 1 of every member. With k = 2 that is each member's whole update.
A node holds at most one position of a group per round: the contributor
never seals a second share for a node it already gave one, and an honest
backup refuses a second position of the same group.
"""

from __future__ import annotations

import numpy as np

from tessera.crypto.envelope import open_envelope
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.ids import COORDINATOR, JobId, NodeId
from tessera.protocol.codec import Reassign, encode_reassign
from tessera.protocol.contributor import Contributor, SecureContext
from tessera.protocol.effects import Rejected, Send
from tessera.protocol.events import LocalUpdateReady, MessageReceived
from tessera.protocol.kinds import Kind
from tessera.protocol.messages import Sealed, SecureAssignment, TrainRequest
from tessera.protocol.wire import Wire

JOB = JobId("walk")
ME = NodeId("victim")
SEATS = (NodeId("a0"), NodeId("a1"))
BACKUPS = (NodeId("b1"), NodeId("b2"), NodeId("b3"))


def _keys(name: str) -> NodeKeys:
    return NodeKeys.from_seed(f"tessera-tests|walk|{name}".encode())


KEYS = {n: _keys(n) for n in (ME, COORDINATOR, *SEATS, *BACKUPS)}
DIRECTORY: dict[NodeId, PublicKeys] = {n: k.public for n, k in KEYS.items()}
COORD = Wire(COORDINATOR, JOB, KEYS[COORDINATOR], DIRECTORY)


def _assignment() -> SecureAssignment:
    return SecureAssignment(
        group="L0",
        aggregators=SEATS,
        backups=BACKUPS,
        full_position=0,
        ring_bits=64,
        frac_bits=40,
        ring_terms=8,
        clip=1.0,
        max_weight=100.0,
        loss_cap=20.0,
        tree_digest="0" * 64,
    )


def _reassign(position: int, replacement: NodeId) -> MessageReceived:
    notice = encode_reassign(Reassign("L0", position, replacement))
    send = COORD.send(ME, Kind.RESEND_SHARE, 0, notice, sealed=False)
    return MessageReceived(sender=COORDINATOR, message=send.message)


def _share_recipients(effects: list) -> list[tuple[NodeId, int]]:
    """(recipient, position) of every share the effects send."""
    out = []
    for effect in effects:
        if isinstance(effect, Send) and isinstance(effect.message, Sealed):
            env = open_envelope(
                effect.message.data,
                directory=DIRECTORY,
                recipient_keys=KEYS[effect.recipient],
                expect_job=JOB,
                expect_round=0,
                expect_recipient=effect.recipient,
                max_bytes=1 << 20,
                replay=None,
            )
            assert env.kind == Kind.SHARE
            out.append((effect.recipient, _position(env.payload)))
    return out


def _position(payload: bytes) -> int:
    from tessera.protocol.codec import decode_share

    return decode_share(payload).position


def test_a_contributor_never_gives_one_node_two_positions() -> None:
    victim = Contributor(ME, JOB, SecureContext(keys=KEYS[ME], directory=DIRECTORY))
    request = TrainRequest(
        job_id=JOB, round=0, weights=np.zeros(4, np.float32), deadline=100.0, secure=_assignment()
    )
    victim.handle(MessageReceived(sender=COORDINATOR, message=request), 0.0)
    update = LocalUpdateReady(round=0, delta=np.full(4, 0.1, np.float32), num_samples=5, loss=0.3)
    given = _share_recipients(victim.handle(update, 1.0))
    assert given == [(SEATS[0], 0), (SEATS[1], 1)]

    given += _share_recipients(victim.handle(_reassign(0, BACKUPS[0]), 2.0))  # b1 takes share 0
    given += _share_recipients(victim.handle(_reassign(0, BACKUPS[1]), 3.0))  # b1 "fails"
    walked = victim.handle(_reassign(1, BACKUPS[0]), 4.0)  # and comes back for share 1
    given += _share_recipients(walked)

    positions_of_b1 = {p for node, p in given if node == BACKUPS[0]}
    assert positions_of_b1 == {0}, "one node received two shares of the victim's update"
    assert any(isinstance(e, Rejected) and "already" in e.reason for e in walked)


def test_an_honest_aggregator_refuses_a_second_position_of_one_group() -> None:
    from dataclasses import replace

    from tests.protocol.secure_kit import Federation

    fed = Federation()
    fed.start()
    (holder, first) = fed.requests[("L0", 0)]
    second = replace(first, position=1)
    effects = fed.handle(holder, MessageReceived(sender=COORDINATOR, message=second))
    assert [e for e in effects if isinstance(e, Rejected) and "already serving L0" in e.reason]
    assert ("L0", 1) not in fed.nodes[holder].aggregator.roles

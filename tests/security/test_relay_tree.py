"""Finding 5 (the tree): the relay takes only what a role of the open round may send.

Beyond round, kind, size and quota, the coordinator now checks each
node-to-node envelope against the open round's tree: a share only from a
leaf group's member to one of that group's seats (or backups), a partial sum
or evidence only up to a group that sums or audits the sender's, an audit
request only down. Before, any participant could park envelopes for any
other in the current round (up to its quota).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.coordinator.coordinator_kit import AI, Harness, Node, beacon_secret, job_id, post_mail
from tests.security.test_tree_seed import NAMES, _frozen, _reveal, _secure_job

from tessera.crypto.documents import SignedDocument, sign_document
from tessera.crypto.envelope import seal
from tessera.ids import COORDINATOR
from tessera.protocol import SecureCoordinator
from tessera.protocol.kinds import Kind


@pytest.fixture
def coord(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "coordinator.db")
    yield harness
    harness.stop()


def test_a_share_goes_only_to_a_seat_of_the_senders_group(coord: Harness) -> None:
    doc, nodes = _frozen(coord)
    jid = job_id(doc)
    for node in nodes.values():
        assert _reveal(coord, doc, node, beacon_secret(node.id)) == 200
    coord.wait_for("round 0 open", lambda s: s["current_round"] == 0, jid)
    machine = coord.service.drivers[jid].machine
    assert isinstance(machine, SecureCoordinator)
    tree = machine._rs.tree if machine._rs else None
    assert tree is not None
    leaf = tree.leaf_of(NAMES[0])  # type: ignore[arg-type]
    sender = nodes[NAMES[0]]
    peer = next(m for m in leaf.members if m != sender.id)  # same group: holds no seat of it
    seat = leaf.aggregators[0]

    def share(to: str) -> int:
        data = seal(
            kind=int(Kind.SHARE),
            job_id=jid,
            round=0,
            sender=sender.id,
            recipient=to,
            payload=b"\x00" * 64,
            sender_keys=sender.keys,
            recipient_public=nodes[to].keys.public,
        )
        answer = post_mail(coord, data)
        if answer.status_code == 403:
            assert "the round's tree expects no such envelope" in answer.json()["detail"]
        return answer.status_code

    assert share(peer) == 403
    assert share(seat) == 202  # the same envelope to a seat of its group is relayed


def _disclosing_job(disclose: bool) -> tuple[SignedDocument, bytes]:
    """The seed tests' secure job, with ``[contributions]`` when ``disclose``."""
    doc, weights = _secure_job()
    if not disclose:
        return doc, weights
    body = {**doc.body, "config": {**doc.body["config"], "contributions": {"min_group": 2}}}
    return sign_document(AI, "job", body), weights


@pytest.mark.parametrize("disclose", [True, False])
def test_a_group_sum_goes_only_from_a_leaf_seat_to_the_coordinator(
    coord: Harness, disclose: bool
) -> None:
    doc, weights = _disclosing_job(disclose)
    coord.submit(doc, weights)
    nodes = {name: Node.make(name) for name in NAMES}
    for node in nodes.values():
        coord.register(node.keys, node.id)
        assert coord.consent(doc, node).status_code == 201
    jid = job_id(doc)
    for node in nodes.values():
        assert _reveal(coord, doc, node, beacon_secret(node.id)) == 200
    coord.wait_for("round 0 open", lambda s: s["current_round"] == 0, jid)
    machine = coord.service.drivers[jid].machine
    assert isinstance(machine, SecureCoordinator) and machine._rs is not None
    seat = machine._rs.tree.leaves[0].aggregators[0]
    other = next(n for n in NAMES if n != seat)

    def group_sum(to: str) -> httpx.Response:
        data = seal(
            kind=int(Kind.GROUP_SUM),
            job_id=jid,
            round=0,
            sender=seat,
            recipient=to,
            payload=b"\x00" * 64,
            sender_keys=nodes[seat].keys,
            recipient_public=None,
        )
        return post_mail(coord, data)

    answer = group_sum(COORDINATOR)
    if disclose:
        assert answer.status_code == 202
        refused = group_sum(other)
        assert refused.status_code == 400 and "never goes to" in refused.json()["detail"]
    else:  # a job that never signed up: nobody sends one
        assert answer.status_code == 403
        assert "sends no group_sum envelopes" in answer.json()["detail"]

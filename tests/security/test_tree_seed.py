"""Finding 2 (the seed): the coordinator can neither predict nor grind the trees.

Before: the tree seed was a function of the job id, the round and the
participants only, all known to the coordinator when it chose whom to admit,
so it could try participant lists until a tree it liked came out. Now every
tree seed also holds the job's beacon: a hash of a secret from every
participant, committed in their attestations before the participants are
frozen and revealed only after. The rounds wait for every reveal; a wrong or
missing one is refused, and a job whose participants do not all reveal fails.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.coordinator.coordinator_kit import (
    AI,
    Harness,
    Node,
    beacon_secret,
    job_id,
    tiny_job,
)

from tessera.crypto.documents import SignedDocument, sign_document
from tessera.crypto.keys import NodeKeys
from tessera.errors import RemoteProtocolError
from tessera.ids import NodeId
from tessera.jobs.beacon import beacon_of, commitment, read_reveal, roster_digest, sign_reveal
from tessera.protocol import derive_tree
from tessera.protocol.topology import Tree, TreeParams

NAMES = ("node-a", "node-b", "node-c", "node-d")


def test_the_beacon_moves_every_tree() -> None:
    nodes = {NodeId(f"n{i:02d}"): None for i in range(40)}
    cohort = list(nodes)
    params = TreeParams(k=2, group_size=4)

    def tree(beacon: bytes) -> Tree:
        return derive_tree(
            job_id="j", round=0, nodes=nodes, contributors=cohort, params=params, beacon=beacon
        )

    seen = {tree(bytes([i]) * 32).digest() for i in range(8)}
    assert len(seen) == 8  # no beacon, no tree: the participants alone fix nothing


def test_a_reveal_must_be_the_committed_secret_of_its_signer_for_one_list() -> None:
    a, b = Node.make("node-a"), Node.make("node-b")
    digest, secret = "d" * 64, beacon_secret(a.id)
    committed = commitment(secret, job_digest=digest, node=a.id)
    frozen = roster_digest(NAMES)

    def reveal(keys: NodeKeys, value: bytes, roster: str = frozen) -> SignedDocument:
        return sign_reveal(
            keys, job_id="j", job_digest=digest, node=a.id, roster=roster, secret=value
        )

    def read(doc: SignedDocument) -> bytes:
        public = a.keys.public
        return read_reveal(
            doc, node=a.id, node_keys=public, job_digest=digest, committed=committed, roster=frozen
        )

    assert read(reveal(a.keys, secret)) == secret
    dropped = roster_digest(NAMES[:-1])  # the list shown once node-d's secret was "lost"
    for doc, reason in [
        (reveal(a.keys, b"\x00" * 32), "not the one it committed to"),
        (reveal(b.keys, secret), "not signed by its key"),
        (reveal(a.keys, secret, dropped), "another participant list"),
    ]:
        with pytest.raises(RemoteProtocolError, match=reason):
            read(doc)


def _secure_job() -> tuple[SignedDocument, bytes]:
    doc, weights = tiny_job()
    b = doc.body
    secure = {
        **b["config"]["secure"],
        "enabled": True,
        "max_weight": 10.0,
        "k": 2,
        "group_size": 2,
        "fan_in": 3,
    }
    body = {
        **b,
        "config": {
            **b["config"],
            "recipe": {**b["config"]["recipe"], "clip_norm": 1.0},
            "secure": secure,
        },
        "recipe": {**b["recipe"], "clip_norm": 1.0},
        "min_consents": len(NAMES),
    }
    return sign_document(AI, "job", body), weights


@pytest.fixture
def coord(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "coordinator.db", reveal_wait=3.0)
    yield harness
    harness.stop()


def _frozen(coord: Harness) -> tuple[SignedDocument, dict[str, Node]]:
    doc, weights = _secure_job()
    coord.submit(doc, weights)
    nodes = {name: Node.make(name) for name in NAMES}
    for node in nodes.values():
        coord.register(node.keys, node.id)
        assert coord.consent(doc, node).status_code == 201
    return doc, nodes


def _reveal(coord: Harness, doc: SignedDocument, node: Node, secret: bytes) -> int:
    reveal = sign_reveal(
        node.keys,
        job_id=job_id(doc),
        job_digest=doc.digest,
        node=node.id,
        roster=roster_digest(NAMES),
        secret=secret,
    )
    url = f"/v1/jobs/{job_id(doc)}/reveals"
    return coord.http.post(url, json={"reveal": reveal.to_json()}).status_code


def test_no_round_opens_before_every_participant_revealed(coord: Harness) -> None:
    doc, nodes = _frozen(coord)
    jid = job_id(doc)
    status = coord.status(jid)
    assert status["state"] == "running" and status["beacon"] is None
    assert jid not in coord.service.drivers  # no tree exists yet, for anyone
    first = nodes["node-a"]
    assert _reveal(coord, doc, first, b"\x01" * 32) == 403  # not its committed secret
    for node in nodes.values():
        assert _reveal(coord, doc, node, beacon_secret(node.id)) == 200
    expected = beacon_of(doc.digest, {n: beacon_secret(n) for n in NAMES})
    assert coord.status(jid)["beacon"] == expected.hex()
    coord.wait_for(
        "round 0 open", lambda s: s["current_round"] == 0 and s["state"] == "running", jid
    )
    assert jid in coord.service.drivers


def test_a_job_whose_participants_do_not_all_reveal_fails(coord: Harness) -> None:
    doc, nodes = _frozen(coord)
    jid = job_id(doc)
    for node in list(nodes.values())[:-1]:  # the coordinator "loses" the last reveal
        assert _reveal(coord, doc, node, beacon_secret(node.id)) == 200
    coord.wait_for("failed", lambda s: s["state"] == "failed", jid, timeout=15)
    status = coord.status(jid)
    assert "did not reveal their beacon secret" in status["error"]
    assert "node-d" in status["error"] and status["beacon"] is None
    time.sleep(0.1)
    assert jid not in coord.service.drivers


def test_reveals_outlive_a_restart_and_come_only_from_participants(coord: Harness) -> None:
    doc, nodes = _frozen(coord)
    jid = job_id(doc)
    first, *others = nodes.values()
    assert _reveal(coord, doc, first, beacon_secret(first.id)) == 200
    coord.restart()  # the job resumes waiting for the reveals it has not had
    assert coord.status(jid)["beacon"] is None
    assert jid not in coord.service.drivers
    stranger = Node.make("node-z")
    coord.register(stranger.keys, stranger.id)
    assert _reveal(coord, doc, stranger, beacon_secret(stranger.id)) == 403
    for node in others:
        assert _reveal(coord, doc, node, beacon_secret(node.id)) == 200
    coord.wait_for("round 0 open", lambda s: s["current_round"] == 0 and s["beacon"], jid)
    beacon = coord.status(jid)["beacon"]
    assert _reveal(coord, doc, first, beacon_secret(first.id)) == 200  # a repeat changes nothing
    assert coord.status(jid)["beacon"] == beacon


def test_a_plaintext_job_takes_no_reveals(coord: Harness) -> None:
    doc, weights = tiny_job()
    coord.submit(doc, weights)
    nodes = [Node.make(name) for name in NAMES[:3]]
    for node in nodes:
        coord.register(node.keys, node.id)
        assert coord.consent(doc, node).status_code == 201
    assert coord.status(job_id(doc))["state"] == "running"
    reveal = sign_reveal(
        nodes[0].keys,
        job_id=job_id(doc),
        job_digest=doc.digest,
        node=nodes[0].id,
        roster=roster_digest(NAMES[:3]),
        secret=beacon_secret(nodes[0].id),
    )
    answer = coord.http.post(f"/v1/jobs/{job_id(doc)}/reveals", json={"reveal": reveal.to_json()})
    assert answer.status_code == 409
    assert "no trees, hence no beacon" in answer.json()["detail"]

"""Finding 9: a tree the organisation rule forbids, and consents after the start.

Before: a submission's feasibility dry-run ignored the organisations, so a
job that no tree could serve started and failed at once; and a consent from
a node outside the fixed participants still counted after the start (the
latter is tested beside the start itself, in test_coordinator_service.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.coordinator.coordinator_kit import (
    AI,
    Harness,
    Node,
    consent_body,
    job_id,
    receipt,
    registration,
    tiny_job,
)

from tessera.crypto.documents import SignedDocument, sign_document
from tessera.errors import ConfigError
from tessera.ids import NodeId
from tessera.jobs.document import JobSpec, check_tree_feasible

N = 60  # enough nodes for the default tree


def _secure_job() -> tuple[SignedDocument, bytes]:
    doc, weights = tiny_job()
    b = doc.body
    body = {
        **b,
        "config": {
            **b["config"],
            "recipe": {**b["config"]["recipe"], "clip_norm": 1.0},
            "secure": {**b["config"]["secure"], "enabled": True, "max_weight": 10.0},
        },
        "recipe": {**b["recipe"], "clip_norm": 1.0},
        "min_consents": N,
    }
    return sign_document(AI, "job", body), weights


def _organisations() -> dict[NodeId, str | None]:
    """One node of organisation B, the rest of A: B's own group can only seat A."""
    return {NodeId(f"node-{i:02d}"): "B" if i == 0 else "A" for i in range(N)}


def test_the_feasibility_check_counts_organisations() -> None:
    doc, _ = _secure_job()
    spec = JobSpec.from_document(doc)
    check_tree_feasible(spec, N)  # the bare count allows a tree
    with pytest.raises(ConfigError, match="organisation 'A'") as exc:
        check_tree_feasible(spec, N, _organisations())
    assert exc.value.field == "secure.organisation_column"


@pytest.fixture
def coord(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "coordinator.db")
    yield harness
    harness.stop()


def test_a_job_no_tree_can_serve_waits_and_says_why(coord: Harness) -> None:
    doc, weights = _secure_job()
    coord.submit(doc, weights)
    jid = job_id(doc)
    for node_id, org in _organisations().items():
        node = Node.make(node_id)
        signed = registration(node.keys, node.id, organisation=org)
        answer = coord.http.post("/v1/nodes", json={"document": signed.to_json()})
        assert answer.status_code == 201, answer.text
        rec = receipt(node.keys, node.id, doc)
        body = consent_body(rec, node.keys, doc)
        assert coord.http.post(f"/v1/jobs/{jid}/consents", json=body).status_code == 201
    status = coord.status(jid)
    assert status["state"] == "waiting"  # not started and failed: it waits for other consents
    assert status["valid_consents"] == N
    assert "no tree fits these participants' organisations" in status["error"]


def test_the_feasibility_check_tries_every_training_round_s_cohort() -> None:
    """Six nodes of two organisations, half of them drawn each round: round 0's cohort
    seats its tree, round 1's leaves only organisation o0 outside its group. Checking
    round 0 alone let the job start and stall at round 1; now it is refused, naming the
    round, at submission."""
    doc, _ = _secure_job()
    config = doc.body["config"]
    body = {
        **doc.body,
        "config": {
            **config,
            "federation": {**config["federation"], "fraction": 0.5, "rounds": 20},
            "secure": {**config["secure"], "group_size": 2, "min_group": 2},
        },
        "min_consents": 6,
    }
    spec = JobSpec.from_document(sign_document(AI, "job", body))
    organisations = {NodeId(f"node-{i:02d}"): f"o{i % 2}" for i in range(6)}
    with pytest.raises(ConfigError, match="round 1's cohort: group L0") as exc:
        check_tree_feasible(spec, 6, organisations)
    assert exc.value.field == "secure.organisation_column"

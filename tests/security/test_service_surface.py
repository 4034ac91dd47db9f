"""Attacks on the service surface (issue 11, findings 4 and 5), over real HTTP.

A coordinator on a loopback socket runs the tiny plaintext job of
``tests/coordinator/coordinator_kit``; a data provider is served by a
``TestClient``. Each test is one attack that worked before the surface was
authenticated: anonymous reads of jobs, participants and models, uploads by
anyone, another AI provider's reads, a replayed mailbox pull, envelopes of
the wrong round, kind or size, a flooding sender, mail kept forever, and
preprocessing statistics that listed identifiers and rare values.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.coordinator.coordinator_kit import AI, JOB, Harness, Node, job_id, post_mail, tiny_job

from tessera.crypto.envelope import seal
from tessera.crypto.keys import NodeKeys
from tessera.data.connectors import TableBackend
from tessera.data_provider.app import create_provider_app
from tessera.errors import RemoteProtocolError
from tessera.ids import COORDINATOR, JobId, NodeId
from tessera.protocol.effects import Send
from tessera.protocol.kinds import Kind
from tessera.protocol.messages import TrainingDeclined
from tessera.runtime.transport.auth import Caller, sign_request, verify_request
from tessera.runtime.transport.mail import to_envelope, weights_artefact

NAMES = ("node-a", "node-b", "node-c", "node-d")
OTHER_AI = NodeKeys.from_seed(b"surface-other-ai")
PROVIDER_KEYS = NodeKeys.from_seed(b"surface-data-provider")


@pytest.fixture
def coord(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "coordinator.db")
    yield harness
    harness.stop()


@pytest.fixture
def nodes(coord: Harness) -> dict[str, Node]:
    out = {name: Node.make(name) for name in NAMES}
    for node in out.values():
        coord.register(node.keys, node.id)
    return out


@pytest.fixture
def running(coord: Harness, nodes: dict[str, Node]) -> dict[str, Any]:
    """The tiny job, started by a, b and c; d is registered but outside it."""
    doc, weights = tiny_job()
    coord.submit(doc, weights)
    for name in ("node-a", "node-b", "node-c"):
        assert coord.consent(doc, nodes[name]).status_code == 201
    status = coord.status()
    assert status["state"] == "running"
    return status


def put(coord: Harness, data: bytes, keys: NodeKeys | None) -> httpx.Response:
    path = f"/v1/artefacts/{hashlib.sha256(data).hexdigest()}"
    headers = {} if keys is None else sign_request(keys, "PUT", path, at=time.time(), body=data)
    return coord.http.put(path, content=data, headers=headers)


# -- finding 4: who may read and write what ----------------------------------------------


def test_anonymous_reads_of_jobs_participants_and_models_are_refused(
    coord: Harness, running: dict[str, Any]
) -> None:
    initial = tiny_job()[0].body["weights"]["sha256"]
    for path in (
        "/v1/jobs",
        f"/v1/jobs/{JOB}",
        f"/v1/jobs/{JOB}/participants",
        f"/v1/artefacts/{initial}",
        "/v1/nodes/node-a",
    ):
        answer = coord.http.get(path)
        assert answer.status_code == 401, (path, answer.text)
        assert "sign this request" in answer.json()["detail"]
    # What a user reads before consenting stays public.
    assert coord.http.get(f"/v1/jobs/{JOB}/document").status_code == 200


def test_another_ai_provider_reads_nothing_of_the_job(
    coord: Harness, running: dict[str, Any]
) -> None:
    initial = tiny_job()[0].body["weights"]["sha256"]
    answer = coord.get(f"/v1/jobs/{JOB}", keys=OTHER_AI)
    assert answer.status_code == 403
    assert "only the job's ai provider or participant" in answer.json()["detail"]
    assert coord.get(f"/v1/artefacts/{initial}", keys=OTHER_AI).status_code == 404
    assert coord.get("/v1/jobs", keys=OTHER_AI).json() == []
    # ... while the job's own AI provider reads all of it.
    assert coord.get(f"/v1/jobs/{JOB}").json()["participants"] == ["node-a", "node-b", "node-c"]
    assert coord.get(f"/v1/artefacts/{initial}").status_code == 200


def test_a_node_sees_only_what_its_role_needs(
    coord: Harness, nodes: dict[str, Node], running: dict[str, Any]
) -> None:
    a, d = nodes["node-a"], nodes["node-d"]
    status = a.get(coord, f"/v1/jobs/{JOB}").json()
    assert status["state"] == "running" and status["current_round"] == 0
    assert "participants" not in status and "refused" not in status and "rounds" not in status
    assert a.get(coord, f"/v1/jobs/{JOB}/participants").status_code == 200
    # A node outside the job reads neither its status, its participants nor its model.
    initial = tiny_job()[0].body["weights"]["sha256"]
    for path in (f"/v1/jobs/{JOB}", f"/v1/jobs/{JOB}/participants"):
        assert d.get(coord, path).status_code == 403, path
    assert d.get(coord, f"/v1/artefacts/{initial}").status_code == 404
    # The AI provider is no participant: it never gets the participants' user ids.
    assert coord.get(f"/v1/jobs/{JOB}/participants").status_code == 403
    assert d.get(coord, "/v1/nodes/node-a").status_code == 403


def test_uploads_are_signed_weights_under_a_quota(coord: Harness) -> None:
    one, _ = weights_artefact(np.zeros(3, np.float32))
    answer = put(coord, one, None)
    assert answer.status_code == 401
    assert put(coord, b"not a weights artefact", AI).status_code == 400
    coord.service.upload_quota = (2, 10_000)
    assert put(coord, one, AI).status_code == 201
    assert put(coord, one, AI).status_code == 201  # a repeat costs nothing
    two, _ = weights_artefact(np.ones(3, np.float32))
    assert put(coord, two, AI).status_code == 201
    three, _ = weights_artefact(np.full(3, 2, np.float32))
    answer = put(coord, three, AI)
    assert answer.status_code == 413
    assert "upload quota" in answer.json()["detail"]
    assert not coord.service.store.has_artefact(hashlib.sha256(three).hexdigest())


def test_a_captured_signed_request_cannot_be_replayed(
    coord: Harness, nodes: dict[str, Node], running: dict[str, Any]
) -> None:
    a = nodes["node-a"]
    path = "/v1/mail?after=0&wait=0"
    headers = sign_request(a.keys, "GET", path, at=time.time(), node=a.id)
    assert coord.http.get(path, headers=headers).status_code == 200
    again = coord.http.get(path, headers=headers)
    assert again.status_code == 401
    assert "replayed request" in again.json()["detail"]
    # The burnt nonce survives a restart of the coordinator.
    coord.restart()
    assert coord.http.get(path, headers=headers).status_code == 401


# -- finding 4: the data provider's statistics and catalogue --------------------------------


def provider_table() -> pd.DataFrame:
    """40 records of 4 users; "rare" is held by 3 records, "x" and "y" by 20 and 17."""
    return pd.DataFrame(
        {
            "user": [f"u{i % 4}" for i in range(40)],
            "grade": [i % 2 for i in range(40)],
            "mark": [float(i) for i in range(40)],
            "group": ["x"] * 20 + ["y"] * 17 + ["rare"] * 3,
        }
    )


@pytest.fixture
def provider() -> Iterator[TestClient]:
    app = create_provider_app(
        [TableBackend("t", provider_table(), "user")],
        keys=PROVIDER_KEYS,
        ai_providers=[AI.public.fingerprint],
    )
    with TestClient(app) as client:
        yield client


def stats(client: TestClient, keys: NodeKeys | None = AI, **params: str) -> httpx.Response:
    path = f"/v1/datasets/t/preprocessing?{urlencode(params)}"
    headers = {} if keys is None else sign_request(keys, "GET", path, at=time.time())
    return client.get(path, headers=headers)


def test_preprocessing_statistics_go_only_to_a_signed_ai_provider(provider: TestClient) -> None:
    asked = {"target": "grade", "task": "classification", "features": "mark"}
    assert stats(provider, None, **asked).status_code == 401
    assert stats(provider, OTHER_AI, **asked).status_code == 403
    path = f"/v1/datasets/t/preprocessing?{urlencode(asked)}"
    headers = sign_request(AI, "GET", path, at=time.time())
    assert provider.get(path, headers=headers).status_code == 200
    replayed = provider.get(path, headers=headers)
    assert replayed.status_code == 401
    assert "replayed request" in replayed.json()["detail"]
    security = provider.get("/openapi.json").json()["components"]["securitySchemes"]
    assert set(security) == {"KeySignature"}


def test_preprocessing_never_lists_identifiers_or_rare_values(provider: TestClient) -> None:
    for asked in (
        {"target": "grade", "task": "classification", "features": "user", "categorical": "user"},
        {"target": "user", "task": "classification", "features": "mark"},
    ):
        answer = stats(provider, **asked)
        assert answer.status_code == 403, answer.text
        assert "identify people" in answer.json()["detail"]
    answer = stats(
        provider, target="grade", task="classification", features="group", categorical="group"
    )
    assert answer.status_code == 200, answer.text
    [group] = answer.json()["columns"]
    assert group["categories"] == ["x", "y"]  # "rare" (3 records) is pooled with the unseen
    everything = stats(provider, target="grade", task="classification", categorical="group")
    assert {c["name"] for c in everything.json()["columns"]} == {"mark", "group"}
    rare_class = stats(provider, target="group", task="classification", features="mark")
    assert rare_class.status_code == 403
    assert "fewer than 10 records" in rare_class.json()["detail"]
    assert "rare" not in rare_class.text


def test_the_catalogue_shows_no_server_path(tmp_path: Path) -> None:
    folder = tmp_path / "secret-server-folder"
    folder.mkdir()
    provider_table().to_csv(folder / "records.csv", index=False)
    backend = TableBackend.from_source("t", "csv", str(folder / "records.csv"), "user")
    with TestClient(create_provider_app([backend], keys=PROVIDER_KEYS)) as client:
        catalogue = client.get("/v1/catalogue").text
    assert "secret-server-folder" not in catalogue
    assert str(tmp_path) not in catalogue


# -- finding 5: what the relay accepts, how much, and for how long -----------------------------


def envelope(node: Node, kind: Kind, size: int, *, round: int = 0, to: str = COORDINATOR) -> bytes:
    return seal(
        kind=int(kind),
        job_id=JOB,
        round=round,
        sender=node.id,
        recipient=to,
        payload=bytes(size),
        sender_keys=node.keys,
        recipient_public=None,
    )


def decline(coord: Harness, node: Node, round: int) -> bytes:
    out = to_envelope(
        Send(
            recipient=COORDINATOR,
            message=TrainingDeclined(job_id=JobId(JOB), round=round, reason="busy"),
        ),
        sender=NodeId(node.id),
        job_id=JOB,
        keys=node.keys,
        directory={COORDINATOR: coord.service.keys.public},
        publish_weights=lambda _: "",
    )
    return out.data


def test_the_relay_takes_only_the_current_rounds_kinds_at_the_jobs_size(
    coord: Harness, nodes: dict[str, Node], running: dict[str, Any]
) -> None:
    a, public = nodes["node-a"], coord.service.keys.public
    cases = [
        (a.update(public, 1), 409, "round 1 is not the job's current round 0"),
        (envelope(a, Kind.TRAIN, 100), 403, "a node sends no train envelopes"),
        (envelope(a, Kind.SHARE, 100, to="node-b"), 403, "a node sends no share envelopes"),
        # 40 MiB was taken before; a 12-weight model's update is a few hundred bytes.
        (envelope(a, Kind.UPDATE, 1 << 20), 413, "a update envelope of this job is at most"),
    ]
    before = coord.snapshot()
    for data, status, reason in cases:
        answer = post_mail(coord, data)
        assert answer.status_code == status, answer.text
        assert reason in answer.json()["detail"]
    assert coord.snapshot() == before
    assert post_mail(coord, a.update(public, 0)).status_code == 202


def test_a_flooding_sender_is_stopped_by_its_round_quota(
    coord: Harness, nodes: dict[str, Node], running: dict[str, Any]
) -> None:
    a = nodes["node-a"]
    answers = [post_mail(coord, decline(coord, a, 0)).status_code for _ in range(6)]
    assert answers == [202] * 4 + [429] * 2
    assert post_mail(coord, decline(coord, nodes["node-b"], 0)).status_code == 202  # per sender


def test_mail_of_a_closed_round_is_deleted(coord: Harness, nodes: dict[str, Node]) -> None:
    doc, weights = tiny_job(rounds=3)
    jid = job_id(doc)
    coord.submit(doc, weights)
    trio = [nodes[name] for name in ("node-a", "node-b", "node-c")]
    for node in trio:
        assert coord.consent(doc, node).status_code == 201
    store, public = coord.service.store, coord.service.keys.public
    for r in range(3):
        for node in trio:
            [request] = node.train_requests(coord, wait=10, job_id=jid)
            assert request.round == r
            assert post_mail(coord, node.update(public, r, job_id=jid)).status_code == 202
        if r < 2:
            at = f"round {r} closed"
            coord.wait_for(at, lambda s, r=r: s["current_round"] == r + 1, jid)
            kept = {r, r + 1}  # this round (its traffic, late refusals) and the next
            assert {k for k in range(3) if store.round_traffic(jid, k)} == kept
    coord.wait_for("finished", lambda s: s["state"] == "finished", jid)
    assert all(not store.round_traffic(jid, k) for k in range(3))
    # Deleted mail does not re-open a replay: an old round's envelope is refused anyway.
    assert post_mail(coord, trio[0].update(public, 0, job_id=jid)).status_code == 409


# -- the signed-request scheme itself ---------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    path=st.text(alphabet="abc/?=&%0123456789", min_size=1, max_size=40),
    body=st.binary(max_size=64),
    other_path=st.text(alphabet="abc/?=&%0123456789", min_size=1, max_size=40),
    other_body=st.binary(max_size=64),
    method=st.sampled_from(["GET", "PUT", "POST"]),
)
def test_a_signature_covers_method_path_and_body_and_is_spent_once(
    path: str, body: bytes, other_path: str, other_body: bytes, method: str
) -> None:
    now = time.time()
    headers = sign_request(AI, method, "/" + path, at=now, body=body)
    burnt: set[str] = set()

    def fresh(caller: Caller) -> bool:
        if caller.nonce in burnt:
            return False
        burnt.add(caller.nonce)
        return True

    def check(m: str, p: str, b: bytes) -> Caller:
        return verify_request(
            headers, method=m, path=p, body=b, keys_of=lambda _: None, fresh=fresh, now=now
        )

    for m, p, b in (
        ("DELETE", "/" + path, body),
        (method, "/" + other_path, body),
        (method, "/" + path, other_body),
    ):
        if (m, p, b) != (method, "/" + path, body):
            with pytest.raises(RemoteProtocolError, match="bad signature"):
                check(m, p, b)
    assert check(method, "/" + path, body).fingerprint == AI.public.fingerprint
    with pytest.raises(RemoteProtocolError, match="replayed request"):
        check(method, "/" + path, body)

"""The coordinator over a real loopback socket: every refusal is a 4xx that says why.

A ``CoordinatorService`` over a SQLite file is served by ``serve_in_thread``
and spoken to with httpx and ``CoordinatorClient``, as node agents and AI
providers do. Every bad input (malformed, forged, replayed, expired,
revoked, out of place) must be answered with its 4xx status and a ``detail``
naming the fault, and must change nothing in the store. A real plaintext
job is then run by hand-played nodes: consent starts it, a revocation
takes the user out from the next round on, and a restart on the same
database resumes it mid-round.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest

from tessera.consent import revoke_consent
from tessera.coordinator.driver import _traffic
from tessera.coordinator.service import Refused
from tessera.crypto.documents import SignedDocument, sign_document
from tessera.crypto.keys import NodeKeys
from tessera.ids import COORDINATOR, NodeId
from tessera.protocol.kinds import Kind
from tessera.runtime.transport.auth import sign_request
from tessera.runtime.transport.mail import WEIGHTS_MEDIA_TYPE, from_envelope, read_weights_artefact

from .coordinator_kit import (
    AI,
    JOB,
    Harness,
    Node,
    attestation,
    consent_body,
    job_id,
    post_mail,
    receipt,
    registration,
    tiny_job,
)

NAMES = ("node-a", "node-b", "node-c", "node-d")


def prepare(coord: Harness) -> SignedDocument:
    """Register the four nodes and submit the tiny job (waiting for 3 consents)."""
    for name in NAMES:
        node = Node.make(name)
        coord.register(node.keys, node.id)
    doc, weights = tiny_job()
    coord.submit(doc, weights)
    return doc


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """One coordinator with the job waiting, for the tests whose every request is refused."""
    harness = Harness(tmp_path_factory.mktemp("shared") / "coordinator.db")
    try:
        prepare(harness)
        yield harness
    finally:
        harness.stop()


@pytest.fixture
def coord(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "coordinator.db")
    yield harness
    harness.stop()


@pytest.fixture
def nodes() -> dict[str, Node]:
    return {name: Node.make(name) for name in NAMES}


@pytest.fixture
def job(coord: Harness) -> SignedDocument:
    """The tiny job submitted (waiting for 3 consents) and four nodes registered."""
    return prepare(coord)


@pytest.fixture
def running(coord: Harness, nodes: dict[str, Node], job: SignedDocument) -> SignedDocument:
    """The tiny job started by the consents of nodes a, b and c (d stays out)."""
    for name in ("node-a", "node-b", "node-c"):
        assert coord.consent(job, nodes[name]).status_code == 201
    assert coord.status()["state"] == "running"
    return job


def refused(
    coord: Harness, answer: httpx.Response, status: int, detail: str, before: dict[str, Any]
) -> None:
    """``answer`` is ``status`` with ``detail`` in its reason, and the store did not change."""
    assert answer.status_code == status, answer.text
    reason = answer.json()["detail"]
    text = reason if isinstance(reason, str) else " ".join(e["msg"] for e in reason)
    assert detail in text, text
    assert coord.snapshot() == before


def wait_for_events(coord: Harness, count: int, timeout: float = 10.0) -> None:
    """Until the job's driver has logged ``count`` events (it consumes mail in a thread)."""
    end = time.monotonic() + timeout
    while len(coord.service.store.events(JOB)) < count:
        assert time.monotonic() < end, f"fewer than {count} events logged"
        time.sleep(0.01)


# -- malformed and oversized requests -----------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/nodes", b'{"document": {"kind": "registration",'),
        ("/v1/jobs", b"not json at all"),
        (f"/v1/jobs/{JOB}/consents", b'{"receipt": }'),
        (f"/v1/jobs/{JOB}/revocations", b"\xff\xfe"),
    ],
)
def test_malformed_json_is_refused(shared: Harness, path: str, body: bytes) -> None:
    coord = shared
    before = coord.snapshot()
    answer = coord.http.post(path, content=body, headers={"content-type": "application/json"})
    refused(coord, answer, 422, "JSON decode error", before)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/nodes", "document"),
        ("/v1/jobs", "document"),
        (f"/v1/jobs/{JOB}/consents", "receipt"),
    ],
)
def test_documents_holding_non_finite_numbers_are_400(
    shared: Harness, nodes: dict[str, Node], path: str, field: str, number: str
) -> None:
    """Python's JSON parser takes NaN and Infinity; a signed document cannot hold them."""
    coord = shared
    signer = base64.b64encode(nodes["node-a"].keys.public.to_bytes()).decode()
    document = (
        f'{{"kind": "registration", "body": {{"node_id": "node-x", "at": {number}}}, '
        f'"signer": "{signer}", "signature": "AAAA"}}'
    )
    before = coord.snapshot()
    extra = f', "attestation": {document}' if field == "receipt" else ""
    answer = coord.http.post(
        path,
        content=f'{{"{field}": {document}{extra}}}',
        headers={"content-type": "application/json"},
    )
    refused(coord, answer, 400, "number JSON cannot carry", before)


def test_wrong_json_shapes_are_refused(shared: Harness, nodes: dict[str, Node]) -> None:
    coord = shared
    keys = nodes["node-a"].keys
    good = registration(keys, "node-a").to_json()
    before = coord.snapshot()
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"doc": good}, 422, "Field required"),
        ({"document": good, "extra": 1}, 422, "Extra inputs are not permitted"),
        ({"document": {**good, "signature": 7}}, 422, "Input should be a valid string"),
        ({"document": {**good, "body": []}}, 422, "Input should be a valid dictionary"),
        ({"document": {**good, "signer": "not base64!"}}, 400, "not base64"),
        ({"document": {**good, "kind": "job"}}, 403, "expected a 'registration' document"),
        (
            {"document": sign_document(keys, "registration", {"node_id": ""}).to_json()},
            400,
            "1-64 character id",
        ),
        (
            {"document": registration(keys, COORDINATOR).to_json()},
            400,
            "1-64 character id",
        ),
    ]
    for body, status, detail in cases:
        refused(coord, coord.http.post("/v1/nodes", json=body), status, detail, before)
    answer = coord.http.post(f"/v1/jobs/{JOB}/consents", json={"receipt": [1, 2]})
    refused(coord, answer, 422, "valid dictionary", before)


def test_oversized_bodies_are_refused_with_413(tmp_path: Path, nodes: dict[str, Node]) -> None:
    small = Harness(tmp_path / "small.db", max_body=2048, mail_body=2048)
    try:
        node = nodes["node-a"]
        before = small.snapshot()
        big = sign_document(
            node.keys,
            "registration",
            {
                "node_id": node.id,
                "public_keys": base64.b64encode(node.keys.public.to_bytes()).decode(),
                "organisation": "x" * 4000,
            },
        )
        answer = small.http.post("/v1/nodes", json={"document": big.to_json()})
        refused(small, answer, 413, "request body exceeds 2048 bytes", before)
        answer = post_mail(small, b"\0" * 5000)
        refused(small, answer, 413, "request body exceeds 2048 bytes", before)
        answer = small.http.put(f"/v1/artefacts/{'0' * 64}", content=b"w" * 3000)
        refused(small, answer, 413, "request body exceeds 2048 bytes", before)
        # A streamed (chunked) body is counted as it arrives, with no length declared.
        chunks = iter([b"\0" * 1500, b"\0" * 1500])
        try:
            answer = small.http.post("/v1/mail", content=chunks)
        except httpx.TransportError:
            pass  # the server closed the connection while the body was still coming
        else:
            assert answer.status_code == 413, answer.text
        assert small.snapshot() == before
        small.register(node.keys, node.id)  # a small body still goes through
    finally:
        small.stop()


# -- unknown jobs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jobs/nope"),
        ("GET", "/v1/jobs/nope/document"),
        ("GET", "/v1/jobs/nope/participants"),
        ("POST", "/v1/jobs/nope/consents"),
        ("POST", "/v1/jobs/nope/revocations"),
    ],
)
def test_unknown_job_is_404(
    shared: Harness, nodes: dict[str, Node], method: str, path: str
) -> None:
    coord, job = shared, tiny_job()[0]
    node = nodes["node-a"]
    rec = receipt(node.keys, node.id, job)
    body = {
        "receipt": rec.to_json(),
        "revocation": revoke_consent(node.keys, receipt=rec, at=time.time()).to_json(),
    }
    if path.endswith("consents"):
        del body["revocation"]
        body["attestation"] = attestation(node.keys, node.id, job).to_json()
    before = coord.snapshot()
    if method == "GET":  # asked by a node, which may ask these of its jobs
        answer = node.get(coord, path)
    else:
        answer = coord.http.request(method, path, json=body)
    refused(coord, answer, 404, "unknown job 'nope'", before)


def test_mail_for_an_unknown_job_is_404(
    coord: Harness, nodes: dict[str, Node], running: Any
) -> None:
    before = coord.snapshot()
    data = nodes["node-a"].update(coord.service.keys.public, 0, job_id="nope")
    refused(coord, post_mail(coord, data), 404, "unknown job 'nope'", before)


def test_unknown_node_and_artefact_are_refused(shared: Harness, nodes: dict[str, Node]) -> None:
    coord, a = shared, nodes["node-a"]
    before = coord.snapshot()
    assert a.get(coord, "/v1/nodes/node-a").json()["node_id"] == "node-a"
    answer = a.get(coord, "/v1/nodes/nobody")
    refused(coord, answer, 403, "only node 'nobody' may read its registration", before)
    answer = coord.get(f"/v1/artefacts/{'ab' * 32}")
    refused(coord, answer, 404, f"no artefact {'ab' * 32}", before)
    answer = coord.get("/v1/artefacts/NOT-A-HASH")
    refused(coord, answer, 400, "lowercase hex SHA-256", before)
    path, body = f"/v1/artefacts/{'ab' * 32}", b"other bytes"
    headers = sign_request(AI, "PUT", path, at=time.time(), body=body)
    answer = coord.http.put(path, content=body, headers=headers)
    refused(coord, answer, 400, "does not hash to the artefact's name", before)


# -- forged and tampered documents ----------------------------------------------------------


def test_registrations_must_be_signed_by_the_keys_they_register(
    coord: Harness, nodes: dict[str, Node]
) -> None:
    a, b = nodes["node-a"], nodes["node-b"]
    before = coord.snapshot()
    other = registration(a.keys, a.id, signer=b.keys)  # a's keys, b's signature
    answer = coord.http.post("/v1/nodes", json={"document": other.to_json()})
    refused(coord, answer, 403, "signed by the keys it registers", before)

    tampered = registration(a.keys, a.id).to_json()
    tampered["body"]["organisation"] = "someone else's"
    answer = coord.http.post("/v1/nodes", json={"document": tampered})
    refused(coord, answer, 403, "registration: bad signature", before)

    coord.register(a.keys, a.id)
    before = coord.snapshot()
    answer = coord.http.post("/v1/nodes", json={"document": registration(b.keys, a.id).to_json()})
    refused(coord, answer, 409, "node id 'node-a' is taken by other keys", before)
    coord.register(a.keys, a.id)  # the same keys again: idempotent
    assert coord.snapshot() == before


def test_job_documents_are_checked(coord: Harness) -> None:
    doc, weights = tiny_job()
    before = coord.snapshot()
    answer = coord.http.post("/v1/jobs", json={"document": doc.to_json()})
    refused(
        coord, answer, 422, f"upload the initial weights {doc.body['weights']['sha256']}", before
    )
    with coord.client() as client:
        client.put_artefact(weights, WEIGHTS_MEDIA_TYPE)
    before = coord.snapshot()

    tampered = doc.to_json()
    tampered["body"]["purpose"] = "something else entirely"
    answer = coord.http.post("/v1/jobs", json={"document": tampered})
    refused(coord, answer, 403, "job: bad signature", before)

    impostor = sign_document(NodeKeys.from_seed(b"impostor"), "job", doc.body)
    answer = coord.http.post("/v1/jobs", json={"document": impostor.to_json()})
    refused(coord, answer, 422, "not signed by its AI provider", before)

    secure = {**doc.body, "config": {**doc.body["config"], "secure": {"enabled": True}}}
    answer = coord.http.post(
        "/v1/jobs", json={"document": sign_document(AI, "job", secure).to_json()}
    )
    refused(coord, answer, 422, "recipe.clip_norm", before)

    coord.submit(doc, weights)
    before = coord.snapshot()
    coord.submit(doc, weights)  # the same document again: idempotent
    assert coord.snapshot() == before
    # Security finding 1: ids are derived from the document, so nobody can take a job's
    # id first: a changed document (anyone's, of the same name) is another job.
    changed = sign_document(AI, "job", {**doc.body, "purpose": "another purpose"})
    answer = coord.http.post("/v1/jobs", json={"document": changed.to_json()})
    assert answer.status_code == 201, answer.text
    assert answer.json()["job_id"] == job_id(changed) != JOB
    assert coord.status(JOB)["digest"] == doc.digest  # the first job is untouched


def test_consent_receipts_are_checked(shared: Harness, nodes: dict[str, Node]) -> None:
    coord, job = shared, tiny_job()[0]
    a, b = nodes["node-a"], nodes["node-b"]
    before = coord.snapshot()
    url = f"/v1/jobs/{JOB}/consents"

    def post(doc: SignedDocument | dict[str, Any]) -> httpx.Response:
        body = doc if isinstance(doc, dict) else doc.to_json()
        user = str(body["body"]["user"])
        keys = nodes[user].keys if user in nodes else NodeKeys.from_seed(b"stranger")
        vouched = attestation(keys, user, job).to_json()
        return coord.http.post(url, json={"receipt": body, "attestation": vouched})

    forged = receipt(b.keys, a.id, job)  # names a, signed by b
    refused(coord, post(forged), 403, "not signed by the node key of user 'node-a'", before)
    stranger = receipt(NodeKeys.from_seed(b"stranger"), "stranger", job)
    refused(coord, post(stranger), 403, "the receipt's user is not a registered node", before)
    tampered = receipt(a.keys, a.id, job).to_json()
    tampered["body"]["expires_at"] += 10 * 86400
    refused(coord, post(tampered), 403, "consent: bad signature", before)
    other_job, _ = tiny_job("other-job")
    refused(coord, post(receipt(a.keys, a.id, other_job)), 403, "consent is for job", before)
    narrow = receipt(a.keys, a.id, job, fields=("score",))
    refused(coord, post(narrow), 403, "not covered by consent", before)
    wrong_kind = sign_document(a.keys, "revocation", receipt(a.keys, a.id, job).body)
    refused(coord, post(wrong_kind), 403, "expected a 'consent' document", before)


def test_expired_and_future_consents_are_403(shared: Harness, nodes: dict[str, Node]) -> None:
    coord, job = shared, tiny_job()[0]
    a = nodes["node-a"]
    now = time.time()
    before = coord.snapshot()
    expired = receipt(a.keys, a.id, job, issued_at=now - 2 * 86400, expires_at=now - 86400)
    answer = coord.http.post(f"/v1/jobs/{JOB}/consents", json=consent_body(expired, a.keys, job))
    refused(coord, answer, 403, "consent expired at", before)
    future = receipt(a.keys, a.id, job, issued_at=now + 3600)
    answer = coord.http.post(f"/v1/jobs/{JOB}/consents", json=consent_body(future, a.keys, job))
    refused(coord, answer, 403, "consent is not valid yet", before)
    assert coord.status()["valid_consents"] == 0


# -- envelopes at the door -----------------------------------------------------------------


def test_tampered_envelopes_are_refused(
    coord: Harness, nodes: dict[str, Node], running: Any
) -> None:
    a = nodes["node-a"]
    data = a.update(coord.service.keys.public, 0)
    before = coord.snapshot()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01  # inside the sealed payload: the signature breaks
    refused(coord, post_mail(coord, bytes(flipped)), 403, "bad signature", before)
    flipped = bytearray(data)
    flipped[-1] ^= 0x80  # the signature itself
    refused(coord, post_mail(coord, bytes(flipped)), 403, "bad signature", before)
    refused(coord, post_mail(coord, b"XSR" + data[3:]), 400, "bad magic", before)
    refused(coord, post_mail(coord, data[:-70]), 400, "truncated", before)
    refused(coord, post_mail(coord, data + b"\0"), 400, "trailing bytes", before)
    refused(coord, post_mail(coord, b""), 400, "truncated", before)
    # Re-signed by another node's keys under a's name: refused as a forgery.
    forged = Node("node-a", nodes["node-b"].keys).update(coord.service.keys.public, 0)
    refused(coord, post_mail(coord, forged), 403, "bad signature", before)
    # A sender the coordinator never registered.
    ghost = Node.make("ghost").update(coord.service.keys.public, 0)
    refused(coord, post_mail(coord, ghost), 400, "unknown sender", before)
    # The genuine envelope is taken.
    assert post_mail(coord, data).status_code == 202


def test_a_replayed_envelope_is_409(coord: Harness, nodes: dict[str, Node], running: Any) -> None:
    data = nodes["node-a"].update(coord.service.keys.public, 0)
    first = post_mail(coord, data)
    assert first.status_code == 202, first.text
    wait_for_events(coord, 2)  # the start, then a's update
    before = coord.snapshot()
    refused(coord, post_mail(coord, data), 409, "replayed", before)
    with coord.client() as client:
        assert client.post_mail(data) is None  # the client treats it as already delivered
    assert coord.snapshot() == before


def test_mail_out_of_place_is_refused(
    coord: Harness, nodes: dict[str, Node], job: SignedDocument
) -> None:
    coordinator = coord.service.keys.public
    a, d = nodes["node-a"], nodes["node-d"]
    before = coord.snapshot()
    refused(coord, post_mail(coord, a.update(coordinator, 0)), 409, "is not running", before)
    for name in ("node-a", "node-b", "node-c"):
        assert coord.consent(job, nodes[name]).status_code == 201
    before = coord.snapshot()
    answer = post_mail(coord, d.update(coordinator, 0))  # d never consented
    refused(coord, answer, 403, f"node-d is not a participant of {JOB}", before)

    from tessera.crypto.envelope import seal

    to_d = seal(
        kind=200,
        job_id=JOB,
        round=0,
        sender="node-a",
        recipient="node-d",
        payload=b"hello",
        sender_keys=a.keys,
        recipient_public=None,
    )
    refused(coord, post_mail(coord, to_d), 400, f"node-d is not a participant of {JOB}", before)


def test_the_relay_stores_only_registered_kinds_within_their_own_limits(
    coord: Harness, nodes: dict[str, Node], running: Any
) -> None:
    """Before each kind had its limit, both were stored: any kind, up to 64 MiB."""
    from tessera.crypto.envelope import seal
    from tessera.protocol.limits import ENVELOPE_LIMITS

    a = nodes["node-a"]

    def envelope(kind: int, size: int) -> bytes:
        return seal(
            kind=kind,
            job_id=JOB,
            round=0,
            sender="node-a",
            recipient="node-b" if kind != Kind.REPORT else COORDINATOR,
            payload=bytes(size),
            sender_keys=a.keys,
            recipient_public=None,
        )

    before = coord.snapshot()
    refused(coord, post_mail(coord, envelope(0x60, 100)), 400, "unknown envelope kind 96", before)
    big = envelope(int(Kind.REPORT), ENVELOPE_LIMITS[Kind.REPORT])
    refused(coord, post_mail(coord, big), 413, "a report envelope is too large", before)
    # Signature unchecked: the size alone refuses it.
    forged = big[:-1] + bytes([big[-1] ^ 1])
    refused(coord, post_mail(coord, forged), 413, "a report envelope is too large", before)


def test_a_model_larger_than_the_protocol_carries_is_refused_at_submission(
    coord: Harness,
) -> None:
    """Its shares or updates could never be relayed: the provider hears it now, not mid-round."""
    from tessera.protocol.limits import MAX_PARAMETERS

    doc, _ = tiny_job()
    weights = {**doc.body["weights"], "length": MAX_PARAMETERS + 1}
    bad = sign_document(AI, "job", {**doc.body, "weights": weights})
    before = coord.snapshot()
    answer = coord.http.post("/v1/jobs", json={"document": bad.to_json()})
    assert answer.status_code == 422, answer.text
    assert f"over the {MAX_PARAMETERS:,} allowed" in answer.json()["detail"]
    assert coord.snapshot() == before


def test_an_audited_secure_job_whose_evidence_cannot_be_relayed_is_refused(
    coord: Harness,
) -> None:
    """Evidence carries a parent's fan_in child sums verbatim: 8 x 4.6M words of 8 bytes is
    over the 288 MB of ``MAX_EVIDENCE_BYTES`` (three full vectors of the largest model)."""
    doc, _ = tiny_job()
    b = doc.body
    secure = {**b["config"]["secure"], "enabled": True, "max_weight": 10.0}
    recipe = {**b["config"]["recipe"], "clip_norm": 1.0}

    def submit(n_weights: int, *, audit: bool) -> str:
        body = {
            **b,
            "config": {**b["config"], "recipe": recipe, "secure": {**secure, "audit": audit}},
            "recipe": {**b["recipe"], "clip_norm": 1.0},
            "weights": {**b["weights"], "length": n_weights},
            "min_consents": 60,  # enough nodes for the default tree
        }
        answer = coord.http.post(
            "/v1/jobs", json={"document": sign_document(AI, "job", body).to_json()}
        )
        assert answer.status_code == 422, answer.text
        detail: str = answer.json()["detail"]
        return detail

    before = coord.snapshot()
    # The bound is an accusation's: the evidence, the accused's sum and the copies' wraps.
    assert "audit evidence for 5,400,000 words would reach" in submit(5_400_000, audit=True)
    # Without audits, or a model whose evidence fits, it gets as far as the weights.
    assert "upload the initial weights" in submit(5_400_000, audit=False)
    assert "upload the initial weights" in submit(5_300_000, audit=True)
    assert coord.snapshot() == before


# -- signed mailbox pulls ------------------------------------------------------------------


def test_mail_pulls_need_a_fresh_signature_of_the_node(
    coord: Harness, nodes: dict[str, Node], running: Any
) -> None:
    a, b = nodes["node-a"], nodes["node-b"]
    path = "/v1/mail?after=0&wait=0"
    now = time.time()

    def sign(keys: NodeKeys, node: str, method: str, path: str, at: float) -> dict[str, str]:
        return sign_request(keys, method, path, at=at, node=node)

    cases: list[tuple[dict[str, str], str]] = [
        ({}, "sign this request"),
        (sign(b.keys, a.id, "GET", path, now), "request: bad signature"),
        (sign(a.keys, a.id, "GET", path, now - 3600), "too far from the server's clock"),
        (sign(a.keys, a.id, "GET", path, now + 3600), "too far from the server's clock"),
        (sign(a.keys, a.id, "GET", "/v1/mail?after=5&wait=0", now), "bad signature"),
        (sign(a.keys, a.id, "POST", path, now), "bad signature"),
        (sign(a.keys, "nobody", "GET", path, now), "unknown node 'nobody'"),
        (
            {**sign(a.keys, a.id, "GET", path, now), "x-tessera-time": "soon"},
            "malformed request keys, time or signature",
        ),
        (
            {**sign(a.keys, a.id, "GET", path, now), "x-tessera-signature": "%%"},
            "malformed request keys, time or signature",
        ),
        (
            {**sign(a.keys, a.id, "GET", path, now), "x-tessera-time": "nan"},
            "too far from the server's clock",
        ),
        (
            {**sign(a.keys, a.id, "GET", path, now), "x-tessera-nonce": "not hex"},
            "must be 32 lowercase hex digits",
        ),
        (
            sign_request(a.keys, "GET", path, at=now),  # a's keys, but not as the node
            "only a registered node may ask this",
        ),
    ]
    before = coord.snapshot()
    for headers, detail in cases:
        status = 403 if "only" in detail else 401
        refused(coord, coord.http.get(path, headers=headers), status, detail, before)
    # Nothing was drained: the node's own signed pull still finds its train request.
    answer = coord.http.get(path, headers=sign(a.keys, a.id, "GET", path, time.time()))
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/msgpack"
    [[mail_id, _]] = msgpack.unpackb(answer.content)
    assert mail_id > 0
    [request] = a.train_requests(coord)
    assert request.round == 0


# -- consent, start, revocation -------------------------------------------------------------


def test_the_job_starts_at_min_consents_with_the_consenting_nodes(
    coord: Harness, nodes: dict[str, Node], job: SignedDocument
) -> None:
    for name in ("node-d", "node-b"):
        assert coord.consent(job, nodes[name]).status_code == 201
    status = coord.status()
    assert (status["state"], status["valid_consents"], status["participants"]) == (
        "waiting",
        2,
        None,
    )
    before = coord.snapshot()
    answer = nodes["node-b"].get(coord, f"/v1/jobs/{JOB}/participants")
    refused(coord, answer, 409, "has not started: its participants are not fixed", before)
    sent = nodes["node-b"].receipt
    assert sent is not None
    body = consent_body(sent, nodes["node-b"].keys, job)
    again = coord.http.post(f"/v1/jobs/{JOB}/consents", json=body)
    assert again.status_code == 201  # a repeat is a no-op
    assert coord.snapshot() == before

    assert coord.consent(job, nodes["node-a"]).status_code == 201
    status = coord.status()
    assert status["state"] == "running"
    assert status["participants"] == ["node-a", "node-b", "node-d"]  # sorted, c left out
    assert status["current_round"] == 0
    listing = nodes["node-a"].get(coord, f"/v1/jobs/{JOB}/participants").json()
    assert [p["node_id"] for p in listing["participants"]] == ["node-a", "node-b", "node-d"]
    for entry in listing["participants"]:  # vouched for, without naming the user (finding 4)
        assert "consent" not in entry
        assert SignedDocument.from_json(entry["attestation"]).body["node"] == entry["node_id"]
    assert listing["coordinator"] == base64.b64encode(coord.service.keys.public.to_bytes()).decode()
    # A late consent from a non-participant is refused, not counted (security finding 9).
    late = coord.consent(job, nodes["node-c"])
    assert late.status_code == 409
    assert "its participants are fixed" in late.json()["detail"]
    assert coord.status()["participants"] == ["node-a", "node-b", "node-d"]
    assert coord.status()["valid_consents"] == 3
    assert nodes["node-c"].pull(coord) == []


def test_revocations_are_checked_and_count(
    coord: Harness, nodes: dict[str, Node], job: SignedDocument
) -> None:
    a, b, c, d = (nodes[n] for n in NAMES)
    url = f"/v1/jobs/{JOB}/revocations"
    for node in (a, b):
        assert coord.consent(job, node).status_code == 201
    assert a.receipt is not None
    assert b.receipt is not None

    def revoke(revocation: SignedDocument, rec: SignedDocument) -> httpx.Response:
        return coord.http.post(
            url, json={"revocation": revocation.to_json(), "receipt": rec.to_json()}
        )

    before = coord.snapshot()
    by_b = sign_document(b.keys, "revocation", revoke_consent(a.keys, receipt=a.receipt, at=0).body)
    answer = revoke(by_b, a.receipt)
    refused(coord, answer, 403, "a revocation must be signed by the user who consented", before)
    of_b = revoke_consent(b.keys, receipt=b.receipt, at=time.time())
    answer = revoke(of_b, a.receipt)  # b's revocation, a's receipt
    refused(coord, answer, 403, "a revocation must be signed by the user who consented", before)
    later = revoke_consent(a.keys, receipt=a.receipt, at=time.time() + 3600)
    refused(coord, revoke(later, a.receipt), 400, "does not revoke that receipt", before)
    other = receipt(a.keys, a.id, job)  # another receipt of a's, never sent
    stray = revoke_consent(a.keys, receipt=other, at=time.time())
    refused(coord, revoke(stray, a.receipt), 400, "does not revoke that receipt", before)
    unsent = receipt(c.keys, c.id, job)
    answer = revoke(revoke_consent(c.keys, receipt=unsent, at=time.time()), unsent)
    refused(coord, answer, 404, "node-c has no consent for tiny", before)

    answer = revoke(revoke_consent(a.keys, receipt=a.receipt, at=time.time()), a.receipt)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"job_id": JOB, "user": "node-a", "revoked": True}
    assert coord.status()["valid_consents"] == 1
    # The revoked receipt sent again is refused and does not count again.
    coord.http.post(f"/v1/jobs/{JOB}/consents", json=consent_body(a.receipt, a.keys, job))
    assert coord.status()["valid_consents"] == 1
    # Two more consents reach the minimum: the revoked user is not a participant.
    for node in (c, d):
        assert coord.consent(job, node).status_code == 201
    status = coord.status()
    assert (status["state"], status["participants"]) == ("running", ["node-b", "node-c", "node-d"])


def test_a_job_whose_weights_do_not_fit_is_refused_at_submission(coord: Harness) -> None:
    """The AI provider signed a length its weights artefact does not have."""
    doc, weights = tiny_job()
    bad = sign_document(AI, "job", {**doc.body, "weights": {**doc.body["weights"], "length": 13}})
    before = coord.snapshot()
    with coord.client() as client:
        client.put_artefact(weights, WEIGHTS_MEDIA_TYPE)
        answer = coord.http.post("/v1/jobs", json={"document": bad.to_json()})
    assert answer.status_code == 422
    assert "weights artefact must hold one float32 vector of 13" in answer.json()["detail"]
    assert coord.snapshot()["jobs"] == before["jobs"]
    coord.restart()
    assert coord.http.get("/v1/health").status_code == 200


def test_a_revoked_receipt_sent_again_is_refused(
    coord: Harness, nodes: dict[str, Node], job: SignedDocument
) -> None:
    a = nodes["node-a"]
    assert coord.consent(job, a).status_code == 201
    assert a.receipt is not None
    with coord.client() as client:
        client.revoke(JOB, revoke_consent(a.keys, receipt=a.receipt, at=time.time()), a.receipt)
    before = coord.snapshot()
    body = consent_body(a.receipt, a.keys, job)
    answer = coord.http.post(f"/v1/jobs/{JOB}/consents", json=body)
    refused(coord, answer, 403, "consent revoked", before)


def test_a_revoked_user_is_not_asked_from_the_next_round_on(
    coord: Harness, nodes: dict[str, Node], running: SignedDocument
) -> None:
    a, b, c = nodes["node-a"], nodes["node-b"], nodes["node-c"]
    coordinator = coord.service.keys.public
    for node in (a, b, c):
        [request] = node.train_requests(coord)
        assert request.round == 0
        assert request.weights.shape == (12,)
    assert c.receipt is not None
    revocation = revoke_consent(c.keys, receipt=c.receipt, at=time.time())
    with coord.client() as client:
        client.revoke(JOB, revocation, c.receipt)
    assert coord.status()["valid_consents"] == 2
    assert coord.status()["current_round"] == 0  # round 0 goes on with c

    for node in (a, b, c):
        assert post_mail(coord, node.update(coordinator, 0)).status_code == 202
    coord.wait_for("round 0 closed", lambda s: len(s["rounds"]) == 1)
    [round0] = coord.status()["rounds"]
    assert round0["included"] == ["node-a", "node-b", "node-c"]  # c's round-0 update counts
    assert round0["selected"] == 3

    for node in (a, b):
        [request] = node.train_requests(coord, wait=10)
        assert request.round == 1
    assert c.pull(coord) == []  # c is asked no more
    # c may still post (it is a participant of the job), but the round does not take it.
    assert post_mail(coord, c.update(coordinator, 1)).status_code == 202
    coord.wait_for("c refused", lambda s: any("node-c was not selected" in r for r in s["refused"]))

    for node in (a, b):
        assert post_mail(coord, node.update(coordinator, 1)).status_code == 202
    coord.wait_for("job finished", lambda s: s["state"] == "finished")
    status = coord.status()
    round1 = status["rounds"][1]
    assert round1["included"] == ["node-a", "node-b"]
    assert (round1["selected"], round1["participants"]) == (2, 2)
    assert status["final_weights"] == round1["weights"]
    assert status["participants"] == ["node-a", "node-b", "node-c"]  # fixed at the start
    assert c.pull(coord) == []


def test_a_replayed_revocation_changes_nothing(
    coord: Harness, nodes: dict[str, Node], running: SignedDocument
) -> None:
    """Security finding 6: revocations are idempotent (one withdrawal logged, not two)."""
    c = nodes["node-c"]
    assert c.receipt is not None
    revocation = revoke_consent(c.keys, receipt=c.receipt, at=time.time())
    with coord.client() as client:
        for _ in range(3):  # the user's retry, or anyone replaying the captured request
            client.revoke(JOB, revocation, c.receipt)
    withdrawals = [e for e in coord.service.store.events(JOB) if e.kind == "withdraw"]
    assert [e.node for e in withdrawals] == ["node-c"]


def test_a_revocation_whose_withdrawal_did_not_commit_is_ended_by_the_retry(
    coord: Harness, nodes: dict[str, Node], running: SignedDocument
) -> None:
    """The database went away between the stored revocation and the driver's withdrawal
    (the request was answered 503): the user's retry withdraws the node, once."""
    c = nodes["node-c"]
    assert c.receipt is not None
    revocation = revoke_consent(c.keys, receipt=c.receipt, at=time.time())
    assert coord.service.store.revoke_consent(JOB, c.id, revocation.to_json(), time.time())
    assert coord.service.drivers[JOB].withdrawn() == frozenset()
    with coord.client() as client:
        for _ in range(2):
            client.revoke(JOB, revocation, c.receipt)
    withdrawals = [e for e in coord.service.store.events(JOB) if e.kind == "withdraw"]
    assert [e.node for e in withdrawals] == ["node-c"]
    assert coord.service.drivers[JOB].withdrawn() == {"node-c"}


def test_a_round_record_counts_its_traffic_through_the_mailbox(
    coord: Harness, nodes: dict[str, Node], running: SignedDocument
) -> None:
    coordinator = coord.service.keys.public
    down = up = 0
    fetched: list[int] = []  # the model each node downloads, as a node agent does

    def weights(sha: str, length: int) -> Any:
        with coord.client() as client:
            data = client.get_artefact(sha)
        fetched.append(len(data))
        return read_weights_artefact(data, sha, length)

    for node in (nodes["node-a"], nodes["node-b"], nodes["node-c"]):
        [train] = node.pull(coord, wait=10)
        from_envelope(
            train,
            me=NodeId(node.id),
            job_id=JOB,
            keys=node.keys,
            directory={COORDINATOR: coordinator},
            replay=node.replay,
            resolve_weights=weights,
        )
        down += len(train)
        update = node.update(coordinator, 0)
        up += len(update)
        assert post_mail(coord, update).status_code == 202
    coord.wait_for("round 0 closed", lambda s: len(s["rounds"]) == 1)
    [round0] = coord.status()["rounds"]
    assert len(fetched) == 3
    down += sum(fetched)  # the requests, and the model each names
    assert (round0["bytes_up"], round0["bytes_down"], round0["bytes_aggregation"]) == (up, down, 0)


def test_traffic_splits_kinds_as_the_simulator_does() -> None:
    counts = {
        int(Kind.TRAIN): (3, 300),
        int(Kind.ASSIGN): (3, 30),
        int(Kind.UPDATE): (2, 2000),
        int(Kind.DECLINE): (1, 50),
        int(Kind.SHARE): (6, 600),
        int(Kind.PARTIAL): (2, 20),
        int(Kind.REPORT): (1, 5),
        int(Kind.EVIDENCE): (1, 7),
    }
    up, down, aggregation = _traffic(counts, 1000)
    assert up == 2000 + 50 + 600
    assert down == 300 + 3 * 1000  # each train request's node fetches the model once
    assert aggregation == 30 + 20 + 5 + 7
    assert _traffic({}, 1000) == (0, 0, 0)


def test_a_restarted_coordinator_resumes_the_job_mid_round(
    coord: Harness, nodes: dict[str, Node], running: SignedDocument
) -> None:
    a, b, c = nodes["node-a"], nodes["node-b"], nodes["node-c"]
    coordinator = coord.service.keys.public
    for node in (a, b, c):
        [request] = node.train_requests(coord)
        assert request.round == 0
    first = a.update(coordinator, 0)
    assert post_mail(coord, first).status_code == 202
    old_url = coord.url

    coord.restart()  # a new service and app over the same SQLite file
    assert coord.url != old_url
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{old_url}/v1/health")
    status = coord.status()
    assert (status["state"], status["current_round"], status["rounds"]) == ("running", 0, [])
    assert status["participants"] == ["node-a", "node-b", "node-c"]
    before = coord.snapshot()
    refused(coord, post_mail(coord, first), 409, "replayed", before)  # across the restart too

    for node in (b, c):
        assert post_mail(coord, node.update(coordinator, 0)).status_code == 202
    coord.wait_for("round 0 closed", lambda s: s["current_round"] == 1)
    [round0] = coord.status()["rounds"]
    assert round0["included"] == ["node-a", "node-b", "node-c"]  # a's pre-restart update too
    before = coord.snapshot()
    refused(coord, post_mail(coord, first), 409, "not the job's current round 1", before)
    for node in (a, b, c):
        [request] = node.train_requests(coord, wait=10)
        assert request.round == 1


# -- large envelopes stream, to a file and back --------------------------------------------


def test_a_large_envelope_streams_to_a_file_and_back_and_one_over_the_job_bound_is_not_kept(
    coord: Harness, nodes: dict[str, Node], running: Any
) -> None:
    """A few-MB share goes to the blob folder as it arrives (its row holds no bytes) and
    streams back to its recipient intact; one over the job's bound for its kind, or with
    a bad signature, is refused with the reason and leaves neither a row nor a file."""
    from tessera.crypto.envelope import seal
    from tessera.protocol.limits import RelayBounds

    a, b = nodes["node-a"], nodes["node-b"]
    limit = 6 << 20
    coord.service._bounds[JOB] = RelayBounds(
        limits={Kind.SHARE: limit}, count=10, bytes=10 * limit
    )  # the tiny job is plaintext: give it a share bound of a large model's kind

    def share(size: int) -> bytes:
        return seal(
            kind=int(Kind.SHARE),
            job_id=JOB,
            round=0,
            sender=a.id,
            recipient=b.id,
            payload=np.random.default_rng(size).bytes(size),
            sender_keys=a.keys,
            recipient_public=b.keys.public,
        )

    folder = coord.db.with_suffix(".mail")
    before = coord.snapshot()
    over = share(limit)  # the payload alone is the bound: the envelope is over it
    answer = post_mail(coord, over)
    refused(coord, answer, 413, f"a share envelope of this job is at most {limit} bytes", before)
    forged = share(4 << 20)
    forged = forged[:-1] + bytes([forged[-1] ^ 1])
    refused(coord, post_mail(coord, forged), 403, "bad signature", before)
    assert list(folder.iterdir()) == []  # nothing kept of either, not even a partial file

    data = share(4 << 20)
    chunks = (data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20))
    answer = coord.http.post("/v1/mail", content=chunks)  # chunked: no length declared
    assert answer.status_code == 202, answer.text
    mail = coord.service.store.messages_for(b.id, 0, load=False)
    (stored,) = [m for m in mail if m.kind == Kind.SHARE]
    assert stored.blob is not None and stored.data == b"" and stored.size == len(data)
    assert (folder / stored.blob).stat().st_size == len(data)
    assert (folder / stored.blob).stat().st_mode & 0o077 == 0  # the relay's alone
    assert b.pull(coord)[-1] == data  # after its train request


def test_a_large_artefact_streams_from_its_file_to_its_uploader(coord: Harness) -> None:
    """Weights over a megabyte lie in the blob folder's ``artefacts`` and stream back out
    with their length (the client reads them in as they come and checks the hash)."""
    from tessera.runtime.transport.mail import weights_artefact

    weights, _ = weights_artefact(np.random.default_rng(7).standard_normal(700_000))
    with coord.client() as client:
        sha = client.put_artefact(weights, WEIGHTS_MEDIA_TYPE)
        assert client.get_artefact(sha) == weights
    assert (coord.db.with_suffix(".mail") / "artefacts" / sha).stat().st_size == len(weights)
    answer = coord.get(f"/v1/artefacts/{sha}")
    assert answer.status_code == 200 and answer.headers["content-length"] == str(len(weights))
    assert answer.content == weights


def test_a_large_envelope_for_an_unknown_job_is_refused_from_its_header(coord: Harness) -> None:
    """An outsider naming a job the relay does not hold is refused from the header, before
    any body is kept: no temporary file of the kind's size (385 MB for an accusation)."""
    from tessera.coordinator.intake import MailIntake
    from tessera.crypto.envelope import seal

    data = seal(
        kind=int(Kind.ACCUSE),
        job_id="nope",
        round=0,
        sender="outsider",
        recipient="coordinator",
        payload=np.zeros(2 << 20, np.uint8).tobytes(),
        sender_keys=NodeKeys.from_seed(b"outsider"),
        recipient_public=None,
    )
    folder = coord.db.with_suffix(".mail")
    intake = MailIntake(coord.service)
    intake.feed(data[:4096])  # the header, and a little
    assert intake.refused is not None and intake.refused.status == 404
    assert "unknown job 'nope'" in intake.refused.reason
    assert list(folder.iterdir()) == []  # nothing was opened to write the body into
    intake.feed(data[4096:])  # the rest is only counted
    with pytest.raises(Refused, match="unknown job"):
        intake.finish()
    before = coord.snapshot()
    refused(coord, post_mail(coord, data), 404, "unknown job 'nope'", before)

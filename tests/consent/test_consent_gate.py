"""The data provider's gate: records go only to the enrolled node, once per request."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tessera.consent import (
    ConsentError,
    ConsentTerms,
    GateState,
    MemoryGateState,
    RecordsGate,
    RecordsRequest,
    ReplayedRequest,
    check_attestation,
    grant_consent,
    revoke_consent,
    sign_attestation_request,
    sign_records_request,
)
from tessera.crypto.documents import SignedDocument, sign_document
from tessera.crypto.keys import NodeKeys
from tessera.data_provider.gate_state import SqlGateState
from tessera.errors import RemoteProtocolError
from tessera.ids import job_id_of

A = NodeKeys.from_seed(b"gate-node-a")
B = NodeKeys.from_seed(b"gate-node-b")
AI = NodeKeys.from_seed(b"gate-ai")
P = NodeKeys.from_seed(b"gate-provider")  # the data provider itself
T0 = 1_780_000_000.0
FIELDS = ("gcsescore", "score")
DATA = {"provider": P.public.fingerprint, "dataset": "chem97", "fields": list(FIELDS)}
JOB = sign_document(AI, "job", {"name": "job-1", "data": DATA})
JID = job_id_of("job-1", JOB.digest)  # the job's id, derived from its document


def job(signer: NodeKeys = AI, **data: Any) -> SignedDocument:
    """A job document whose ``data`` differs from ``JOB``'s by ``data``."""
    return sign_document(signer, "job", {"name": "job-1", "data": {**DATA, **data}})


SUBJECTS = {"school-1": A.public.fingerprint, "school-2": B.public.fingerprint}


def consent(keys: NodeKeys = A, subject: str = "school-1", **changes: Any) -> SignedDocument:
    values: dict[str, Any] = {
        "job_id": JID,
        "job_digest": JOB.digest,
        "purpose": "research",
        "data_categories": FIELDS,
        "ai_provider": AI.public.fingerprint,
        "user": f"node-{subject}",
        "subject": subject,
        "issued_at": T0,
        "expires_at": T0 + 3600,
    }
    values.update(changes)
    return grant_consent(keys, ConsentTerms(**values))


def request(keys: NodeKeys = A, user: str = "school-1", **changes: Any) -> SignedDocument:
    values: dict[str, Any] = {
        "job_id": JID,
        "job_digest": JOB.digest,
        "audience": P.public.fingerprint,
        "node": f"node-{user}",
        "user": user,
        "dataset": "chem97",
        "fields": FIELDS,
        "at": T0,
    }
    values.update(changes)
    return sign_records_request(keys, **values)


def authorize(gate: RecordsGate, **changes: Any) -> Any:
    args: dict[str, Any] = {
        "dataset": "chem97",
        "fields": FIELDS,
        "job": JOB,
        "consent": consent(),
        "request": request(),
        "now": T0 + 5,
    }
    args.update(changes)
    return gate.authorize(**args)


def test_a_valid_request_is_released_once() -> None:
    gate = RecordsGate(SUBJECTS, identity=P)
    req = request()
    release = authorize(gate, request=req)
    assert release.request.user == "school-1"
    assert release.request.fields == FIELDS
    assert release.terms.subject == "school-1"
    gate.commit(release, now=T0 + 5)
    with pytest.raises(ReplayedRequest, match="replayed"):
        authorize(gate, request=req)


def test_concurrent_copies_of_one_request_release_once() -> None:
    gate = RecordsGate(SUBJECTS, identity=P)
    req = request()
    first, second = authorize(gate, request=req), authorize(gate, request=req)
    gate.commit(first, now=T0 + 5)
    with pytest.raises(ReplayedRequest):
        gate.commit(second, now=T0 + 5)


def test_authorize_alone_changes_nothing() -> None:
    state = MemoryGateState()
    gate = RecordsGate(SUBJECTS, identity=P, state=state)
    req = request()
    first = authorize(gate, request=req)
    second = authorize(gate, request=req)  # not committed: the nonce is still fresh
    assert state.nonces == {} and state.revocations == {}  # nothing burnt, nothing kept
    assert first == second
    gate.commit(second, now=T0 + 5)  # the request is still good for one release
    assert len(state.nonces) == 1


def test_nonces_are_forgotten_once_the_request_is_stale_anyway() -> None:
    state = MemoryGateState()
    gate = RecordsGate(SUBJECTS, identity=P, window=300, state=state)
    req = request()
    gate.commit(authorize(gate, request=req), now=T0 + 5)
    assert list(state.nonces.values()) == [T0 + 300]  # kept while the request is fresh
    fresh = request(at=T0 + 400)
    gate.commit(authorize(gate, request=fresh, now=T0 + 400), now=T0 + 400)  # purges the old
    assert list(state.nonces.values()) == [T0 + 700]
    with pytest.raises(ConsentError, match="stale"):
        authorize(gate, request=req, now=T0 + 400)


def _for(other: SignedDocument, reason: str) -> tuple[dict[str, Any], str]:
    """A case presenting ``other`` with a request that names it (its digest)."""
    named = job_id_of(str(other.body.get("name", "")), other.digest)
    return {"job": other, "request": request(job_id=named, job_digest=other.digest)}, reason


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        # node B asks for A's records with A's consent
        ({"request": request(B)}, "not signed by the node key enrolled for user 'school-1'"),
        # node B names user A and brings its own consent for A
        (
            {"request": request(B), "consent": consent(B)},
            "not signed by the node key enrolled for user 'school-1'",
        ),
        # node B uses A's consent with its own (valid) request
        ({"request": request(B, "school-2")}, "consent is not signed by the node key"),
        ({"request": request(user="school-9")}, "no node key is enrolled here for user"),
        ({"request": request(at=T0 - 400)}, "the request is stale"),
        ({"request": request(at=T0 + 400)}, "the request is stale"),
        ({"consent": consent(expires_at=T0 + 1)}, "consent expired at"),
        ({"consent": consent(data_categories=("score",))}, "field 'gcsescore' not covered"),
        ({"consent": consent(subject="school-2")}, "records of 'school-2', not 'school-1'"),
        ({"consent": consent(ai_provider="0" * 64)}, "consent names AI provider 00000000"),
        ({"consent": consent(job_digest="0" * 64)}, "another version of job"),
        _for(sign_document(B, "job", JOB.body), "consent is for job"),
        ({"job": sign_document(AI, "job", {"name": "job-2"})}, "not the one the request names"),
        _for(job(dataset="x"), "the job asks for dataset 'x', not 'chem97'"),
        _for(job(fields=["score"]), "the job does not ask for field\\(s\\) 'gcsescore'"),
        (
            {"job": SignedDocument("job", {"name": "job-2"}, AI.public, JOB.signature)},
            "job: bad signature",
        ),
        # Security finding 1: a request bound to its audience, its job document and a job
        # that names this provider; anything made for someone else is refused here.
        (
            {"request": request(audience=B.public.fingerprint)},
            "meant for data provider",
        ),
        _for(job(provider=B.public.fingerprint), "does not name this data provider"),
        _for(sign_document(AI, "job", {"name": "job-1"}), "does not name this data provider"),
        ({"job": job(purpose="changed")}, "not the one the request names"),
        (
            {"request": SignedDocument("records-request", {}, A.public, JOB.signature)},
            "records-request refused: records-request: bad signature",
        ),
    ],
)
def test_refusals(changes: dict[str, Any], reason: str) -> None:
    gate = RecordsGate(SUBJECTS, identity=P)
    with pytest.raises(ConsentError, match=reason):
        authorize(gate, **changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"dataset": "other"},
        {"fields": ("score",)},
        {"request": sign_document(A, "records-request", {"job_id": JID})},
        {"request": request(nonce="not-hex")},
    ],
)
def test_malformed_or_mismatched_requests_are_protocol_errors(changes: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        authorize(RecordsGate(SUBJECTS, identity=P), **changes)
    assert not isinstance(info.value, ConsentError)


def test_revocation_is_remembered_and_refuses_the_consent() -> None:
    gate = RecordsGate(SUBJECTS, identity=P)
    receipt = consent()
    revocation = revoke_consent(A, receipt=receipt, at=T0 + 1)
    assert gate.revoke(revocation, receipt, now=T0 + 2) == receipt.digest
    gate.revoke(revocation, receipt, now=T0 + 2)  # idempotent
    with pytest.raises(ConsentError, match="consent revoked"):
        authorize(gate, consent=receipt)
    authorize(gate, consent=consent(purpose="a fresh consent"))  # a new receipt is fine


def test_revocations_are_forgotten_once_the_receipt_expires() -> None:
    state = MemoryGateState()
    gate = RecordsGate(SUBJECTS, identity=P, state=state)
    receipt = consent(expires_at=T0 + 10)
    gate.revoke(revoke_consent(A, receipt=receipt, at=T0), receipt, now=T0 + 1)
    gate.revoke(revoke_consent(A, receipt=consent(), at=T0), consent(), now=T0 + 11)
    assert list(state.revocations) == [consent().digest]


def test_revocations_by_others_or_for_unenrolled_users_are_refused() -> None:
    state = MemoryGateState()
    gate = RecordsGate(SUBJECTS, identity=P, state=state)
    receipt = consent()
    forged = sign_document(B, "revocation", revoke_consent(A, receipt=receipt, at=T0).body)
    with pytest.raises(ConsentError, match="not signed by the key that granted"):
        gate.revoke(forged, receipt, now=T0)
    stranger = NodeKeys.from_seed(b"stranger")
    own = consent(stranger)
    with pytest.raises(ConsentError, match="not enrolled here for user 'school-1'"):
        gate.revoke(revoke_consent(stranger, receipt=own, at=T0), own, now=T0)
    assert not state.revocations


def test_enrolments_may_be_added_later() -> None:
    subjects: dict[str, str] = {}
    gate = RecordsGate(subjects, identity=P)
    with pytest.raises(ConsentError, match="no node key is enrolled"):
        authorize(gate)
    subjects["school-1"] = A.public.fingerprint
    authorize(gate)


def test_request_document_round_trip() -> None:
    doc = request(nonce="ab" * 16)
    parsed = RecordsRequest.from_document(doc)
    assert parsed.nonce == "ab" * 16
    assert parsed.signer == A.public
    assert parsed.at == T0
    assert len(RecordsRequest.from_document(request()).nonce) == 32


# --- the gate's state: a restart forgets neither revocations nor used nonces ---------------


@pytest.fixture
def reopen(store_url: str) -> Iterator[Callable[[], SqlGateState]]:
    """Open the state at ``store_url`` anew, closing the last one: a provider restart."""
    opened: list[SqlGateState] = []

    def restart() -> SqlGateState:
        if opened:
            opened[-1].close()
        opened.append(SqlGateState(store_url))
        return opened[-1]

    yield restart
    for state in opened:
        state.close()


def test_both_states_are_gate_states(tmp_path: Path) -> None:
    assert isinstance(MemoryGateState(), GateState)
    with SqlGateState(f"sqlite:///{tmp_path / 'gate.db'}") as state:
        assert isinstance(state, GateState)
    assert isinstance(RecordsGate(SUBJECTS, identity=P).state, MemoryGateState)


def test_a_revoked_consent_stays_revoked_after_a_restart(
    reopen: Callable[[], SqlGateState],
) -> None:
    gate = RecordsGate(SUBJECTS, identity=P, state=reopen())
    receipt = consent()
    authorize(gate, consent=receipt)
    gate.revoke(revoke_consent(A, receipt=receipt, at=T0 + 1), receipt, now=T0 + 2)
    with pytest.raises(ConsentError, match="consent revoked at") as before:
        authorize(gate, consent=receipt)
    restarted = RecordsGate(SUBJECTS, identity=P, state=reopen())
    with pytest.raises(ConsentError) as after:
        authorize(restarted, consent=receipt)
    assert after.value.reason == before.value.reason == "consent revoked at 2026-05-28T20:26:41Z"
    authorize(restarted, consent=consent(purpose="a fresh consent"))


def test_a_released_request_is_a_replay_after_a_restart(
    reopen: Callable[[], SqlGateState],
) -> None:
    gate = RecordsGate(SUBJECTS, identity=P, state=reopen())
    req = request()
    release = authorize(gate, request=req)
    gate.commit(release, now=T0 + 5)
    restarted = RecordsGate(SUBJECTS, identity=P, state=reopen())
    with pytest.raises(ReplayedRequest, match="replayed"):
        authorize(restarted, request=req, now=T0 + 6)
    with pytest.raises(ReplayedRequest):
        restarted.commit(release, now=T0 + 6)
    with pytest.raises(ConsentError, match="stale"):  # once its window passed: stale, not replayed
        authorize(restarted, request=req, now=T0 + 301)
    other = authorize(restarted, request=request(), now=T0 + 6)  # a fresh nonce passes
    restarted.commit(other, now=T0 + 6)


def test_the_earliest_revocation_counts_and_a_later_one_waits(store_url: str) -> None:
    receipt = consent()
    with SqlGateState(store_url) as sql:
        for state in (MemoryGateState(), sql):
            gate = RecordsGate(SUBJECTS, identity=P, state=state)
            gate.revoke(revoke_consent(A, receipt=receipt, at=T0 + 1000), receipt, now=T0)
            authorize(gate, consent=receipt)  # not yet in effect
            with pytest.raises(ConsentError, match="consent revoked at 2026-05-28T20:43:20Z"):
                authorize(gate, consent=receipt, request=request(at=T0 + 950), now=T0 + 950)
            gate.revoke(revoke_consent(A, receipt=receipt, at=T0 + 3), receipt, now=T0 + 4)
            gate.revoke(revoke_consent(A, receipt=receipt, at=T0 + 500), receipt, now=T0 + 4)
            with pytest.raises(ConsentError, match="consent revoked at 2026-05-28T20:26:43Z"):
                authorize(gate, consent=receipt)


# --- attestations: one node per user per job ------------------------------------------------

COMMIT = "c" * 64


def ask(keys: NodeKeys = A, node: str = "node-school-1", **changes: Any) -> SignedDocument:
    values: dict[str, Any] = {
        "job_id": JID,
        "job_digest": JOB.digest,
        "audience": P.public.fingerprint,
        "node": node,
        "user": "school-1",
        "commitment": COMMIT,
        "at": T0,
    }
    values.update(changes)
    return sign_attestation_request(keys, **values)


def test_an_attestation_vouches_for_one_node_per_user_and_job() -> None:
    gate = RecordsGate(SUBJECTS, identity=P)
    vouched = gate.attest(job=JOB, consent=consent(), request=ask(), now=T0 + 5)
    assert (
        check_attestation(
            vouched,
            provider=P.public.fingerprint,
            job_digest=JOB.digest,
            node="node-school-1",
            node_keys=A.public,
        )
        == COMMIT
    )
    with pytest.raises(ConsentError, match="one node per user per job"):
        gate.attest(job=JOB, consent=consent(), request=ask(node="node-2"), now=T0 + 5)
    again = ask(nonce="ab" * 16)
    gate.attest(job=JOB, consent=consent(), request=again, now=T0 + 5)  # the same node: fine
    with pytest.raises(ReplayedRequest):
        gate.attest(job=JOB, consent=consent(), request=again, now=T0 + 5)


@pytest.mark.parametrize(
    "changes",
    [
        {"commitment": "not hex"},
        {"node": ""},
        {"user": ""},
        {"nonce": "short"},
    ],
)
def test_malformed_attestation_requests_are_protocol_errors(changes: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        RecordsGate(SUBJECTS, identity=P).attest(
            job=JOB, consent=consent(), request=ask(**changes), now=T0 + 5
        )
    assert not isinstance(info.value, ConsentError)


def test_an_attestation_is_checked_field_by_field() -> None:
    gate = RecordsGate(SUBJECTS, identity=P)
    good = gate.attest(job=JOB, consent=consent(), request=ask(), now=T0 + 5).body
    cases = [
        (None, "has no attestation"),
        (sign_document(B, "attestation", good), "not signed by the job's data provider"),
        (sign_document(P, "consent", good), "expected a 'attestation' document"),
        (sign_document(P, "attestation", {**good, "extra": 1}), "malformed"),
        (sign_document(P, "attestation", {**good, "commitment": 7}), "no beacon commitment"),
    ]
    for doc, reason in cases:
        with pytest.raises(ConsentError, match=reason):
            check_attestation(
                doc,
                provider=P.public.fingerprint,
                job_digest=JOB.digest,
                node="node-school-1",
                node_keys=A.public,
            )

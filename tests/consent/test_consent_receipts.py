"""Consent receipts and revocations: what a user signed is exactly what is checked."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.consent import (
    CLOCK_SKEW,
    ConsentError,
    ConsentTerms,
    check_consent,
    grant_consent,
    revoke_consent,
)
from tessera.crypto.documents import SignedDocument, sign_document
from tessera.crypto.keys import NodeKeys
from tessera.errors import RemoteProtocolError

USER = NodeKeys.from_seed(b"user-a")
OTHER = NodeKeys.from_seed(b"user-b")
AI = NodeKeys.from_seed(b"ai-provider")
DIGEST = hashlib.sha256(b"job-document").hexdigest()
T0 = 1_780_000_000.0


def terms(**changes: Any) -> ConsentTerms:
    values: dict[str, Any] = {
        "job_id": "chem97-score",
        "job_digest": DIGEST,
        "purpose": "predict A-level chemistry scores",
        "data_categories": ("gcsescore", "gender", "score"),
        "ai_provider": AI.public.fingerprint,
        "user": "node-000001",
        "issued_at": T0,
        "expires_at": T0 + 86400,
    }
    values.update(changes)
    return ConsentTerms(**values)


def check(receipt: SignedDocument, **changes: Any) -> ConsentTerms:
    args: dict[str, Any] = {
        "job_id": "chem97-score",
        "job_digest": DIGEST,
        "user": "node-000001",
        "user_keys": USER.public,
        "fields": ("score",),
        "now": T0 + 10,
    }
    args.update(changes)
    return check_consent(receipt, **args)


RECEIPT = grant_consent(USER, terms())


# --- the happy path ----------------------------------------------------------------------


def test_grant_then_check_returns_the_terms() -> None:
    assert check(RECEIPT) == terms()
    assert check(RECEIPT, user_keys=None, fields=()) == terms()
    assert RECEIPT.kind == "consent"
    assert RECEIPT.signer == USER.public


texts = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(
    job_id=texts,
    purpose=texts,
    user=texts,
    subject=st.none() | texts,
    categories=st.lists(texts, min_size=1, max_size=6, unique=True),
    issued=st.floats(0, 4e9),
    lifetime=st.floats(1e-3, 1e8),
    data=st.data(),
)
def test_grant_check_round_trips(
    job_id: str,
    purpose: str,
    user: str,
    subject: str | None,
    categories: list[str],
    issued: float,
    lifetime: float,
    data: st.DataObject,
) -> None:
    t = terms(
        job_id=job_id,
        purpose=purpose,
        user=user,
        subject=subject,
        data_categories=tuple(categories),
        issued_at=issued,
        expires_at=issued + lifetime,
    )
    receipt = grant_consent(USER, t)
    wire = SignedDocument.from_json(json.loads(json.dumps(receipt.to_json())))
    asked = data.draw(st.lists(st.sampled_from(categories), unique=True))
    now = data.draw(st.floats(issued, issued + lifetime).filter(lambda x: x < t.expires_at))
    got = check_consent(
        wire,
        job_id=job_id,
        job_digest=DIGEST,
        user=user,
        subject=t.data_subject,
        user_keys=USER.public,
        fields=asked,
        now=now,
    )
    assert got == t
    assert ConsentTerms.from_json(t.to_json()) == t


# --- every mutation is refused -----------------------------------------------------------


def _mutations(value: Any) -> list[Any]:
    """Values different from ``value`` (by JSON) that a tamperer might try."""
    candidates: list[Any] = [None, 0, 1.5, "", "x", [], {}, True, [value]]
    if isinstance(value, str):
        candidates += [value + "0", value[:-1], value.upper() if value.upper() != value else "Z"]
    if isinstance(value, float):
        candidates += [value + 1, value - 1e-3, int(value)]
    if isinstance(value, list):
        candidates += [value[:-1], [*value, "extra"], list(reversed(value))]
    return [c for c in candidates if json.dumps(c) != json.dumps(value)]


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_any_body_field_mutation_is_refused(data: st.DataObject) -> None:
    body = RECEIPT.to_json()["body"]
    key = data.draw(st.sampled_from([*sorted(body), "new_key"]))
    new = data.draw(st.sampled_from(_mutations(body.get(key, "absent"))))
    tampered = {**body, key: new}
    doc = SignedDocument(
        kind=RECEIPT.kind, body=tampered, signer=RECEIPT.signer, signature=RECEIPT.signature
    )
    with pytest.raises(ConsentError, match="bad signature"):
        check(doc, user_keys=None)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_byte_mutation_is_refused_or_changes_nothing(data: st.DataObject) -> None:
    wire = json.dumps(RECEIPT.to_json()).encode()
    at = data.draw(st.integers(0, len(wire) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != wire[at]))
    mutated = wire[:at] + bytes([byte]) + wire[at + 1 :]
    try:
        doc = SignedDocument.from_json(json.loads(mutated))
    except (ValueError, RemoteProtocolError):
        return  # not JSON, or not a document: refused before any check
    if doc == RECEIPT:
        return  # e.g. whitespace, or another spelling of the same base64: the same document
    with pytest.raises(ConsentError):
        check(doc)


@pytest.mark.parametrize("part", ["signature", "signer"])
def test_flipping_any_byte_of_signature_or_signer_is_refused(part: str) -> None:
    raw = RECEIPT.signature if part == "signature" else RECEIPT.signer.to_bytes()
    for i in range(len(raw)):
        flipped = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :]
        wire = {**RECEIPT.to_json(), part: base64.b64encode(flipped).decode()}
        doc = SignedDocument.from_json(wire)
        with pytest.raises(ConsentError):
            check(doc)


def test_a_swapped_agreement_key_breaks_the_signature() -> None:
    """The signature covers both public keys, not just the Ed25519 one."""
    swapped = SignedDocument(
        kind=RECEIPT.kind,
        body=RECEIPT.body,
        signer=type(USER.public)(signing=USER.public.signing, agreement=OTHER.public.agreement),
        signature=RECEIPT.signature,
    )
    with pytest.raises(ConsentError, match="bad signature"):
        check(swapped, user_keys=None)


# --- each refusal says why ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"job_id": "other-job"}, "consent is for job 'chem97-score', not 'other-job'"),
        ({"job_digest": "0" * 64}, "another version of job"),
        ({"user": "node-000002"}, "consent is for user 'node-000001', not 'node-000002'"),
        ({"subject": "school-9"}, "records of 'node-000001', not 'school-9'"),
        ({"user_keys": OTHER.public}, "not signed by the node key of user"),
        ({"fields": ("score", "age")}, "field 'age' not covered by consent"),
        ({"now": T0 + 86400}, "consent expired at 2026-05-29T20:26:40Z"),
        ({"now": T0 - CLOCK_SKEW - 1}, "consent is not valid yet"),
    ],
)
def test_refusals_name_the_reason(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConsentError, match=reason.replace("(", r"\(")) as info:
        check(RECEIPT, **changes)
    assert info.value.reason == str(info.value)


def test_small_clock_skew_on_issue_is_tolerated() -> None:
    assert check(RECEIPT, now=T0 - CLOCK_SKEW + 1) == terms()


def test_a_document_of_another_kind_is_not_a_consent() -> None:
    job = sign_document(USER, "job", terms().to_json())
    with pytest.raises(ConsentError, match="expected a 'consent' document, got 'job'"):
        check(job)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {**terms().to_json(), "extra": 1},
        {**terms().to_json(), "data_categories": "score"},
        {**terms().to_json(), "data_categories": []},
        {**terms().to_json(), "expires_at": T0 - 1},
        {**terms().to_json(), "issued_at": True},
        {**terms().to_json(), "job_digest": "ABC"},
    ],
)
def test_malformed_terms_are_refused_even_when_signed(body: dict[str, Any]) -> None:
    receipt = sign_document(USER, "consent", body)
    with pytest.raises(ConsentError, match="consent is malformed"):
        check(receipt)


def test_terms_validate_on_construction() -> None:
    with pytest.raises(ValueError, match="expires_at must be after issued_at"):
        terms(expires_at=T0)
    with pytest.raises(ValueError, match="data_categories lists a field twice"):
        terms(data_categories=("a", "a"))
    with pytest.raises(ValueError, match="ai_provider"):
        terms(ai_provider="not-hex")
    with pytest.raises(ValueError, match="issued_at must be finite"):
        terms(issued_at=float("nan"))
    with pytest.raises(TypeError):
        grant_consent(USER, terms().to_json())  # type: ignore[arg-type]


# --- revocation --------------------------------------------------------------------------


def test_revocation_by_the_same_key_revokes() -> None:
    revocation = revoke_consent(USER, receipt=RECEIPT, at=T0 + 100)
    assert revocation.kind == "revocation"
    assert revocation.body["receipt"] == RECEIPT.digest
    assert check(RECEIPT, now=T0 + 10, revocations=[revocation]) == terms()  # not yet
    with pytest.raises(ConsentError, match="consent revoked at 2026-"):
        check(RECEIPT, now=T0 + 100, revocations=[revocation])


def test_revocation_by_another_key_does_not_revoke() -> None:
    forged = sign_document(OTHER, "revocation", revoke_consent(USER, receipt=RECEIPT, at=T0).body)
    assert check(RECEIPT, now=T0 + 100, revocations=[forged]) == terms()
    with pytest.raises(ValueError, match="only the key that signed"):
        revoke_consent(OTHER, receipt=RECEIPT, at=T0)


@settings(max_examples=20, deadline=None)
@given(seed=st.binary(min_size=1, max_size=16).filter(lambda s: s != b"user-a"))
def test_revocations_by_any_other_key_never_revoke(seed: bytes) -> None:
    keys = NodeKeys.from_seed(seed)
    own = grant_consent(keys, terms())
    other_revocation = revoke_consent(keys, receipt=own, at=T0)
    forged = sign_document(keys, "revocation", {**other_revocation.body, "receipt": RECEIPT.digest})
    assert check(RECEIPT, now=T0 + 100, revocations=[other_revocation, forged]) == terms()


def test_revocation_of_another_receipt_or_with_tampered_body_does_not_revoke() -> None:
    second = grant_consent(USER, terms(purpose="another purpose"))
    of_second = revoke_consent(USER, receipt=second, at=T0)
    tampered = SignedDocument(
        kind="revocation",
        body={**of_second.body, "receipt": RECEIPT.digest},
        signer=USER.public,
        signature=of_second.signature,
    )
    misnamed = sign_document(
        USER, "revocation", {**of_second.body, "receipt": RECEIPT.digest, "job_id": "other"}
    )
    assert check(RECEIPT, now=T0 + 100, revocations=[of_second, tampered, misnamed]) == terms()
    with pytest.raises(ConsentError, match="revoked"):
        check(second, now=T0 + 100, revocations=[of_second], fields=())

"""Consent receipts and revocations: what a user signed, checked without any I/O.

Theory of operation
-------------------
A user consents to one training job by signing a ``"consent"`` document
(``tessera.crypto.documents``) with their node key: the body is
``ConsentTerms.to_json()``, naming the job (id and digest of the signed job
document), the purpose, the data categories (field names) released, the AI
provider (fingerprint of its keys), the user (their node id), optionally the
user's id at the data provider (``subject``, e.g. their account or school
there, when it differs from the node id) and a validity window. The
receipt's own digest names it.

A revocation is a ``"revocation"`` document signed by the same key, naming
the receipt's digest, the job (id and document digest), the AI provider,
the user and the instant it takes effect. Only the
key that granted a consent can revoke it: a revocation signed by anyone
else, or naming another receipt, is ignored.

``check_consent`` is the one gate every reader goes through (the data
provider before releasing records, the coordinator before counting a
contributor). Time is passed in (``now``); nothing here reads a clock. It
returns the terms or raises ``ConsentError`` with a reason for people.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tessera.consent._errors import ConsentError
from tessera.crypto.documents import (
    DocumentKind,
    SignedDocument,
    sign_document,
    verify_document,
)
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.errors import RemoteProtocolError

__all__ = [
    "CLOCK_SKEW",
    "CONSENT_KIND",
    "REVOCATION_KIND",
    "ConsentTerms",
    "check_consent",
    "grant_consent",
    "revoke_consent",
]

CONSENT_KIND = DocumentKind.CONSENT
REVOCATION_KIND = DocumentKind.REVOCATION
#: Seconds a receipt's ``issued_at`` (or a revocation's ``revoked_at``) may lie
#: ahead of the reader's clock: the signer's clock may run a little fast.
CLOCK_SKEW = 60.0

_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_TEXT = 512
_TERMS_KEYS = frozenset(
    {
        "job_id",
        "job_digest",
        "purpose",
        "data_categories",
        "ai_provider",
        "user",
        "issued_at",
        "expires_at",
    }
)
_OPTIONAL_TERMS_KEYS = frozenset({"subject"})
_REVOCATION_KEYS = frozenset(
    {"job_id", "job_digest", "ai_provider", "user", "receipt", "revoked_at"}
)


def when(t: float) -> str:
    """``2026-05-01T12:00:00Z``: a unix time for error messages."""
    try:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"unix time {t!r}"


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
        raise ValueError(f"{name} must be a non-empty string of at most {_MAX_TEXT} characters")
    return value


def _hex64(name: str, value: object) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ValueError(f"{name} must be 64 lowercase hex characters (a SHA-256)")
    return value


def _instant(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number (unix seconds)")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite")
    return number


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsentTerms:
    """What one user agreed to for one job; invalid terms cannot be built (ValueError)."""

    job_id: str
    job_digest: str
    purpose: str
    data_categories: tuple[str, ...]
    ai_provider: str
    user: str
    issued_at: float
    expires_at: float
    subject: str | None = None  # the user's id at the data provider; None: same as user

    def __post_init__(self) -> None:
        _text("job_id", self.job_id)
        _hex64("job_digest", self.job_digest)
        _text("purpose", self.purpose)
        _hex64("ai_provider", self.ai_provider)
        _text("user", self.user)
        if self.subject is not None:
            _text("subject", self.subject)
        categories = self.data_categories
        if not isinstance(categories, tuple) or not categories:
            raise ValueError("data_categories must be a non-empty tuple of field names")
        for field in categories:
            _text("each data category", field)
        if len(set(categories)) != len(categories):
            raise ValueError("data_categories lists a field twice")
        object.__setattr__(self, "issued_at", _instant("issued_at", self.issued_at))
        object.__setattr__(self, "expires_at", _instant("expires_at", self.expires_at))
        if not self.expires_at > self.issued_at:
            raise ValueError("expires_at must be after issued_at")

    def to_json(self) -> dict[str, Any]:
        """The body of the signed receipt."""
        return {
            "job_id": self.job_id,
            "job_digest": self.job_digest,
            "purpose": self.purpose,
            "data_categories": list(self.data_categories),
            "ai_provider": self.ai_provider,
            "user": self.user,
            "subject": self.subject,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
        }

    @property
    def data_subject(self) -> str:
        """Whose records the consent releases, as the data provider names them."""
        return self.user if self.subject is None else self.subject

    @classmethod
    def from_json(cls, value: object) -> ConsentTerms:
        """Parse a receipt body; anything malformed raises ``ConsentError``."""
        if not isinstance(value, dict) or not (
            _TERMS_KEYS <= set(value) <= _TERMS_KEYS | _OPTIONAL_TERMS_KEYS
        ):
            raise ConsentError(
                "consent is malformed: the terms must have exactly "
                + ", ".join(sorted(_TERMS_KEYS))
                + " (and optionally subject)"
            )
        categories = value["data_categories"]
        if not isinstance(categories, list):
            raise ConsentError("consent is malformed: data_categories must be a list")
        try:
            return cls(**{**value, "data_categories": tuple(categories)})
        except ValueError as exc:
            raise ConsentError(f"consent is malformed: {exc}") from None


def grant_consent(keys: NodeKeys, terms: ConsentTerms) -> SignedDocument:
    """The user's signed receipt for ``terms``; ``keys`` are the user's node keys."""
    if not isinstance(terms, ConsentTerms):
        raise TypeError("terms must be ConsentTerms")
    return sign_document(keys, CONSENT_KIND, terms.to_json())


def revoke_consent(keys: NodeKeys, *, receipt: SignedDocument, at: float) -> SignedDocument:
    """Withdraw ``receipt`` from instant ``at`` on; only the key that granted it may."""
    if receipt.signer != keys.public:
        raise ValueError("only the key that signed a consent receipt can revoke it")
    terms = _receipt_terms(receipt)
    body = {
        "job_id": terms.job_id,
        "job_digest": terms.job_digest,
        "ai_provider": terms.ai_provider,
        "user": terms.user,
        "receipt": receipt.digest,
        "revoked_at": _instant("at", at),
    }
    return sign_document(keys, REVOCATION_KIND, body)


def revocation_time(
    revocation: SignedDocument, receipt: SignedDocument, terms: ConsentTerms
) -> float:
    """When ``revocation`` withdraws ``receipt``; ``ConsentError`` if it cannot."""
    if revocation.signer != receipt.signer:
        raise ConsentError("revocation is not signed by the key that granted the consent")
    try:
        body = verify_document(revocation, kind=REVOCATION_KIND)
    except RemoteProtocolError as exc:
        raise ConsentError(str(exc)) from None
    if set(body) != _REVOCATION_KEYS:
        raise ConsentError(
            "revocation is malformed: it must have exactly " + ", ".join(sorted(_REVOCATION_KEYS))
        )
    if body["receipt"] != receipt.digest:
        raise ConsentError("revocation names another consent receipt")
    named = (body["job_id"], body["job_digest"], body["ai_provider"], body["user"])
    if named != (terms.job_id, terms.job_digest, terms.ai_provider, terms.user):
        raise ConsentError("revocation names another job, AI provider or user than the receipt")
    try:
        return _instant("revoked_at", body["revoked_at"])
    except ValueError as exc:
        raise ConsentError(f"revocation is malformed: {exc}") from None


def check_consent(
    receipt: SignedDocument,
    *,
    job_id: str,
    job_digest: str,
    user: str | None,
    subject: str | None = None,
    user_keys: PublicKeys | None = None,
    fields: Iterable[str] = (),
    now: float,
    revocations: Iterable[SignedDocument] = (),
) -> ConsentTerms:
    """The terms of ``receipt`` if it lets ``user``'s data ``fields`` serve this job at ``now``.

    Checks, in order: the signature (by ``user_keys`` when given), that the
    terms name this job, job digest, user (node id) and, when given, subject
    (the user's id at the data provider), that every field is covered,
    that ``now`` lies in ``[issued_at - CLOCK_SKEW, expires_at)``, and that no
    valid revocation in ``revocations`` has taken effect. Revocations that
    are not valid for this receipt are ignored. Raises ``ConsentError``.

    ``user=None`` skips the node-id check: only for a reader that binds the
    receipt to a person otherwise (the data provider, by ``user_keys`` and
    ``subject``); it must be passed explicitly.
    """
    if user_keys is not None and receipt.signer != user_keys:
        raise ConsentError(
            f"consent is not signed by the node key of user {user or subject or '?'!r}"
        )
    terms = _receipt_terms(receipt)
    if terms.job_id != job_id:
        raise ConsentError(f"consent is for job {terms.job_id!r}, not {job_id!r}")
    if terms.job_digest != job_digest:
        raise ConsentError(
            f"consent is for another version of job {job_id!r} "
            f"(digest {terms.job_digest[:16]}..., not {job_digest[:16]}...)"
        )
    if user is not None and terms.user != user:
        raise ConsentError(f"consent is for user {terms.user!r}, not {user!r}")
    if subject is not None and terms.data_subject != subject:
        raise ConsentError(f"consent is for the records of {terms.data_subject!r}, not {subject!r}")
    covered = set(terms.data_categories)
    for field in fields:
        if field not in covered:
            raise ConsentError(
                f"field {field!r} not covered by consent "
                f"(it covers {', '.join(map(repr, terms.data_categories))})"
            )
    if now < terms.issued_at - CLOCK_SKEW:
        raise ConsentError(f"consent is not valid yet: issued at {when(terms.issued_at)}")
    if now >= terms.expires_at:
        raise ConsentError(f"consent expired at {when(terms.expires_at)}")
    for revocation in revocations:
        try:
            revoked_at = revocation_time(revocation, receipt, terms)
        except ConsentError:
            continue  # not a valid revocation of this receipt: it cannot withdraw it
        if revoked_at <= now + CLOCK_SKEW:
            raise ConsentError(f"consent revoked at {when(revoked_at)}")
    return terms


def _receipt_terms(receipt: SignedDocument) -> ConsentTerms:
    """Verify the receipt's kind and signature (by whoever signed it) and parse its terms."""
    if not isinstance(receipt, SignedDocument):
        raise ConsentError("consent must be a signed document")
    try:
        body = verify_document(receipt, kind=CONSENT_KIND)
    except RemoteProtocolError as exc:
        raise ConsentError(str(exc)) from None
    return ConsentTerms.from_json(body)

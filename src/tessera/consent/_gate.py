"""The data provider's gate: release a user's records only to that user's node.

Theory of operation
-------------------
A node asks for its user's records with a ``"records-request"`` document
signed by its node key, naming job, user (the *subject*: the user's id at
this provider, a value of the dataset's user field), dataset, fields, a
fresh 16-byte nonce and the instant it was made. ``RecordsGate.authorize``
lets it through only when all of these hold:

1. the request's signature is valid and made by the node key the provider
   has *enrolled* for that subject. Enrolment (``subjects``: subject ->
   node key fingerprint, recorded when the user linked their node to their
   account here) is the only link between a person and a key: a consent or
   request signed by any other key names the subject in vain;
2. the request is fresh (``|now - at| <= window``) and its nonce unused;
3. the job document is validly signed, by the AI provider the consent
   names, and (when it says) asks for this dataset and these fields;
4. ``check_consent`` accepts the receipt, signed by that same key, for this
   job, digest, subject and fields at ``now``, given the revocations the
   provider has been sent.

``authorize`` changes nothing; ``commit`` then burns the nonce, atomically,
once the records are ready to go out, so a refused request (including one
refused after authorization, e.g. for an unknown user) leaves no trace and
two concurrent copies of one request release the records once. The gate
holds no clock and does no I/O; it is safe to share between threads.
"""

from __future__ import annotations

import math
import re
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tessera.consent._errors import ConsentError, ReplayedRequest
from tessera.consent._receipts import (
    ConsentTerms,
    _receipt_terms,
    check_consent,
    revocation_time,
    when,
)
from tessera.crypto.documents import SignedDocument, sign_document, verify_document
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.errors import RemoteProtocolError

__all__ = [
    "REQUEST_KIND",
    "REQUEST_WINDOW",
    "Enrolment",
    "RecordsGate",
    "RecordsRequest",
    "Release",
    "sign_records_request",
]

REQUEST_KIND = "records-request"
#: Seconds a records request stays acceptable around its ``at``.
REQUEST_WINDOW = 300.0

#: subject (the user's id at the data provider) -> fingerprint of their node's keys.
Enrolment = Mapping[str, str]

_NONCE = re.compile(r"[0-9a-f]{32}")
_REQUEST_KEYS = frozenset({"job_id", "user", "dataset", "fields", "nonce", "at"})


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordsRequest:
    """The checked body of a records request, and who signed it."""

    job_id: str
    user: str
    dataset: str
    fields: tuple[str, ...]
    nonce: str
    at: float
    signer: PublicKeys

    @classmethod
    def from_document(cls, doc: SignedDocument) -> RecordsRequest:
        """Verify kind and signature, then parse; bad signature raises ``ConsentError``.

        A well-signed but malformed body raises ``RemoteProtocolError``.
        """
        try:
            body = verify_document(doc, kind=REQUEST_KIND)
        except RemoteProtocolError as exc:
            raise ConsentError(f"records request refused: {exc}") from None
        if set(body) != _REQUEST_KEYS:
            raise RemoteProtocolError(
                "records request must have exactly " + ", ".join(sorted(_REQUEST_KEYS))
            )
        texts = [body[k] for k in ("job_id", "user", "dataset")]
        fields, nonce, at = body["fields"], body["nonce"], body["at"]
        if not all(isinstance(t, str) and t for t in texts):
            raise RemoteProtocolError("records request: job_id, user, dataset must be strings")
        if not isinstance(fields, list) or not all(isinstance(f, str) and f for f in fields):
            raise RemoteProtocolError("records request: fields must be a list of field names")
        if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
            raise RemoteProtocolError("records request: nonce must be 32 lowercase hex digits")
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise RemoteProtocolError("records request: at must be a number (unix seconds)")
        return cls(
            job_id=texts[0],
            user=texts[1],
            dataset=texts[2],
            fields=tuple(fields),
            nonce=nonce,
            at=float(at),
            signer=doc.signer,
        )


def sign_records_request(
    keys: NodeKeys,
    *,
    job_id: str,
    user: str,
    dataset: str,
    fields: Sequence[str],
    at: float,
    nonce: str | None = None,
) -> SignedDocument:
    """The node's signed request for its user's ``fields``; a fresh nonce unless given."""
    body: dict[str, Any] = {
        "job_id": job_id,
        "user": user,
        "dataset": dataset,
        "fields": list(fields),
        "nonce": secrets.token_hex(16) if nonce is None else nonce,
        "at": float(at),
    }
    return sign_document(keys, REQUEST_KIND, body)


@dataclass(frozen=True, slots=True)
class Release:
    """An authorized request: give ``request.user``'s ``request.fields`` of ``request.dataset``."""

    request: RecordsRequest
    terms: ConsentTerms


class RecordsGate:
    """Remembers revocations and used nonces; decides whether records may go out."""

    def __init__(self, subjects: Enrolment, *, window: float = REQUEST_WINDOW) -> None:
        """``subjects`` may be a live mapping: enrolments added later count at once."""
        if not (math.isfinite(window) and window > 0):
            raise ValueError("window must be a finite number of seconds > 0")
        self._subjects = subjects
        self._window = window
        self._lock = threading.Lock()
        self._nonces: dict[tuple[bytes, str], float] = {}
        # receipt digest -> (receipt expiry, revocations of it)
        self._revocations: dict[str, tuple[float, list[SignedDocument]]] = {}

    def enrolled(self, subject: str, keys: PublicKeys) -> bool:
        """Whether ``keys`` are the node keys enrolled for ``subject``."""
        return self._subjects.get(subject) == keys.fingerprint

    def authorize(
        self,
        *,
        dataset: str,
        fields: Sequence[str],
        job: SignedDocument,
        consent: SignedDocument,
        request: SignedDocument,
        now: float,
    ) -> Release:
        """Check everything (module docstring); change nothing. Raises ``ConsentError``.

        ``ReplayedRequest`` for a used nonce; ``RemoteProtocolError`` (not a
        ``ConsentError``) when the documents are well signed but malformed
        or disagree with ``dataset`` / ``fields``.
        """
        asked = RecordsRequest.from_document(request)
        if asked.dataset != dataset or asked.fields != tuple(fields):
            raise RemoteProtocolError(
                "the signed records request names other dataset or fields than the body"
            )
        if asked.user not in self._subjects:
            raise ConsentError(f"no node key is enrolled here for user {asked.user!r}")
        if not self.enrolled(asked.user, asked.signer):
            raise ConsentError(
                f"records request is not signed by the node key enrolled for user {asked.user!r}"
            )
        if abs(now - asked.at) > self._window:
            raise ConsentError(
                f"records request is stale: made at {when(asked.at)}, "
                f"{abs(now - asked.at):.0f} s from now (at most {self._window:.0f} s allowed)"
            )
        with self._lock:
            if self._seen(asked, now):
                raise ReplayedRequest("records request replayed: its nonce was already used")
            revocations = list(self._revocations.get(consent.digest, (0.0, []))[1])
        try:
            job_body = verify_document(job, kind="job")
        except RemoteProtocolError as exc:
            raise ConsentError(str(exc)) from None
        if job_body.get("job_id") != asked.job_id:
            raise ConsentError(
                f"the job document is not job {asked.job_id!r} named by the records request"
            )
        _check_job_data(job_body, dataset, asked.fields)
        terms = check_consent(
            consent,
            job_id=asked.job_id,
            job_digest=job.digest,
            user=None,  # the node id does not matter here: the enrolled key binds the person
            subject=asked.user,
            user_keys=asked.signer,
            fields=asked.fields,
            now=now,
            revocations=revocations,
        )
        if terms.ai_provider != job.signer.fingerprint:
            raise ConsentError(
                f"consent names AI provider {terms.ai_provider[:16]}..., "
                f"but the job is signed by {job.signer.short_fingerprint}..."
            )
        return Release(request=asked, terms=terms)

    def commit(self, release: Release, *, now: float) -> None:
        """Burn the request's nonce; ``ReplayedRequest`` if another copy got there first."""
        asked = release.request
        with self._lock:
            if self._seen(asked, now):
                raise ReplayedRequest("records request replayed: its nonce was already used")
            self._nonces[(asked.signer.to_bytes(), asked.nonce)] = asked.at

    def revoke(self, revocation: SignedDocument, receipt: SignedDocument, *, now: float) -> str:
        """Remember ``revocation`` of ``receipt``; return the receipt's digest.

        Only a valid revocation by the key that granted the receipt, for a user
        whose node key is enrolled here, is kept. Raises ``ConsentError``.
        """
        terms = _receipt_terms(receipt)
        revocation_time(revocation, receipt, terms)
        if not self.enrolled(terms.data_subject, receipt.signer):
            raise ConsentError(
                "revocation refused: the receipt's key is not enrolled here for "
                f"user {terms.data_subject!r}"
            )
        digest = receipt.digest
        with self._lock:
            # A receipt past its expiry is refused anyway: forget its revocations.
            for old in [d for d, (expiry, _) in self._revocations.items() if expiry <= now]:
                del self._revocations[old]
            if terms.expires_at > now:
                _, kept = self._revocations.setdefault(digest, (terms.expires_at, []))
                if all(r.digest != revocation.digest for r in kept):
                    kept.append(revocation)
        return digest

    def _seen(self, asked: RecordsRequest, now: float) -> bool:
        """Whether the nonce is used; forget nonces too old to pass the freshness check."""
        horizon = now - self._window
        for stale in [k for k, at in self._nonces.items() if at < horizon]:
            del self._nonces[stale]
        return (asked.signer.to_bytes(), asked.nonce) in self._nonces


def _check_job_data(body: dict[str, Any], dataset: str, fields: Sequence[str]) -> None:
    """Where the job names its data (``data.dataset``, ``data.fields``), the request must fit."""
    data = body.get("data")
    if not isinstance(data, dict):
        return
    if "dataset" in data and data["dataset"] != dataset:
        raise ConsentError(f"the job asks for dataset {data['dataset']!r}, not {dataset!r}")
    wanted = data.get("fields")
    if isinstance(wanted, list):
        extra = [f for f in fields if f not in wanted]
        if extra:
            raise ConsentError(f"the job does not ask for field(s) {', '.join(map(repr, extra))}")

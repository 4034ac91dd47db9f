"""The data provider's gate: release a user's records only to that user's node.

Theory of operation
-------------------
A node asks for its user's records with a ``"records-request"`` document
signed by its node key, naming job (id and digest of the signed job
document), the *audience* (this provider's key fingerprint), the node (its
id at the coordinator), user (the *subject*: the user's id at this
provider, a value of the dataset's user field), dataset, fields, a fresh
16-byte nonce and the instant it was made. ``RecordsGate.authorize`` lets
it through only when all of these hold:

1. the request's signature is valid and made by the node key the provider
   has *enrolled* for that subject. Enrolment (``subjects``: subject ->
   node key fingerprint, recorded when the user linked their node to their
   account here) is the only link between a person and a key: a consent or
   request signed by any other key names the subject in vain;
2. the request names this provider as its audience, so a request a node
   made for another party (a relay that passes it on) is refused here;
3. the request is fresh (``|now - at| <= window``) and its nonce unused;
4. the job document is validly signed, by the AI provider the consent
   names, is the very document the request names (its digest), names this
   provider as its data provider (``data.provider``: this provider's key
   fingerprint) and (when it says) asks for this dataset and these fields;
5. ``check_consent`` accepts the receipt, signed by that same key, for this
   job, digest, subject and fields at ``now``, given the revocations the
   provider has been sent.

Attestations. Before a node may take part in a job it asks, with an
``"attestation-request"`` (the same fields but dataset and fields), for the
provider's signed ``"attestation"``: this node (id and key) stands for one
enrolled user of this provider who consented to this job document. The
same checks apply, and the provider binds the pair (job digest, user) to
one node id in its state, so a user gets one seat per job. The coordinator
counts a consent only with its attestation, and every node checks the
attestation of every participant before it sends anything
(``check_attestation``): a coordinator cannot fill a group with nodes of
its own (Sybils) unless this provider vouches for them.

``authorize`` changes nothing; ``commit`` then burns the nonce, atomically,
once the records are ready to go out, so a refused request (including one
refused after authorization, e.g. for an unknown user) leaves no trace and
two concurrent copies of one request release the records once. The gate
holds no clock; it is safe to share between threads.

What the gate must not forget, the revocations it was sent and the nonces
it burnt, lives in its ``GateState``. ``MemoryGateState`` (the default) is
lost when the process ends: fine for tests and library use, but a service
that forgot them on restart would honour a revoked consent again and
release records to a captured request replayed within its window. A
service keeps them in ``tessera.data_provider.gate_state.SqlGateState`` (SQLite or
PostgreSQL) instead. A nonce is kept until ``at + window``, the last
instant its request passes the freshness check; a revocation until its
receipt expires, after which the receipt is refused anyway.
"""

from __future__ import annotations

import math
import re
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from tessera.consent._errors import ConsentError, ReplayedRequest
from tessera.consent._receipts import (
    CLOCK_SKEW,
    ConsentTerms,
    _receipt_terms,
    check_consent,
    revocation_time,
    when,
)
from tessera.crypto.documents import (
    DocumentKind,
    SignedDocument,
    sign_document,
    verify_document,
)
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.errors import RemoteProtocolError
from tessera.ids import job_id_of

__all__ = [
    "ATTESTATION_KIND",
    "ATTESTATION_REQUEST_KIND",
    "REQUEST_KIND",
    "REQUEST_WINDOW",
    "Enrolment",
    "GateState",
    "MemoryGateState",
    "RecordsGate",
    "RecordsRequest",
    "Release",
    "check_attestation",
    "sign_attestation_request",
    "sign_records_request",
]

REQUEST_KIND = DocumentKind.RECORDS_REQUEST
ATTESTATION_REQUEST_KIND = DocumentKind.ATTESTATION_REQUEST
ATTESTATION_KIND = DocumentKind.ATTESTATION
#: Seconds a records request stays acceptable around its ``at``.
REQUEST_WINDOW = 300.0

#: subject (the user's id at the data provider) -> fingerprint of their node's keys.
Enrolment = Mapping[str, str]

_NONCE = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ASK_KEYS = frozenset({"job_id", "job_digest", "audience", "node", "user", "nonce", "at"})
_REQUEST_KEYS = _ASK_KEYS | {"dataset", "fields"}
_ATTEST_KEYS = _ASK_KEYS | {"commitment"}
_ATTESTATION_KEYS = frozenset(
    {"job_id", "job_digest", "provider", "node", "node_key", "consent", "commitment", "issued_at"}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordsRequest:
    """The checked body of a records (or attestation) request, and who signed it.

    An attestation request has no dataset (``""``) and no fields, but the node's
    ``commitment`` to its beacon secret (``tessera.jobs.beacon``), which the
    attestation carries so that nobody can swap it later.
    """

    job_id: str
    job_digest: str
    audience: str  # the fingerprint of the data provider it is meant for
    node: str  # the node's id at the coordinator
    user: str
    dataset: str
    fields: tuple[str, ...]
    nonce: str
    at: float
    signer: PublicKeys
    commitment: str = ""

    @classmethod
    def from_document(cls, doc: SignedDocument, kind: str = REQUEST_KIND) -> RecordsRequest:
        """Verify kind and signature, then parse; bad signature raises ``ConsentError``.

        A well-signed but malformed body raises ``RemoteProtocolError``.
        """
        try:
            body = verify_document(doc, kind=kind)
        except RemoteProtocolError as exc:
            raise ConsentError(f"{kind} refused: {exc}") from None
        records = kind == REQUEST_KIND
        keys = _REQUEST_KEYS if records else _ATTEST_KEYS
        if set(body) != keys:
            raise RemoteProtocolError(f"{kind} must have exactly " + ", ".join(sorted(keys)))
        names = ("job_id", "node", "user", "dataset") if records else ("job_id", "node", "user")
        texts = [body[k] for k in names]
        fields = body["fields"] if records else []
        nonce, at = body["nonce"], body["at"]
        if not all(isinstance(t, str) and t for t in texts):
            raise RemoteProtocolError(f"{kind}: {', '.join(names)} must be strings")
        for name in (
            ("job_digest", "audience") if records else ("job_digest", "audience", "commitment")
        ):
            if not isinstance(body[name], str) or not _HEX64.fullmatch(body[name]):
                raise RemoteProtocolError(f"{kind}: {name} must be 64 lowercase hex digits")
        if not isinstance(fields, list) or not all(isinstance(f, str) and f for f in fields):
            raise RemoteProtocolError(f"{kind}: fields must be a list of field names")
        if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
            raise RemoteProtocolError(f"{kind}: nonce must be 32 lowercase hex digits")
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise RemoteProtocolError(f"{kind}: at must be a number (unix seconds)")
        return cls(
            job_id=texts[0],
            job_digest=body["job_digest"],
            audience=body["audience"],
            node=texts[1],
            user=texts[2],
            dataset=texts[3] if records else "",
            fields=tuple(fields),
            nonce=nonce,
            at=float(at),
            signer=doc.signer,
            commitment="" if records else body["commitment"],
        )


def sign_records_request(
    keys: NodeKeys,
    *,
    job_id: str,
    job_digest: str,
    audience: str,
    node: str,
    user: str,
    dataset: str,
    fields: Sequence[str],
    at: float,
    nonce: str | None = None,
) -> SignedDocument:
    """The node's signed request for its user's ``fields``; a fresh nonce unless given.

    ``audience`` is the fingerprint of the data provider the node is enrolled
    with (learnt from its own user, never from the job).
    """
    body = _ask(
        job_id=job_id,
        job_digest=job_digest,
        audience=audience,
        node=node,
        user=user,
        at=at,
        nonce=nonce,
    )
    body |= {"dataset": dataset, "fields": list(fields)}
    return sign_document(keys, REQUEST_KIND, body)


def _ask(
    *,
    job_id: str,
    job_digest: str,
    audience: str,
    node: str,
    user: str,
    at: float,
    nonce: str | None,
) -> dict[str, Any]:
    """What every request a node makes of its provider names, with a fresh nonce."""
    return {
        "job_id": job_id,
        "job_digest": job_digest,
        "audience": audience,
        "node": node,
        "user": user,
        "nonce": secrets.token_hex(16) if nonce is None else nonce,
        "at": float(at),
    }


def sign_attestation_request(
    keys: NodeKeys,
    *,
    job_id: str,
    job_digest: str,
    audience: str,
    node: str,
    user: str,
    commitment: str,
    at: float,
    nonce: str | None = None,
) -> SignedDocument:
    """The node asks its data provider (``audience``) to vouch for it in this job.

    ``commitment`` is the node's commitment to its beacon secret for the job.
    """
    body = _ask(
        job_id=job_id,
        job_digest=job_digest,
        audience=audience,
        node=node,
        user=user,
        at=at,
        nonce=nonce,
    )
    body["commitment"] = commitment
    return sign_document(keys, ATTESTATION_REQUEST_KIND, body)


def check_attestation(
    attestation: SignedDocument | None,
    *,
    provider: str,
    job_digest: str,
    node: str,
    node_keys: PublicKeys,
) -> str:
    """That ``attestation`` is the data provider's word that ``node`` (with ``node_keys``)
    stands for one consenting user in the job ``job_digest``; ``ConsentError`` if not.

    ``provider`` is the fingerprint of the job's data provider, read from the
    signed job document (never from the attestation itself). Returns the
    node's beacon commitment the attestation carries.
    """
    if not isinstance(attestation, SignedDocument):
        raise ConsentError(f"{node} has no attestation from the data provider")
    if attestation.signer.fingerprint != provider:
        raise ConsentError(f"the attestation of {node} is not signed by the job's data provider")
    try:
        body = verify_document(attestation, kind=ATTESTATION_KIND)
    except RemoteProtocolError as exc:
        raise ConsentError(f"the attestation of {node}: {exc}") from None
    if set(body) != _ATTESTATION_KEYS:
        raise ConsentError(f"the attestation of {node} is malformed")
    if body["job_digest"] != job_digest:
        raise ConsentError(f"the attestation of {node} is for another job document")
    if body["node"] != node or body["node_key"] != node_keys.fingerprint:
        raise ConsentError(f"the attestation names another node or key than {node}'s")
    commitment = body["commitment"]
    if not isinstance(commitment, str) or not _HEX64.fullmatch(commitment):
        raise ConsentError(f"the attestation of {node} carries no beacon commitment")
    return commitment


@dataclass(frozen=True, slots=True)
class Release:
    """An authorized request: give ``request.user``'s ``request.fields`` of ``request.dataset``."""

    request: RecordsRequest
    terms: ConsentTerms


@runtime_checkable
class GateState(Protocol):
    """Where a ``RecordsGate`` keeps revocations and burnt nonces; every call is atomic.

    ``receipt`` is a consent receipt's digest; ``signer`` the fingerprint of
    the node keys that signed a records request; times are unix seconds.
    An implementation must be safe to share between threads (and, for a
    shared database, between processes): two concurrent ``use_nonce`` calls
    for one nonce must not both return True.
    """

    def revoked_at(self, receipt: str) -> float | None:
        """When the earliest revocation kept for ``receipt`` takes effect; None: none kept."""
        ...

    def revoke(self, receipt: str, at: float, *, expires: float, now: float) -> None:
        """Keep that ``receipt`` is withdrawn from ``at`` on, until ``expires``.

        An earlier ``at`` replaces a later one. Revocations whose ``expires``
        is at or before ``now`` are forgotten.
        """
        ...

    def nonce_used(self, signer: str, nonce: str, *, now: float) -> bool:
        """Whether ``(signer, nonce)`` is burnt and kept at ``now`` (its ``expires`` >= ``now``)."""
        ...

    def use_nonce(self, signer: str, nonce: str, *, expires: float, now: float) -> bool:
        """Burn ``(signer, nonce)`` until ``expires``; False, changing nothing, if already burnt.

        Nonces whose ``expires`` lies before ``now`` are forgotten (at the
        latest here), so such a nonce counts as unused.
        """
        ...

    def bind_node(self, job_digest: str, subject: str, node: str) -> bool:
        """Bind ``subject``'s seat in the job ``job_digest`` to ``node``, atomically.

        True if it is bound to ``node`` now (newly or already); False, changing
        nothing, if it is bound to another node: one node per user per job.
        """
        ...


class MemoryGateState:
    """A ``GateState`` in this process's memory: lost when it ends (tests, library use)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.nonces: dict[tuple[str, str], float] = {}  # (signer, nonce) -> expires
        self.revocations: dict[str, tuple[float, float]] = {}  # receipt -> (revoked at, expires)
        self.seats: dict[tuple[str, str], str] = {}  # (job digest, subject) -> node

    def revoked_at(self, receipt: str) -> float | None:
        with self._lock:
            kept = self.revocations.get(receipt)
        return None if kept is None else kept[0]

    def revoke(self, receipt: str, at: float, *, expires: float, now: float) -> None:
        with self._lock:
            for old in [d for d, (_, until) in self.revocations.items() if until <= now]:
                del self.revocations[old]
            if expires <= now:
                return
            kept = self.revocations.get(receipt)
            if kept is None or at < kept[0]:
                self.revocations[receipt] = (at, expires)

    def nonce_used(self, signer: str, nonce: str, *, now: float) -> bool:
        with self._lock:
            expires = self.nonces.get((signer, nonce))
        return expires is not None and expires >= now

    def use_nonce(self, signer: str, nonce: str, *, expires: float, now: float) -> bool:
        with self._lock:
            for stale in [k for k, until in self.nonces.items() if until < now]:
                del self.nonces[stale]
            if (signer, nonce) in self.nonces:
                return False
            self.nonces[(signer, nonce)] = expires
            return True

    def bind_node(self, job_digest: str, subject: str, node: str) -> bool:
        with self._lock:
            return self.seats.setdefault((job_digest, subject), node) == node


class RecordsGate:
    """Decides whether records may go out; remembers revocations and used nonces in ``state``."""

    def __init__(
        self,
        subjects: Enrolment,
        *,
        identity: NodeKeys,
        window: float = REQUEST_WINDOW,
        state: GateState | None = None,
    ) -> None:
        """``subjects`` may be a live mapping: enrolments added later count at once.

        ``identity`` is the provider's own keys: requests must name it as their
        audience, jobs as their data provider, and it signs attestations.
        ``state`` defaults to a fresh ``MemoryGateState``: forgotten on restart.
        """
        if not (math.isfinite(window) and window > 0):
            raise ValueError("window must be a finite number of seconds > 0")
        self._identity = identity
        self._subjects = subjects
        self._window = window
        self._state: GateState = MemoryGateState() if state is None else state

    @property
    def state(self) -> GateState:
        """Where revocations and used nonces are kept."""
        return self._state

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
        return self._check(asked, job=job, consent=consent, dataset=dataset, now=now)

    def _check(
        self,
        asked: RecordsRequest,
        *,
        job: SignedDocument,
        consent: SignedDocument,
        dataset: str | None,
        now: float,
    ) -> Release:
        """Every check of the module docstring, for a records or attestation request."""
        if asked.audience != self._identity.public.fingerprint:
            raise ConsentError(
                f"the request is meant for data provider {asked.audience[:16]}..., not this one "
                f"({self._identity.public.short_fingerprint}...)"
            )
        if asked.user not in self._subjects:
            raise ConsentError(f"no node key is enrolled here for user {asked.user!r}")
        if not self.enrolled(asked.user, asked.signer):
            raise ConsentError(
                f"the request is not signed by the node key enrolled for user {asked.user!r}"
            )
        if abs(now - asked.at) > self._window:
            raise ConsentError(
                f"the request is stale: made at {when(asked.at)}, "
                f"{abs(now - asked.at):.0f} s from now (at most {self._window:.0f} s allowed)"
            )
        if self._state.nonce_used(asked.signer.fingerprint, asked.nonce, now=now):
            raise ReplayedRequest("request replayed: its nonce was already used")
        try:
            job_body = verify_document(job, kind="job")
        except RemoteProtocolError as exc:
            raise ConsentError(str(exc)) from None
        name = job_body.get("name")
        named = isinstance(name, str) and job_id_of(name, job.digest) == asked.job_id
        if not named or job.digest != asked.job_digest:
            raise ConsentError(
                f"the job document is not the one the request names ({asked.job_id!r}, "
                f"digest {asked.job_digest[:16]}...)"
            )
        data = job_body.get("data")
        if not isinstance(data, dict) or data.get("provider") != self._identity.public.fingerprint:
            raise ConsentError("the job does not name this data provider (data.provider)")
        if dataset is not None:
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
        )
        # Kept revocations were checked by ``revoke``; the test is check_consent's own.
        revoked_at = self._state.revoked_at(consent.digest)
        if revoked_at is not None and revoked_at <= now + CLOCK_SKEW:
            raise ConsentError(f"consent revoked at {when(revoked_at)}")
        if terms.ai_provider != job.signer.fingerprint:
            raise ConsentError(
                f"consent names AI provider {terms.ai_provider[:16]}..., "
                f"but the job is signed by {job.signer.short_fingerprint}..."
            )
        return Release(request=asked, terms=terms)

    def attest(
        self,
        *,
        job: SignedDocument,
        consent: SignedDocument,
        request: SignedDocument,
        now: float,
    ) -> SignedDocument:
        """The provider's attestation for the requesting node (module docstring).

        Raises ``ConsentError`` (``ReplayedRequest`` for a used nonce) when a
        check fails or the user already has another node attested for this job.
        """
        asked = RecordsRequest.from_document(request, ATTESTATION_REQUEST_KIND)
        release = self._check(asked, job=job, consent=consent, dataset=None, now=now)
        if not self._state.bind_node(asked.job_digest, asked.user, asked.node):
            raise ConsentError(
                f"user {asked.user!r} already has another node attested for this job: "
                "one node per user per job"
            )
        self.commit(release, now=now)
        body = {
            "job_id": asked.job_id,
            "job_digest": asked.job_digest,
            "provider": self._identity.public.fingerprint,
            "node": asked.node,
            "node_key": asked.signer.fingerprint,
            "consent": consent.digest,
            "commitment": asked.commitment,
            "issued_at": now,
        }
        return sign_document(self._identity, ATTESTATION_KIND, body)

    def commit(self, release: Release, *, now: float) -> None:
        """Burn the request's nonce; ``ReplayedRequest`` if another copy got there first."""
        asked = release.request
        burnt = self._state.use_nonce(
            asked.signer.fingerprint, asked.nonce, expires=asked.at + self._window, now=now
        )
        if not burnt:
            raise ReplayedRequest("records request replayed: its nonce was already used")

    def revoke(self, revocation: SignedDocument, receipt: SignedDocument, *, now: float) -> str:
        """Remember ``revocation`` of ``receipt``; return the receipt's digest.

        Only a valid revocation by the key that granted the receipt, for a user
        whose node key is enrolled here, is kept (and only until the receipt
        expires: it is refused anyway then). Raises ``ConsentError``.
        """
        terms = _receipt_terms(receipt)
        at = revocation_time(revocation, receipt, terms)
        if not self.enrolled(terms.data_subject, receipt.signer):
            raise ConsentError(
                "revocation refused: the receipt's key is not enrolled here for "
                f"user {terms.data_subject!r}"
            )
        digest = receipt.digest
        self._state.revoke(digest, at, expires=terms.expires_at, now=now)
        return digest


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

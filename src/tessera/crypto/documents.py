"""Signed JSON documents: registrations, jobs, consent receipts, revocations.

Theory of operation
-------------------
A document is a JSON object (``body``) signed with the signer's Ed25519 key.
What is signed is ``b"tessera-doc/v1\\x00" + kind + b"\\x00" + signer keys + canonical(body)``
where ``canonical`` is JSON with sorted keys, no spaces and ASCII only, so
anyone re-derives the exact bytes from the parsed body. ``kind`` separates
domains: a consent receipt can never be replayed as a job or a registration.
The signer's public keys travel with the document; who the signer *must*
be (the user named in a receipt, the AI provider of a job) is the reader's
check, made with ``verify_document(..., signer=...)``.

``digest`` (hex SHA-256 of the canonical signed form) names a document, so
jobs and receipts are content-addressed like every other artefact.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.errors import RemoteProtocolError

__all__ = ["DocumentKind", "SignedDocument", "canonical_json", "sign_document", "verify_document"]

_DOMAIN = b"tessera-doc/v1\x00"
MAX_DOCUMENT_BYTES = 1 << 20


class DocumentKind(StrEnum):
    """Every kind of signed document; the kind is signed, so one never passes for another."""

    JOB = "job"  # the AI provider's job: model, recipe, data asked for, purpose, rounds
    REGISTRATION = "registration"  # a node's id, public keys and organisation (self-signed)
    CONSENT = "consent"  # a user's receipt for one job document
    REVOCATION = "revocation"  # the same user withdrawing it
    RECORDS_REQUEST = "records-request"  # a node asks its data provider for its user's rows
    ATTESTATION_REQUEST = "attestation-request"  # a node asks its provider to vouch for it
    ATTESTATION = "attestation"  # the provider: this node stands for one consenting user
    BEACON_REVEAL = "beacon-reveal"  # a participant's secret, committed in its attestation
    REQUEST = "request"  # a signed HTTP request (a node pulling its mailbox)


def canonical_json(value: object) -> bytes:
    """The one byte form of a JSON value that signatures and digests cover."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def _message(kind: str, signer: PublicKeys, body: dict[str, Any]) -> bytes:
    # Both public keys are signed: swapping the agreement key breaks the signature.
    return _DOMAIN + kind.encode() + b"\x00" + signer.to_bytes() + canonical_json(body)


@dataclass(frozen=True, slots=True)
class SignedDocument:
    kind: str
    body: dict[str, Any]
    signer: PublicKeys
    signature: bytes

    @property
    def digest(self) -> str:
        """Hex SHA-256 naming this exact signed document."""
        return hashlib.sha256(canonical_json(self.to_json())).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "body": json.loads(canonical_json(self.body)),  # a copy: edits never reach us
            "signer": base64.b64encode(self.signer.to_bytes()).decode(),
            "signature": base64.b64encode(self.signature).decode(),
        }

    @classmethod
    def from_json(cls, value: object) -> SignedDocument:
        """Parse (not verify) a document from its JSON form; bad shapes raise."""
        if not isinstance(value, dict) or set(value) != {"kind", "body", "signer", "signature"}:
            raise RemoteProtocolError("a signed document has exactly kind, body, signer, signature")
        kind, body = value["kind"], value["body"]
        if not isinstance(kind, str) or not kind or len(kind) > 64:
            raise RemoteProtocolError("document kind must be a short string")
        if not isinstance(body, dict):
            raise RemoteProtocolError("document body must be a JSON object")
        try:
            signer = PublicKeys.from_bytes(base64.b64decode(value["signer"], validate=True))
            signature = base64.b64decode(value["signature"], validate=True)
        except (TypeError, ValueError) as exc:
            raise RemoteProtocolError(
                f"document signer or signature is not base64: {exc}"
            ) from None
        try:
            size = len(canonical_json(body))
        except ValueError:  # NaN, Infinity or out-of-range floats: not JSON
            raise RemoteProtocolError("document body holds a number JSON cannot carry") from None
        if size > MAX_DOCUMENT_BYTES:
            raise RemoteProtocolError("document body is too large")
        return cls(kind=kind, body=body, signer=signer, signature=signature)


def sign_document(keys: NodeKeys, kind: str, body: dict[str, Any]) -> SignedDocument:
    """Sign ``body`` as a document of ``kind`` with ``keys``."""
    message = _message(kind, keys.public, body)  # also checks that body is plain JSON
    return SignedDocument(kind=kind, body=body, signer=keys.public, signature=keys._sign(message))


def verify_document(
    doc: SignedDocument, *, kind: str, signer: PublicKeys | None = None
) -> dict[str, Any]:
    """Check kind, signer (when given) and signature; return the body.

    Raises ``RemoteProtocolError`` with a clear reason on any failure.
    """
    if doc.kind != kind:
        raise RemoteProtocolError(f"expected a {str(kind)!r} document, got {str(doc.kind)!r}")
    if signer is not None and doc.signer != signer:
        raise RemoteProtocolError(f"{kind} is not signed by the expected key")
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(doc.signer.signing)
        key.verify(doc.signature, _message(kind, doc.signer, doc.body))
    except (InvalidSignature, ValueError):
        raise RemoteProtocolError(f"{kind}: bad signature") from None
    return doc.body

"""Signatures of audit-log records (``tessera.audit``): Ed25519 under their own domain.

What is signed is ``b"tessera-audit/v1\\x00" + canonical(record)``, where
``record`` is the JSON object of one audit record without its ``signature``
field (``canonical`` is ``documents.canonical_json``). The domain string
keeps an audit record from ever passing for a signed document or an
envelope, and back. No I/O, no clock: the caller gives the record.
"""

from __future__ import annotations

from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from tessera.crypto.documents import canonical_json
from tessera.crypto.keys import NodeKeys

__all__ = ["AUDIT_DOMAIN", "sign_audit_record", "verify_audit_record"]

AUDIT_DOMAIN = b"tessera-audit/v1\x00"


def _message(record: dict[str, Any]) -> bytes:
    return AUDIT_DOMAIN + canonical_json(record)


def sign_audit_record(keys: NodeKeys, record: dict[str, Any]) -> bytes:
    """The 64-byte Ed25519 signature of ``record`` (without its signature) by ``keys``."""
    return keys._sign(_message(record))


def verify_audit_record(signing_key: bytes, record: dict[str, Any], signature: bytes) -> bool:
    """Whether ``signature`` is ``signing_key``'s (raw 32-byte Ed25519) over ``record``."""
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(signing_key)
        key.verify(signature, _message(record))
    except (InvalidSignature, ValueError):
        return False
    return True

"""Signed requests: one scheme for every party that calls a service over HTTP.

A request carries five headers: who signs (``x-tessera-node``, a registered
node's id, or ``x-tessera-keys``, the signer's base64 public keys: an AI
provider), the time, a fresh random nonce, and an Ed25519 signature (a
"request" document) over method, path with query, the SHA-256 of the body,
the signer's id, time and nonce. A server accepts a time within ``MAX_SKEW``
seconds of its clock and a nonce it has not seen in that window (``fresh``
burns it in the server's store, so a restart does not re-open the window):
a captured request can neither be replayed nor moved to another path or body.
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tessera.crypto.documents import DocumentKind, SignedDocument, sign_document, verify_document
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.errors import RemoteProtocolError

NODE_HEADER = "x-tessera-node"
KEYS_HEADER = "x-tessera-keys"
TIME_HEADER = "x-tessera-time"
NONCE_HEADER = "x-tessera-nonce"
SIGNATURE_HEADER = "x-tessera-signature"
MAX_SKEW = 120.0
_KIND = DocumentKind.REQUEST
_NONCE_CHARS = 32  # 16 random bytes, hex


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request proved to be: a registered node (``node``) or a key holder (None)."""

    keys: PublicKeys
    node: str | None
    nonce: str
    at: float

    @property
    def fingerprint(self) -> str:
        return self.keys.fingerprint


def _signed_body(
    *, node: str, method: str, path: str, body_sha256: str, at: str, nonce: str
) -> dict[str, str]:
    return {
        "node": node,
        "method": method.upper(),
        "path": path,
        "body": body_sha256,
        "at": at,
        "nonce": nonce,
    }


def sign_request(
    keys: NodeKeys,
    method: str,
    path: str,
    *,
    at: float,
    node: str | None = None,
    body: bytes = b"",
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers proving ``keys`` (as registered ``node``, if given) sent this request."""
    nonce = secrets.token_hex(16) if nonce is None else nonce
    when = repr(float(at))
    signed = _signed_body(
        node=node or "",
        method=method,
        path=path,
        body_sha256=hashlib.sha256(body).hexdigest(),
        at=when,
        nonce=nonce,
    )
    doc = sign_document(keys, _KIND, signed)
    who = (
        {NODE_HEADER: node}
        if node
        else {KEYS_HEADER: base64.b64encode(keys.public.to_bytes()).decode()}
    )
    return {
        **who,
        TIME_HEADER: when,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: base64.b64encode(doc.signature).decode(),
    }


def is_signed(headers: Mapping[str, str]) -> bool:
    """Whether the request claims a signer at all (else it is anonymous)."""
    return bool(headers.get(SIGNATURE_HEADER))


def verify_request(
    headers: Mapping[str, str],
    *,
    method: str,
    path: str,
    body: bytes,
    keys_of: Callable[[str], PublicKeys | None],
    fresh: Callable[[Caller], bool],
    now: float,
) -> Caller:
    """Who signed the request, or ``RemoteProtocolError`` saying why it proves nothing.

    ``keys_of`` finds a registered node's keys; ``fresh`` burns the caller's
    nonce and says False if it was already used.
    """
    node, raw_keys = headers.get(NODE_HEADER), headers.get(KEYS_HEADER)
    at, nonce, signature = (headers.get(h) for h in (TIME_HEADER, NONCE_HEADER, SIGNATURE_HEADER))
    if not (node or raw_keys) or not at or not nonce or not signature:
        raise RemoteProtocolError(
            f"sign this request: headers {NODE_HEADER} (or {KEYS_HEADER}), {TIME_HEADER}, "
            f"{NONCE_HEADER}, {SIGNATURE_HEADER}"
        )
    if len(nonce) != _NONCE_CHARS or any(c not in "0123456789abcdef" for c in nonce):
        raise RemoteProtocolError(f"{NONCE_HEADER} must be {_NONCE_CHARS} lowercase hex digits")
    try:
        when = float(at)
        raw = base64.b64decode(signature, validate=True)
        keys = keys_of(node) if node else PublicKeys.from_bytes(base64.b64decode(raw_keys or ""))
    except (ValueError, RemoteProtocolError):
        raise RemoteProtocolError("malformed request keys, time or signature") from None
    if keys is None:
        raise RemoteProtocolError(f"unknown node {node!r}")
    if not (math.isfinite(when) and abs(now - when) <= MAX_SKEW):
        raise RemoteProtocolError("request time is too far from the server's clock")
    signed = _signed_body(
        node=node or "",
        method=method,
        path=path,
        body_sha256=hashlib.sha256(body).hexdigest(),
        at=at,
        nonce=nonce,
    )
    verify_document(SignedDocument(kind=_KIND, body=signed, signer=keys, signature=raw), kind=_KIND)
    caller = Caller(keys=keys, node=node or None, nonce=nonce, at=when)
    if not fresh(caller):
        raise RemoteProtocolError("replayed request: this nonce was already used")
    return caller

"""Signed requests: a node proves who it is when it pulls its mailbox.

Envelopes are sealed for their recipient, so reading someone else's mailbox
reveals nothing; still, only the node itself should drain it (and see its
traffic pattern). A request carries three headers: the node id, the time,
and an Ed25519 signature over method, path with query, node and time (a
"request" document). The server accepts a time within ``MAX_SKEW`` seconds.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

from tessera.crypto.documents import (
    DocumentKind,
    SignedDocument,
    sign_document,
    verify_document,
)
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.errors import RemoteProtocolError

NODE_HEADER = "x-tessera-node"
TIME_HEADER = "x-tessera-time"
SIGNATURE_HEADER = "x-tessera-signature"
MAX_SKEW = 120.0
_KIND = DocumentKind.REQUEST


def sign_request(keys: NodeKeys, node: str, method: str, path: str, at: float) -> dict[str, str]:
    body = {"node": node, "method": method.upper(), "path": path, "at": repr(float(at))}
    doc = sign_document(keys, _KIND, body)
    return {
        NODE_HEADER: node,
        TIME_HEADER: body["at"],
        SIGNATURE_HEADER: base64.b64encode(doc.signature).decode(),
    }


def verify_request(
    headers: Mapping[str, str], *, method: str, path: str, keys_of: PublicKeys | None, now: float
) -> str:
    """The node id the request proves, or ``RemoteProtocolError`` saying why not."""
    node, at, signature = (headers.get(h) for h in (NODE_HEADER, TIME_HEADER, SIGNATURE_HEADER))
    if not node or not at or not signature:
        raise RemoteProtocolError(
            f"sign this request: headers {NODE_HEADER}, {TIME_HEADER}, {SIGNATURE_HEADER}"
        )
    if keys_of is None:
        raise RemoteProtocolError(f"unknown node {node!r}")
    try:
        when = float(at)
        raw = base64.b64decode(signature, validate=True)
    except ValueError:
        raise RemoteProtocolError("malformed request time or signature") from None
    if not abs(now - when) <= MAX_SKEW:
        raise RemoteProtocolError("request time is too far from the server's clock")
    body = {"node": node, "method": method.upper(), "path": path, "at": at}
    doc = SignedDocument(kind=_KIND, body=body, signer=keys_of, signature=raw)
    verify_document(doc, kind=_KIND, signer=keys_of)
    return node

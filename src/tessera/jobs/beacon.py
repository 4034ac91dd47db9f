"""The job's tree beacon: a commit-reveal among the participants, fixed after the freeze.

Theory of operation
-------------------
Every round's execution tree is derived from public inputs (``protocol.
topology``), so whoever could predict those inputs while choosing who takes
part could try candidate participant lists until a tree puts its own nodes
around a victim ("grinding"). The beacon takes that away:

1. When a node consents it draws a 32-byte secret, keeps it, and sends only
   ``commitment(secret)``; its data provider copies the commitment into the
   attestation it signs, so nobody can swap it afterwards.
2. The coordinator freezes the participants (every attested consent at the
   moment ``min_consents`` is reached) before any secret is known.
3. Each participant then reveals its secret in a ``"beacon-reveal"``
   document it signs, naming the frozen participant list it was shown
   (``roster_digest``). The beacon is ``SHA-256`` over every participant's
   secret, in node order; it enters every round's tree seed.

Every node checks each reveal against the commitment in that participant's
attestation and recomputes the beacon before it sends anything, so the
coordinator can neither predict the trees when it freezes the list (one
honest secret makes the beacon uniform) nor pick among beacons afterwards:
all participants must reveal, or the job fails, and every reveal names the
one list, so the coordinator can neither drop a participant once it has
seen the secrets nor show different lists to different nodes (``SECURITY.md``
says what a coordinator who can fail jobs and restart them can still do).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping

from tessera.crypto.documents import (
    DocumentKind,
    SignedDocument,
    sign_document,
    verify_document,
)
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.errors import RemoteProtocolError

__all__ = [
    "REVEAL_KIND",
    "beacon_of",
    "commitment",
    "new_secret",
    "read_reveal",
    "roster_digest",
    "sign_reveal",
]

REVEAL_KIND = DocumentKind.BEACON_REVEAL
SECRET_BYTES = 32
_DOMAIN = b"tessera-beacon-v1\x00"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_REVEAL_KEYS = frozenset({"job_id", "job_digest", "node", "roster", "secret"})


def new_secret() -> bytes:
    """A participant's fresh beacon secret for one job."""
    return secrets.token_bytes(SECRET_BYTES)


def _framed(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def commitment(secret: bytes, *, job_digest: str, node: str) -> str:
    """The hex SHA-256 commitment to ``secret``, bound to the job and the node."""
    return hashlib.sha256(
        _DOMAIN + b"commit" + _framed(job_digest.encode(), node.encode(), secret)
    ).hexdigest()


def roster_digest(nodes: Iterable[str]) -> str:
    """The hex SHA-256 naming a frozen participant list (order-free)."""
    return hashlib.sha256(
        _DOMAIN + b"roster" + _framed(*(n.encode() for n in sorted(nodes)))
    ).hexdigest()


def beacon_of(job_digest: str, secrets_by_node: Mapping[str, bytes]) -> bytes:
    """The job's beacon from every participant's revealed secret (order-free)."""
    parts = [job_digest.encode()]
    for node in sorted(secrets_by_node):
        parts += [node.encode(), secrets_by_node[node]]
    return hashlib.sha256(_DOMAIN + b"beacon" + _framed(*parts)).digest()


def sign_reveal(
    keys: NodeKeys, *, job_id: str, job_digest: str, node: str, roster: str, secret: bytes
) -> SignedDocument:
    """A participant's signed reveal of its beacon secret, for the list it was shown."""
    body = {
        "job_id": job_id,
        "job_digest": job_digest,
        "node": node,
        "roster": roster,
        "secret": secret.hex(),
    }
    return sign_document(keys, REVEAL_KIND, body)


def read_reveal(
    reveal: SignedDocument,
    *,
    node: str,
    node_keys: PublicKeys,
    job_digest: str,
    committed: str,
    roster: str,
) -> bytes:
    """The secret ``node`` revealed, checked against its signature and its commitment.

    ``roster`` is the digest of the participant list the reader holds: the
    reveal must name that very list. ``RemoteProtocolError`` saying what is
    wrong: another signer, job, node or list, a malformed body, or a secret
    that is not the committed one.
    """
    if reveal.signer != node_keys:
        raise RemoteProtocolError(f"the beacon reveal of {node} is not signed by its key")
    body = verify_document(reveal, kind=REVEAL_KIND, signer=node_keys)
    if set(body) != _REVEAL_KEYS or body["node"] != node or body["job_digest"] != job_digest:
        raise RemoteProtocolError(f"the beacon reveal of {node} is for another node or job")
    if body["roster"] != roster:
        raise RemoteProtocolError(
            f"{node} revealed its secret for another participant list than this one"
        )
    raw = body["secret"]
    if not isinstance(raw, str) or not _HEX64.fullmatch(raw):
        raise RemoteProtocolError(f"the beacon reveal of {node} holds no 32-byte secret")
    secret = bytes.fromhex(raw)
    if commitment(secret, job_digest=job_digest, node=node) != committed:
        raise RemoteProtocolError(f"the beacon secret of {node} is not the one it committed to")
    return secret

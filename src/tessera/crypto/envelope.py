"""Signed, optionally sealed, message envelopes: the one way bytes travel between nodes.

Theory of operation
-------------------
``seal`` turns a payload into wire bytes; ``open_envelope`` (also reachable
as ``envelope.open``) turns wire bytes back into an ``Envelope`` or raises
``InvalidEnvelope``; ``peek`` reads the header unverified, for routing.
There are no algorithm choices. This module never knows what a ``kind``
means (the protocol layer's codes) or what a payload holds.

Wire format, version 1 (integers big-endian)::

    size  field
    3     magic b"TSR"
    1     version = 1
    1     kind, 0..255: message type code chosen by the protocol layer
    1     flags: bit 0 set = sealed; every other bit must be 0
    1+J   job id: length J in 1..64, then J bytes of UTF-8
    4     round (uint32)
    1+S   sender node id: length S in 1..64, then UTF-8
    1+R   recipient node id: length R in 1..64, then UTF-8
    16    nonce: fresh random bytes for every message
    32    sender's ephemeral X25519 public key (sealed only; absent when clear)
    4     P = payload size (uint32, at most 2**31 - 1)
    P     payload: the plaintext (clear), or ChaCha20-Poly1305 ciphertext
          followed by its 16-byte tag (sealed)
    64    Ed25519 signature

The *header* is every byte before the payload; the *body* every byte before
the signature.

Sealing (the shape of HPKE's base mode: DHKEM(X25519) + HKDF-SHA256 +
ChaCha20-Poly1305)::

    eph    = X25519 private key from 32 bytes of random_bytes
    shared = X25519(eph, recipient.agreement)
    key    = HKDF-SHA256(ikm=shared, salt=nonce, L=32,
                         info=SEAL_INFO || recipient.agreement || sender.signing || header)
    box    = ChaCha20-Poly1305(key).encrypt(nonce=12 zero bytes, payload, ad=header)

Each message gets its own key (fresh ephemeral key and nonce), so the fixed
AEAD nonce never repeats under a key. The header is the associated data and
part of the KDF info, so no header field (kind, job, round, sender,
recipient, nonce, ephemeral key, size) can be changed or spliced onto
another box; the info also binds both parties' long-term public keys.

Signing, always, with the sender's Ed25519 key::

    signature = Ed25519(SIGN_CONTEXT || SHA-256(body))

with ``SEAL_INFO = b"tessera/envelope/v1/seal\\x00"`` above and
``SIGN_CONTEXT = b"tessera/envelope/v1/signature\\x00"``. One SHA-256 pass
(SHA-NI) replaces the two SHA-512 passes pure Ed25519 makes over a long
message: signing 1 MB costs about 0.7 ms instead of 2.5 ms. Security then
rests on SHA-256's collision resistance (128 bits, the same level as
Ed25519); the context string keeps envelope signatures apart from anything
else a node key may sign. The signature covers the ciphertext
(encrypt-then-sign), so a relay can check who sent a box it cannot open,
and nobody can re-sign another's box as their own: the sender id is in the
associated data and the sender's key in the KDF info.

``random_bytes`` is drawn in this order: the 16-byte nonce, then (sealed
only) the 32-byte ephemeral private key. Passing a fixed stream makes
``seal`` deterministic, for known-answer vectors only.

Opening runs its checks cheapest first and stops at the first failure:
size, structure, sender known (with a ``directory``), job, round,
recipient, replay (look only), signature, decryption. Only a message that
passed every check is remembered by the ``ReplayGuard``, so a failed open
never changes its state. Every failure is one ``InvalidEnvelope`` whose
``reason`` is one of ``REASONS``; no struct, Unicode or cryptography
exception escapes. Checks before the signature run on unauthenticated
bytes: an ``InvalidEnvelope`` never proves the claimed sender misbehaved.

The caller decides what ``sealed`` must be for a ``kind``: ``open_envelope``
accepts a clear, signed envelope even when ``recipient_keys`` is given, and
reports it in ``Envelope.sealed``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, TypeAlias

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tessera.crypto.keys import KEY_SIZE, NodeKeys, PublicKeys
from tessera.errors import InvalidEnvelope, RemoteProtocolError
from tessera.ids import JobId, NodeId

__all__ = [
    "MAGIC",
    "MAX_ID_BYTES",
    "MAX_PAYLOAD",
    "NONCE_SIZE",
    "OVERHEAD_CLEAR",
    "OVERHEAD_SEALED",
    "REASONS",
    "VERSION",
    "Bytes",
    "Envelope",
    "EnvelopeHeader",
    "ReplayGuard",
    "open",
    "open_envelope",
    "peek",
    "seal",
    "verify_envelope",
]

MAGIC = b"TSR"
VERSION = 1
#: Largest job id, sender or recipient, in UTF-8 bytes.
MAX_ID_BYTES = 64
NONCE_SIZE = 16
SIGNATURE_SIZE = 64
TAG_SIZE = 16
#: Largest payload ``seal`` accepts (ChaCha20-Poly1305 in cryptography takes < 2**31 bytes).
MAX_PAYLOAD = 2**31 - 1 - TAG_SIZE
_MAX_WIRE_PAYLOAD = 2**31 - 1

_FLAG_SEALED = 0x01
_SEAL_INFO = b"tessera/envelope/v1/seal\x00"
_SIGN_CONTEXT = b"tessera/envelope/v1/signature\x00"
_AEAD_NONCE = bytes(12)  # the key is single-use, so a constant nonce is safe
_U32 = struct.Struct(">I")
_U32_MAX = 2**32 - 1

#: What ``seal``, ``open_envelope`` and ``peek`` take (``seal`` also any C-contiguous buffer).
Bytes: TypeAlias = bytes | bytearray | memoryview

#: Envelope size minus payload and the three ids' bytes.
OVERHEAD_CLEAR = 3 + 3 + 1 + 4 + 1 + 1 + NONCE_SIZE + 4 + SIGNATURE_SIZE
OVERHEAD_SEALED = OVERHEAD_CLEAR + KEY_SIZE + TAG_SIZE

# The reasons an envelope is refused (``InvalidEnvelope.reason``).
TOO_LARGE = "too large"
TRUNCATED = "truncated"
TRAILING_BYTES = "trailing bytes"
BAD_MAGIC = "bad magic"
UNSUPPORTED_VERSION = "unsupported version"
FIELD_TOO_LONG = "field too long"
MALFORMED = "malformed"  # unknown flag bits, an empty id, invalid UTF-8, a box shorter than its tag
UNKNOWN_SENDER = "unknown sender"
WRONG_JOB = "wrong job"
WRONG_ROUND = "wrong round"
WRONG_RECIPIENT = "wrong recipient"
STALE_ROUND = "stale round"  # older than what the ReplayGuard still remembers
REPLAYED_NONCE = "replayed nonce"
TOO_MANY_MESSAGES = "too many messages"  # one sender filled its ReplayGuard quota for a round
BAD_SIGNATURE = "bad signature"
CANNOT_DECRYPT = "cannot decrypt"
REASONS = frozenset(
    {
        TOO_LARGE,
        TRUNCATED,
        TRAILING_BYTES,
        BAD_MAGIC,
        UNSUPPORTED_VERSION,
        FIELD_TOO_LONG,
        MALFORMED,
        UNKNOWN_SENDER,
        WRONG_JOB,
        WRONG_ROUND,
        WRONG_RECIPIENT,
        STALE_ROUND,
        REPLAYED_NONCE,
        TOO_MANY_MESSAGES,
        BAD_SIGNATURE,
        CANNOT_DECRYPT,
    }
)


@dataclass(frozen=True, kw_only=True, slots=True)
class EnvelopeHeader:
    """What ``peek`` reads: unauthenticated, for routing only."""

    kind: int
    job_id: JobId
    round: int
    sender: NodeId
    recipient: NodeId
    nonce: bytes
    sealed: bool
    payload_size: int  # bytes on the wire: ciphertext and tag when sealed


@dataclass(frozen=True, kw_only=True, slots=True)
class Envelope:
    """An opened envelope: verified header fields and the plaintext payload."""

    kind: int
    job_id: JobId
    round: int
    sender: NodeId
    recipient: NodeId
    nonce: bytes
    payload: bytes = field(repr=False)  # plaintext; kept out of logs
    sealed: bool


class ReplayGuard:
    """The nonces of opened envelopes, per round and sender, in bounded memory.

    Use one guard per job on each node, and call ``forget_before(r)`` when
    round ``r`` starts: it drops every older round and from then on refuses
    those rounds ("stale round"), since their nonces are no longer known.
    One sender may have at most ``max_per_round`` envelopes opened in one
    round ("too many messages" after that), so the memory held is at most
    rounds kept x senders x quota nonces, each of which came with a valid
    signature. Not thread-safe; the protocol machines are single-threaded.
    """

    __slots__ = ("_floor", "_max", "_seen", "_size")

    def __init__(self, *, max_per_round: int = 4096) -> None:
        if max_per_round < 1:
            raise ValueError("max_per_round must be >= 1")
        self._max = max_per_round
        self._seen: dict[int, dict[str, set[bytes]]] = {}
        self._floor = 0
        self._size = 0

    @property
    def floor(self) -> int:
        """The oldest round still accepted."""
        return self._floor

    def __len__(self) -> int:
        """How many nonces are remembered."""
        return self._size

    def seen(self, sender: str, round: int, nonce: bytes) -> bool:
        return nonce in self._seen.get(round, {}).get(sender, ())

    def check(self, sender: str, round: int, nonce: bytes) -> None:
        """Raise ``InvalidEnvelope`` if this nonce must be refused; never changes state."""
        if round < self._floor:
            raise InvalidEnvelope(STALE_ROUND)
        nonces = self._seen.get(round, {}).get(sender, set())
        if nonce in nonces:
            raise InvalidEnvelope(REPLAYED_NONCE)
        if len(nonces) >= self._max:
            raise InvalidEnvelope(TOO_MANY_MESSAGES)

    def check_and_remember(self, sender: str, round: int, nonce: bytes) -> None:
        """``check``, then remember the nonce."""
        self.check(sender, round, nonce)
        self._seen.setdefault(round, {}).setdefault(sender, set()).add(bytes(nonce))
        self._size += 1

    def forget_before(self, round: int) -> None:
        """Drop rounds below ``round`` and refuse them from now on."""
        if round <= self._floor:
            return
        self._floor = round
        for old in [r for r in self._seen if r < round]:
            self._size -= sum(len(nonces) for nonces in self._seen.pop(old).values())


# -- sealing ---------------------------------------------------------------------------


def seal(
    *,
    kind: int,
    job_id: str,
    round: int,
    sender: str,
    recipient: str,
    payload: Bytes,
    sender_keys: NodeKeys,
    recipient_public: PublicKeys | None,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """Sign (and, given ``recipient_public``, encrypt end-to-end) one message.

    ``recipient_public=None`` leaves the payload in clear (signed all the
    same), for public messages such as commitments. ``payload`` may be any
    C-contiguous bytes-like object. Bad arguments raise ``ValueError`` or
    ``TypeError`` (a bug on this side); a recipient agreement key that is a
    low-order point raises ``RemoteProtocolError`` (the peer published junk).
    """
    if isinstance(kind, bool) or not isinstance(kind, int) or not 0 <= kind <= 0xFF:
        raise ValueError("kind must be an int in 0..255")
    if isinstance(round, bool) or not isinstance(round, int) or not 0 <= round <= _U32_MAX:
        raise ValueError("round must be an int in 0..2**32-1")
    job = _encode_id("job_id", job_id)
    snd = _encode_id("sender", sender)
    rcp = _encode_id("recipient", recipient)
    body = memoryview(payload)
    if not body.c_contiguous:
        raise ValueError("payload must be C-contiguous")
    body = body.cast("B")
    if body.nbytes > MAX_PAYLOAD:
        raise ValueError(f"payload is larger than {MAX_PAYLOAD} bytes")

    nonce = _draw(random_bytes, NONCE_SIZE)
    sealed = recipient_public is not None
    eph: x25519.X25519PrivateKey | None = None
    eph_public = b""
    wire_size = body.nbytes
    if sealed:
        eph = x25519.X25519PrivateKey.from_private_bytes(_draw(random_bytes, KEY_SIZE))
        eph_public = eph.public_key().public_bytes_raw()
        wire_size += TAG_SIZE
    header = b"".join(
        (
            MAGIC,
            bytes((VERSION, kind, _FLAG_SEALED if sealed else 0)),
            job,
            _U32.pack(round),
            snd,
            rcp,
            nonce,
            eph_public,
            _U32.pack(wire_size),
        )
    )
    box: bytes | memoryview = body
    if recipient_public is not None and eph is not None:
        try:
            shared = eph.exchange(
                x25519.X25519PublicKey.from_public_bytes(recipient_public.agreement)
            )
        except ValueError:
            raise RemoteProtocolError("the recipient's agreement key is invalid") from None
        key = _message_key(shared, nonce, recipient_public.agreement, sender_keys.public, header)
        box = ChaCha20Poly1305(key).encrypt(_AEAD_NONCE, body, header)
    signature = sender_keys._sign(_to_sign(header, box))
    # One join: the only copy of a large payload that sealing makes.
    return b"".join((header, box, signature))


def _encode_id(name: str, value: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str")
    raw = value.encode("utf-8")
    if not 1 <= len(raw) <= MAX_ID_BYTES:
        raise ValueError(f"{name} must be 1..{MAX_ID_BYTES} bytes of UTF-8")
    return bytes((len(raw),)) + raw


def _draw(random_bytes: Callable[[int], bytes], size: int) -> bytes:
    out = random_bytes(size)
    if not isinstance(out, bytes) or len(out) != size:
        raise ValueError(f"random_bytes({size}) must return {size} bytes")
    return out


def _message_key(
    shared: bytes, nonce: bytes, recipient_agreement: bytes, sender: PublicKeys, header: bytes
) -> bytes:
    info = b"".join((_SEAL_INFO, recipient_agreement, sender.signing, header))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=nonce, info=info).derive(shared)


def _to_sign(*parts: bytes | memoryview) -> bytes:
    """What Ed25519 signs: the context string and SHA-256 of the body (given in parts)."""
    digest = hashes.Hash(hashes.SHA256())
    for part in parts:
        digest.update(part)
    return _SIGN_CONTEXT + digest.finalize()


# -- opening ---------------------------------------------------------------------------


class _Parsed(NamedTuple):
    header: EnvelopeHeader
    ephemeral: bytes
    payload_start: int
    payload_end: int


def peek(data: Bytes) -> EnvelopeHeader:
    """The header fields, checked for shape but NOT authenticated: for routing only."""
    return _parse(_as_bytes(data)).header


def open_envelope(
    data: Bytes,
    *,
    recipient_keys: NodeKeys | None,
    sender_public: PublicKeys | None = None,
    directory: Mapping[NodeId, PublicKeys] | None = None,
    expect_job: str,
    expect_round: int | None,
    expect_recipient: str | None,
    max_bytes: int,
    replay: ReplayGuard | None,
    disclosed_key: bytes | None = None,
) -> Envelope:
    """Check everything, then decrypt; every failure is one ``InvalidEnvelope``.

    ``disclosed_key`` opens a box sealed for someone else, with the one-box key
    its recipient disclosed (see ``disclose_key``): how an auditor checks what
    an aggregator received. The sender's signature is checked all the same.

    Name the sender's keys either directly (``sender_public``) or through a
    ``directory`` of node ids, looked up under the header's sender (safer:
    the id and the key cannot disagree). ``expect_round`` and
    ``expect_recipient`` may be ``None`` for "any"; ``recipient_keys`` may be
    ``None`` for a node that only opens clear envelopes. On success the nonce
    is remembered in ``replay``; on failure nothing changes.
    """
    if (sender_public is None) == (directory is None):
        raise TypeError("pass exactly one of sender_public or directory")
    data = _as_bytes(data)
    if len(data) > max_bytes:
        raise InvalidEnvelope(TOO_LARGE)
    parsed = _parse(data)
    head = parsed.header
    if directory is not None:
        found = directory.get(head.sender)
        if found is None:
            raise InvalidEnvelope(UNKNOWN_SENDER)
        sender_public = found
    assert sender_public is not None  # exactly one was given, checked above
    if head.job_id != expect_job:
        raise InvalidEnvelope(WRONG_JOB)
    if expect_round is not None and head.round != expect_round:
        raise InvalidEnvelope(WRONG_ROUND)
    if expect_recipient is not None and head.recipient != expect_recipient:
        raise InvalidEnvelope(WRONG_RECIPIENT)
    if replay is not None:
        replay.check(head.sender, head.round, head.nonce)
    _verify(data, sender_public)
    if head.sealed and disclosed_key is not None:
        payload = _decrypt_with(data, parsed, disclosed_key)
    elif head.sealed:
        payload = _decrypt(data, parsed, recipient_keys, sender_public)
    else:
        payload = data[parsed.payload_start : parsed.payload_end]
    if replay is not None:
        replay.check_and_remember(head.sender, head.round, head.nonce)
    return Envelope(
        kind=head.kind,
        job_id=head.job_id,
        round=head.round,
        sender=head.sender,
        recipient=head.recipient,
        nonce=head.nonce,
        payload=payload,
        sealed=head.sealed,
    )


def verify_envelope(
    data: Bytes,
    *,
    directory: Mapping[NodeId, PublicKeys],
    expect_job: str | None,
    max_bytes: int,
) -> EnvelopeHeader:
    """A relay's check: shape, size, job and the sender's signature, without opening.

    The coordinator stores and forwards sealed envelopes it cannot read; this
    lets it refuse forged or malformed ones at the door. Replays are the
    relay's to refuse by (sender, nonce), since it has no per-round guard.
    """
    data = _as_bytes(data)
    if len(data) > max_bytes:
        raise InvalidEnvelope(TOO_LARGE)
    head = _parse(data).header
    sender = directory.get(head.sender)
    if sender is None:
        raise InvalidEnvelope(UNKNOWN_SENDER)
    if expect_job is not None and head.job_id != expect_job:
        raise InvalidEnvelope(WRONG_JOB)
    _verify(data, sender)
    return head


def _verify(data: bytes, sender: PublicKeys) -> None:
    body_end = len(data) - SIGNATURE_SIZE
    try:
        verifier = ed25519.Ed25519PublicKey.from_public_bytes(sender.signing)
        verifier.verify(data[body_end:], _to_sign(memoryview(data)[:body_end]))
    except (InvalidSignature, ValueError):
        raise InvalidEnvelope(BAD_SIGNATURE) from None


def _decrypt(
    data: bytes, parsed: _Parsed, recipient_keys: NodeKeys | None, sender: PublicKeys
) -> bytes:
    if recipient_keys is None:
        raise InvalidEnvelope(CANNOT_DECRYPT)
    start, end = parsed.payload_start, parsed.payload_end
    header = data[:start]
    try:
        shared = recipient_keys._exchange(parsed.ephemeral)
        key = _message_key(
            shared, parsed.header.nonce, recipient_keys.public.agreement, sender, header
        )
        return ChaCha20Poly1305(key).decrypt(_AEAD_NONCE, memoryview(data)[start:end], header)
    except (InvalidTag, ValueError):
        raise InvalidEnvelope(CANNOT_DECRYPT) from None


def disclose_key(data: Bytes, *, recipient_keys: NodeKeys, sender_public: PublicKeys) -> bytes:
    """The AEAD key of one sealed envelope addressed to ``recipient_keys``.

    Each box has its own key (fresh ephemeral exchange, HKDF over the header),
    so disclosing it opens that box and no other: an aggregator can prove to an
    auditor what it received without handing over its private key.
    """
    data = _as_bytes(data)
    parsed = _parse(data)
    if not parsed.header.sealed:
        raise InvalidEnvelope(MALFORMED)
    header = data[: parsed.payload_start]
    try:
        shared = recipient_keys._exchange(parsed.ephemeral)
    except ValueError:
        raise InvalidEnvelope(CANNOT_DECRYPT) from None
    return _message_key(
        shared, parsed.header.nonce, recipient_keys.public.agreement, sender_public, header
    )


def _decrypt_with(data: bytes, parsed: _Parsed, key: bytes) -> bytes:
    start, end = parsed.payload_start, parsed.payload_end
    header = data[:start]
    try:
        return ChaCha20Poly1305(key).decrypt(_AEAD_NONCE, memoryview(data)[start:end], header)
    except (InvalidTag, ValueError):
        raise InvalidEnvelope(CANNOT_DECRYPT) from None


#: ``envelope.open(...)`` reads well module-qualified; import ``open_envelope``
#: by name so the builtin ``open`` is not shadowed.
open = open_envelope


def _as_bytes(data: Bytes) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)  # an immutable snapshot: nothing changes between checks
    raise TypeError("envelope data must be bytes")


def _parse(data: bytes) -> _Parsed:
    n = len(data)
    if data[:3] != MAGIC[: min(n, 3)]:
        raise InvalidEnvelope(BAD_MAGIC)
    pos = _need(n, 0, 6)
    if data[3] != VERSION:
        raise InvalidEnvelope(UNSUPPORTED_VERSION)
    kind, flags = data[4], data[5]
    if flags & ~_FLAG_SEALED:
        raise InvalidEnvelope(MALFORMED)
    sealed = bool(flags & _FLAG_SEALED)
    job_id, pos = _read_id(data, pos)
    end = _need(n, pos, 4)
    (round_,) = _U32.unpack_from(data, pos)
    sender, pos = _read_id(data, end)
    recipient, pos = _read_id(data, pos)
    end = _need(n, pos, NONCE_SIZE)
    nonce = data[pos:end]
    pos = end
    ephemeral = b""
    if sealed:
        end = _need(n, pos, KEY_SIZE)
        ephemeral = data[pos:end]
        pos = end
    end = _need(n, pos, 4)
    (size,) = _U32.unpack_from(data, pos)
    pos = end
    if size > _MAX_WIRE_PAYLOAD:
        raise InvalidEnvelope(TOO_LARGE)
    if sealed and size < TAG_SIZE:
        raise InvalidEnvelope(MALFORMED)
    end = _need(n, pos, size)
    rest = n - end
    if rest < SIGNATURE_SIZE:
        raise InvalidEnvelope(TRUNCATED)
    if rest > SIGNATURE_SIZE:
        raise InvalidEnvelope(TRAILING_BYTES)
    header = EnvelopeHeader(
        kind=kind,
        job_id=JobId(job_id),
        round=round_,
        sender=NodeId(sender),
        recipient=NodeId(recipient),
        nonce=nonce,
        sealed=sealed,
        payload_size=size,
    )
    return _Parsed(header, ephemeral, pos, end)


def _need(n: int, pos: int, size: int) -> int:
    end = pos + size
    if end > n:
        raise InvalidEnvelope(TRUNCATED)
    return end


def _read_id(data: bytes, pos: int) -> tuple[str, int]:
    start = _need(len(data), pos, 1)
    size = data[pos]
    if size == 0:
        raise InvalidEnvelope(MALFORMED)
    if size > MAX_ID_BYTES:
        raise InvalidEnvelope(FIELD_TOO_LONG)
    end = _need(len(data), start, size)
    try:
        return data[start:end].decode("utf-8"), end
    except UnicodeDecodeError:
        raise InvalidEnvelope(MALFORMED) from None

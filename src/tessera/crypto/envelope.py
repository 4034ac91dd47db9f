"""Signed, optionally sealed, message envelopes: the one way bytes travel between nodes.

Theory of operation
-------------------
``seal`` turns a payload into wire bytes (``seal_stream``: a payload that
arrives in pieces, never held whole); ``open_envelope`` (also reachable
as ``envelope.open``) turns wire bytes back into an ``Envelope`` or raises
``InvalidEnvelope``; ``peek`` reads the header unverified, for routing.
``open_sealed`` is the aggregator's fast path: a sealed envelope's checks
and its decryption, without the signature (below). ``verify_envelope``
checks the signature alone, without opening; ``disclose_key`` gives the
one-box key an auditor needs. There are no algorithm choices. This module
never knows what a ``kind`` means (the protocol layer's codes) or what a
payload holds.

Wire format, version 2 (integers big-endian)::

    size  field
    1     version = 2
    1     kind, 0..255: message type code chosen by the protocol layer
    1     flags: bit 0 set = sealed; every other bit must be 0
    1+J   job id: length J in 1..64, then J bytes of UTF-8
    4     round (uint32)
    1+S   sender node id: length S in 1..64, then UTF-8
    1+R   recipient node id: length R in 1..64, then UTF-8
    12    nonce: fresh random bytes for every message
    4     P = payload size (uint32, at most 2**31 - 1)
    P     payload: the plaintext (clear), or AES-256-GCM ciphertext followed by
          its 16-byte tag (sealed)
    64    Ed25519 signature

The *header* is every byte before the payload; the *body* every byte before
the signature. Fixed overhead: 90 bytes clear, 106 sealed, plus the three
ids (version 1: 97 and 145).

Sealing, static-static (both parties' long-term X25519 keys, no ephemeral)::

    shared = X25519(sender's agreement private key, recipient.agreement)
           = X25519(recipient's agreement private key, sender.agreement)
    key    = HKDF-SHA256(ikm=shared, salt=nonce, L=32,
                         info=SEAL_INFO || sender.signing || sender.agreement
                              || recipient.signing || recipient.agreement || header)
    box    = AES-256-GCM(key).encrypt(nonce=12 zero bytes, payload, ad=header)

Signing, always, with the sender's Ed25519 key::

    signature = Ed25519(SIGN_CONTEXT || SHA-256(body))

with ``SEAL_INFO = b"tessera/envelope/v2/seal\\x00"`` and
``SIGN_CONTEXT = b"tessera/envelope/v2/signature\\x00"``. ``random_bytes``
is drawn once per message: the 12-byte nonce. Passing a fixed stream makes
``seal`` deterministic, for known-answer vectors only.

Why each piece
--------------
*AES-256-GCM* is the fastest authenticated decryption on the machines this
runs on (AES-NI and carry-less multiply): 41 us for a 375 kB share, against
133 us for ChaCha20-Poly1305 (version 1). Its 2**36-byte message limit is far
above ``MAX_PAYLOAD``.

*One key per message.* The nonce is the HKDF salt and the header (which
holds the nonce) is in the info, so every message gets its own key; the
fixed AEAD nonce therefore never repeats under a key. Keys repeat only if a
sender draws the same 12-byte nonce twice for the same header (kind, job,
round, ids, size): even at the ``ReplayGuard`` quota of 4,096 messages per
sender and round that is a 2**-73 event per pair and round. 12 bytes also
keep the replay guard sound: two honest messages from one sender in one
round collide as rarely, and a collision only refuses the second message.

*Static-static agreement.* Only the sender and the recipient can compute
``shared``, so a box that decrypts was sealed by one of them: the recipient
knows its sender without a signature (implicit authentication). The info
binds both parties' four public keys and the whole header, so a box cannot
be re-addressed, moved to another job, round, kind or sender id, or
reflected back (the direction is in the info and the ids), and one
disclosed key opens one message. No ephemeral key travels, which saves 32
bytes a message and, with ``NodeKeys``' per-peer cache, the X25519 exchange
(36 us) whenever a pair meets again. The price, against version 1's
ephemeral keys: (1) no forward secrecy: whoever later steals *either*
party's agreement key opens every box the pair ever exchanged, where
version 1 needed the recipient's key; (2) key-compromise impersonation:
whoever steals a node's agreement key can seal boxes *to that node* that
decrypt as if from any sender. The signature still stops (2) wherever it is
checked: ``open_envelope`` checks it; ``open_sealed`` does not, so a node
whose agreement key leaked must be re-keyed before it ingests again.

*The signature* is the sender's non-repudiable commitment to the exact
ciphertext (encrypt-then-sign): a relay can check who sent a box it cannot
open, and an auditor can check a box an aggregator hands over as evidence.
It covers the whole body, never only the AEAD tag: GCM and Poly1305 are not
committing, and whoever holds a box's key (the recipient, or an auditor
given it) can build another ciphertext under the same key with a valid tag.
Signing SHA-256 of the body (one SHA-NI pass) instead of the body itself
replaces the two SHA-512 passes pure Ed25519 makes over a long message;
security then rests on SHA-256's collision resistance (128 bits, as
Ed25519). The context string keeps envelope signatures apart from anything
else a node key signs (documents, draws) and from version 1's.

*Dropped from version 1:* the 3-byte magic (the version byte leads; nothing
is lost: the signature's and the KDF's context strings, not the magic,
separate formats), the 32-byte ephemeral key, 4 bytes of nonce (16 -> 12).
The payload size stays: it tells truncated or extended bytes apart from
forged ones before any cryptography runs, for 4 bytes. A version 1 envelope
(it begins ``b"TSR\x01"``) is refused as "unsupported version": there is no
mixing of versions within a job.

Opening
-------
``open_envelope`` runs its checks cheapest first and stops at the first
failure: size, structure, sender known (with a ``directory``), job, round,
recipient, replay (look only), signature, decryption. Only a message that
passed every check is remembered by the ``ReplayGuard``, so a failed open
never changes its state. Every failure is one ``InvalidEnvelope`` whose
``reason`` is one of ``REASONS``; no struct, Unicode or cryptography
exception escapes. Checks before the authentication run on
unauthenticated bytes: an ``InvalidEnvelope`` never proves the claimed
sender misbehaved. The caller decides what ``sealed`` must be for a
``kind``: ``open_envelope`` accepts a clear, signed envelope even when
``recipient_keys`` is given, and reports it in ``Envelope.sealed``.

``open_sealed`` makes the same checks except the signature, and refuses
clear envelopes ("not sealed": their only authentication is the signature).
It costs one HKDF and one AES-GCM pass (plus an X25519 exchange the first
time a peer is met) instead of a SHA-256 pass and an Ed25519 verification
as well: 1.3x to 1.5x the bare AES-GCM decryption plus the addition of a
375 kB share (about 2x the first time a sender is met), where the full open
is about 8x and version 1's open was about 10x (``benchmarks/
crypto_throughput.py --section ingest``, on a shared 2-core machine). On a
750-byte share the fixed costs dominate: about 15 us (parsing, the HKDF,
the AES-GCM setup, the ``Envelope``), 5x the bare decryption. What it proves is weaker, and
the ``Envelope`` it returns says so (``signature_verified=False``): the
payload and header are authentic (from the named sender, unless the
recipient's agreement key leaked), but nothing is proven to a third party,
and the signature bytes were not looked at, so they may be anything the
sender (or the network) put there. Before such a box is handed to an
auditor (an input copy, evidence), run ``verify_envelope`` on it (a malicious sender can attach a
bad signature to a box that opens, to frame its recipient before an
auditor). Why the fast open cannot check the signature bytes for free:
the only keyed check it runs is the AEAD, and the AEAD cannot cover the
signature while the signature covers the AEAD's tag (each would have to
come first). Dropping the tag from what is signed would let the holder of
a box's key, an aggregator before its auditor, pair the signed ciphertext
with any key and tag of its choosing (AES-GCM does not commit to its key),
so that the auditor decrypts the sender's ciphertext to something else
than what the sender sealed; keeping that out would cost a 16-byte key
commitment in every message. Version 2 keeps version 1's property instead:
the signature pins the ciphertext and its tag, hence (for an honest
sender) the one key that opens it.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, TypeAlias

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.errors import InvalidEnvelope, RemoteProtocolError
from tessera.ids import JobId, NodeId

__all__ = [
    "MAX_HEADER_BYTES",
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
    "SignatureStream",
    "clear_payload",
    "disclose_key",
    "open",
    "open_envelope",
    "open_sealed",
    "peek",
    "read_header",
    "reopen_sent",
    "seal",
    "seal_stream",
    "verify_envelope",
]

VERSION = 2
#: How a version 1 envelope begins (its magic): refused as "unsupported version".
V1_MAGIC = b"TSR"
#: Largest job id, sender or recipient, in UTF-8 bytes.
MAX_ID_BYTES = 64
NONCE_SIZE = 12
SIGNATURE_SIZE = 64
TAG_SIZE = 16
#: Largest payload ``seal`` accepts (the size field's bound, less the tag).
MAX_PAYLOAD = 2**31 - 1 - TAG_SIZE
_MAX_WIRE_PAYLOAD = 2**31 - 1
#: The longest header: version, kind, flags, three ids, round, nonce, payload size.
MAX_HEADER_BYTES = 3 + 3 * (1 + MAX_ID_BYTES) + 4 + NONCE_SIZE + 4

_FLAG_SEALED = 0x01
_SEAL_INFO = b"tessera/envelope/v2/seal\x00"
_SIGN_CONTEXT = b"tessera/envelope/v2/signature\x00"
_AEAD_NONCE = bytes(12)  # the key is single-use, so a constant nonce is safe
_U32 = struct.Struct(">I")
_U32_MAX = 2**32 - 1

#: What ``seal``, ``open_envelope`` and ``peek`` take (``seal`` also any C-contiguous buffer).
Bytes: TypeAlias = bytes | bytearray | memoryview

#: Envelope size minus payload and the three ids' bytes.
OVERHEAD_CLEAR = 1 + 1 + 1 + 1 + 4 + 1 + 1 + NONCE_SIZE + 4 + SIGNATURE_SIZE
OVERHEAD_SEALED = OVERHEAD_CLEAR + TAG_SIZE

# The reasons an envelope is refused (``InvalidEnvelope.reason``).
TOO_LARGE = "too large"
TRUNCATED = "truncated"
TRAILING_BYTES = "trailing bytes"
BAD_MAGIC = "bad magic"  # not an envelope of any version
UNSUPPORTED_VERSION = "unsupported version"  # version 1 (b"TSR\x01...") or another
FIELD_TOO_LONG = "field too long"
MALFORMED = "malformed"  # unknown flag bits, an empty id, invalid UTF-8, a box shorter than its tag
UNKNOWN_SENDER = "unknown sender"
WRONG_JOB = "wrong job"
WRONG_ROUND = "wrong round"
WRONG_RECIPIENT = "wrong recipient"
STALE_ROUND = "stale round"  # older than what the ReplayGuard still remembers
REPLAYED_NONCE = "replayed nonce"
TOO_MANY_MESSAGES = "too many messages"  # one sender filled its ReplayGuard quota for a round
NOT_SEALED = "not sealed"  # open_sealed was given a clear envelope
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
        NOT_SEALED,
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
    """An opened envelope: authenticated header fields and the plaintext payload.

    ``signature_verified`` is False only from ``open_sealed``: the box is
    authentic to its recipient (static-static AEAD) but its signature, what
    proves its origin to anyone else, was not checked (``verify_envelope``).
    """

    kind: int
    job_id: JobId
    round: int
    sender: NodeId
    recipient: NodeId
    nonce: bytes
    payload: bytes = field(repr=False)  # plaintext; kept out of logs
    sealed: bool
    signature_verified: bool = True


class ReplayGuard:
    """The nonces of opened envelopes, per round and sender, in bounded memory.

    Use one guard per job on each node, and call ``forget_before(r)`` when
    round ``r`` starts: it drops every older round and from then on refuses
    those rounds ("stale round"), since their nonces are no longer known.
    One sender may have at most ``max_per_round`` envelopes opened in one
    round ("too many messages" after that), so the memory held is at most
    rounds kept x senders x quota nonces, each of which came authenticated
    (a valid signature, or a box only its sender could seal). Not
    thread-safe; the protocol machines are single-threaded.
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
    body = memoryview(payload)
    if not body.c_contiguous:
        raise ValueError("payload must be C-contiguous")
    body = body.cast("B")
    header, nonce = _header(
        kind,
        job_id,
        round,
        sender,
        recipient,
        body.nbytes,
        sealed=recipient_public is not None,
        random_bytes=random_bytes,
    )
    box: bytes | memoryview = body
    if recipient_public is not None:
        key = _message_key(
            _shared(sender_keys, recipient_public),
            nonce,
            sender_keys.public,
            recipient_public,
            header,
        )
        box = AESGCM(key).encrypt(_AEAD_NONCE, body, header)
    signature = sender_keys._sign(_to_sign(header, box))
    # One join: the only copy of a large payload that sealing makes.
    return b"".join((header, box, signature))


def seal_stream(
    *,
    kind: int,
    job_id: str,
    round: int,
    sender: str,
    recipient: str,
    size: int,
    chunks: Iterable[Bytes],
    sender_keys: NodeKeys,
    recipient_public: PublicKeys,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """``seal`` of a payload that arrives as ``chunks`` (``size`` bytes in all), sealed
    for ``recipient_public``: the same wire format, without ever holding the payload.

    Each chunk is encrypted (AES-256-GCM, streaming) and hashed for the
    signature as it comes, then appended to the envelope, so a large payload
    made piece by piece (a contributor's full share) costs about one envelope
    of memory. ``chunks`` yielding more or fewer than ``size`` bytes is a
    ``ValueError``.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError("size must be an int >= 0")
    header, nonce = _header(
        kind, job_id, round, sender, recipient, size, sealed=True, random_bytes=random_bytes
    )
    key = _message_key(
        _shared(sender_keys, recipient_public), nonce, sender_keys.public, recipient_public, header
    )
    encryptor = Cipher(algorithms.AES256(key), modes.GCM(_AEAD_NONCE)).encryptor()
    encryptor.authenticate_additional_data(header)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(header)
    # BytesIO grows in place and hands its buffer over as bytes: no final copy.
    out = io.BytesIO()
    out.write(header)
    written = 0
    for chunk in chunks:
        box = encryptor.update(chunk)
        written += len(box)
        if written > size:
            raise ValueError(f"chunks hold more than the {size} bytes announced")
        digest.update(box)
        out.write(box)
    if written != size:
        raise ValueError(f"chunks hold {written} bytes, not the {size} announced")
    encryptor.finalize()
    digest.update(encryptor.tag)
    out.write(encryptor.tag)
    out.write(sender_keys._sign(_SIGN_CONTEXT + digest.finalize()))
    return out.getvalue()


def _header(  # noqa: PLR0917 - the header's own fields, in wire order
    kind: int,
    job_id: str,
    round: int,
    sender: str,
    recipient: str,
    payload_size: int,
    *,
    sealed: bool,
    random_bytes: Callable[[int], bytes],
) -> tuple[bytes, bytes]:
    """An envelope's header for a payload of ``payload_size`` plaintext bytes, and its
    nonce (drawn here)."""
    if isinstance(kind, bool) or not isinstance(kind, int) or not 0 <= kind <= 0xFF:
        raise ValueError("kind must be an int in 0..255")
    if isinstance(round, bool) or not isinstance(round, int) or not 0 <= round <= _U32_MAX:
        raise ValueError("round must be an int in 0..2**32-1")
    job = _encode_id("job_id", job_id)
    snd = _encode_id("sender", sender)
    rcp = _encode_id("recipient", recipient)
    if payload_size > MAX_PAYLOAD:
        raise ValueError(f"payload is larger than {MAX_PAYLOAD} bytes")
    nonce = _draw(random_bytes, NONCE_SIZE)
    header = b"".join(
        (
            bytes((VERSION, kind, _FLAG_SEALED if sealed else 0)),
            job,
            _U32.pack(round),
            snd,
            rcp,
            nonce,
            _U32.pack(payload_size + TAG_SIZE if sealed else payload_size),
        )
    )
    return header, nonce


def _shared(sender_keys: NodeKeys, recipient_public: PublicKeys) -> bytes:
    try:
        return sender_keys._exchange(recipient_public.agreement)
    except ValueError:
        raise RemoteProtocolError("the recipient's agreement key is invalid") from None


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
    shared: bytes, nonce: bytes, sender: PublicKeys, recipient: PublicKeys, header: bytes
) -> bytes:
    """The one-box AEAD key: HKDF over the static-static secret, both parties' keys, the header."""
    info = b"".join(
        (
            _SEAL_INFO,
            sender.signing,
            sender.agreement,
            recipient.signing,
            recipient.agreement,
            header,
        )
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=nonce, info=info).derive(shared)


def _to_sign(*parts: bytes | memoryview) -> bytes:
    """What Ed25519 signs: the context string and SHA-256 of the body (given in parts)."""
    digest = hashes.Hash(hashes.SHA256())
    for part in parts:
        digest.update(part)
    return _SIGN_CONTEXT + digest.finalize()


# -- opening ---------------------------------------------------------------------------


class _Parsed(NamedTuple):
    """The header's fields and where the payload lies (a tuple: parsing is on the hot path)."""

    kind: int
    job_id: JobId
    round: int
    sender: NodeId
    recipient: NodeId
    nonce: bytes
    sealed: bool
    payload_size: int
    payload_start: int
    payload_end: int

    @property
    def header(self) -> EnvelopeHeader:
        return EnvelopeHeader(
            kind=self.kind,
            job_id=self.job_id,
            round=self.round,
            sender=self.sender,
            recipient=self.recipient,
            nonce=self.nonce,
            sealed=self.sealed,
            payload_size=self.payload_size,
        )


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
    """Check everything, the signature too, then decrypt; any failure is one ``InvalidEnvelope``.

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
    data = _as_bytes(data)
    parsed, sender_public = _check(
        data,
        sender_public=sender_public,
        directory=directory,
        expect_job=expect_job,
        expect_round=expect_round,
        expect_recipient=expect_recipient,
        max_bytes=max_bytes,
        replay=replay,
    )
    head = parsed
    _verify(data, sender_public)
    if head.sealed and disclosed_key is not None:
        payload = _decrypt_with(data, parsed, disclosed_key)
    elif head.sealed:
        if recipient_keys is None:
            raise InvalidEnvelope(CANNOT_DECRYPT)
        payload = _decrypt(data, parsed, recipient_keys, sender_public)
    else:
        payload = data[parsed.payload_start : parsed.payload_end]
    if replay is not None:
        replay.check_and_remember(head.sender, head.round, head.nonce)
    return _opened(head, payload, signature_verified=True)


def open_sealed(
    data: Bytes,
    *,
    recipient_keys: NodeKeys,
    sender_public: PublicKeys | None = None,
    directory: Mapping[NodeId, PublicKeys] | None = None,
    expect_job: str,
    expect_round: int | None,
    expect_recipient: str,
    max_bytes: int,
    replay: ReplayGuard,
) -> Envelope:
    """The ingest path: ``open_envelope``'s checks and decryption, but NOT the signature.

    For sealed envelopes only ("not sealed" otherwise): a box that decrypts
    under the static-static key was sealed by its sender (or by this
    recipient), so the payload and header are authentic to this recipient,
    at the cost of an AES-GCM pass and an HKDF (and an X25519 exchange the
    first time a sender is met). Nothing is proven to anyone else, and the
    signature bytes may be garbage: run ``verify_envelope`` on the box before
    it leaves this node as evidence. The result has ``signature_verified``
    False. A recipient and a replay guard are required, not optional: the
    key proves who sealed the box, not that it is fresh or meant for us.
    """
    if not isinstance(recipient_keys, NodeKeys):
        raise TypeError("open_sealed needs the recipient's keys")
    if not isinstance(replay, ReplayGuard):
        raise TypeError("open_sealed needs a ReplayGuard")
    if not isinstance(expect_recipient, str):
        raise TypeError("open_sealed needs expect_recipient")
    data = _as_bytes(data)
    parsed, sender_public = _check(
        data,
        sender_public=sender_public,
        directory=directory,
        expect_job=expect_job,
        expect_round=expect_round,
        expect_recipient=expect_recipient,
        max_bytes=max_bytes,
        replay=replay,
        sealed_only=True,
    )
    head = parsed
    payload = _decrypt(data, parsed, recipient_keys, sender_public)
    replay.check_and_remember(head.sender, head.round, head.nonce)
    return _opened(head, payload, signature_verified=False)


def _check(
    data: bytes,
    *,
    sender_public: PublicKeys | None,
    directory: Mapping[NodeId, PublicKeys] | None,
    expect_job: str,
    expect_round: int | None,
    expect_recipient: str | None,
    max_bytes: int,
    replay: ReplayGuard | None,
    sealed_only: bool = False,
) -> tuple[_Parsed, PublicKeys]:
    """Every check before the cryptography, cheapest first; the sender's keys."""
    if (sender_public is None) == (directory is None):
        raise TypeError("pass exactly one of sender_public or directory")
    if len(data) > max_bytes:
        raise InvalidEnvelope(TOO_LARGE)
    parsed = head = _parse(data)
    if sealed_only and not head.sealed:
        raise InvalidEnvelope(NOT_SEALED)
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
    return parsed, sender_public


def _opened(head: _Parsed, payload: bytes, *, signature_verified: bool) -> Envelope:
    return Envelope(
        kind=head.kind,
        job_id=head.job_id,
        round=head.round,
        sender=head.sender,
        recipient=head.recipient,
        nonce=head.nonce,
        payload=payload,
        sealed=head.sealed,
        signature_verified=signature_verified,
    )


def verify_envelope(
    data: Bytes,
    *,
    directory: Mapping[NodeId, PublicKeys],
    expect_job: str | None,
    max_bytes: int,
) -> EnvelopeHeader:
    """A relay's (or an auditor's) check: shape, size, job and the sender's signature.

    The coordinator stores and forwards sealed envelopes it cannot read; this
    lets it refuse forged or malformed ones at the door. Replays are the
    relay's to refuse by (sender, nonce), since it has no per-round guard.
    It is also how a recipient that took a box through ``open_sealed`` makes
    sure the box's signature holds before handing it to anyone as evidence.
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


def read_header(prefix: Bytes) -> tuple[EnvelopeHeader, int]:
    """The header of an envelope from its first bytes, and the size the whole envelope
    must have: NOT authenticated, for a relay deciding before the rest arrives.

    ``TRUNCATED`` while ``prefix`` ends inside the header (at most
    ``MAX_HEADER_BYTES`` are ever needed); any other error is final.
    """
    head, payload_start, size = _parse_header(_as_bytes(prefix))
    return head.header, payload_start + size + SIGNATURE_SIZE


class SignatureStream:
    """Checks an envelope's signature as its bytes go by, keeping only the last 64.

    The signature covers SHA-256 of the body (every byte before it), so a relay
    streaming a large envelope to disk can verify it without holding it.
    """

    def __init__(self) -> None:
        self._digest = hashes.Hash(hashes.SHA256())
        self._tail = b""  # the latest bytes: the signature, once all have passed

    def update(self, chunk: bytes | memoryview) -> None:
        data = self._tail + bytes(chunk)
        self._digest.update(memoryview(data)[:-SIGNATURE_SIZE])
        self._tail = data[-SIGNATURE_SIZE:]

    def verify(self, sender: PublicKeys) -> None:
        """``BAD_SIGNATURE`` unless ``sender`` signed every byte passed (call once)."""
        if len(self._tail) < SIGNATURE_SIZE:
            raise InvalidEnvelope(TRUNCATED)
        try:
            verifier = ed25519.Ed25519PublicKey.from_public_bytes(sender.signing)
            verifier.verify(self._tail, _SIGN_CONTEXT + self._digest.finalize())
        except (InvalidSignature, ValueError):
            raise InvalidEnvelope(BAD_SIGNATURE) from None


def _verify(data: bytes, sender: PublicKeys) -> None:
    body_end = len(data) - SIGNATURE_SIZE
    try:
        verifier = ed25519.Ed25519PublicKey.from_public_bytes(sender.signing)
        verifier.verify(data[body_end:], _to_sign(memoryview(data)[:body_end]))
    except (InvalidSignature, ValueError):
        raise InvalidEnvelope(BAD_SIGNATURE) from None


def _decrypt(data: bytes, parsed: _Parsed, recipient_keys: NodeKeys, sender: PublicKeys) -> bytes:
    header = data[: parsed.payload_start]
    try:
        shared = recipient_keys._exchange(sender.agreement)
    except ValueError:  # the sender published a low-order agreement key
        raise InvalidEnvelope(CANNOT_DECRYPT) from None
    key = _message_key(shared, parsed.nonce, sender, recipient_keys.public, header)
    return _decrypt_with(data, parsed, key)


def disclose_key(data: Bytes, *, recipient_keys: NodeKeys, sender_public: PublicKeys) -> bytes:
    """The AEAD key of one sealed envelope addressed to ``recipient_keys``.

    Each box has its own key (HKDF over the pair's static secret with the
    box's fresh nonce and whole header), so disclosing it opens that box and
    no other, and reveals nothing of the pair's secret: an aggregator can
    prove to an auditor what it received without handing over its private
    key. The auditor must check the box's signature (``open_envelope`` does):
    the key lets anyone make another box that decrypts under it.
    """
    return _box_key(_as_bytes(data), recipient_keys, sender_public, sent=False)[1]


def reopen_sent(data: Bytes, *, sender_keys: NodeKeys, recipient_public: PublicKeys) -> bytes:
    """The payload of a sealed envelope that ``sender_keys`` sealed for ``recipient_public``.

    The box key comes from the pair's static secret, which the sender holds as
    well as the recipient, so a sender can keep the one ciphertext it sent and
    read it back later instead of keeping the plaintext beside it (a
    contributor's full share, resealed for a replacement aggregator). The AEAD
    tag is checked: bytes that this sender did not seal for this recipient
    fail with ``InvalidEnvelope``.
    """
    data = _as_bytes(data)
    parsed, key = _box_key(data, sender_keys, recipient_public, sent=True)
    return _decrypt_with(data, parsed, key)


def _box_key(data: bytes, mine: NodeKeys, peer: PublicKeys, *, sent: bool) -> tuple[_Parsed, bytes]:
    """A sealed box's key, from either end of the pair (``sent``: ``mine`` sealed it)."""
    parsed = _parse(data)
    if not parsed.sealed:
        raise InvalidEnvelope(MALFORMED)
    try:
        shared = mine._exchange(peer.agreement)
    except ValueError:  # a low-order agreement key
        raise InvalidEnvelope(CANNOT_DECRYPT) from None
    sender, recipient = (mine.public, peer) if sent else (peer, mine.public)
    header = data[: parsed.payload_start]
    return parsed, _message_key(shared, parsed.nonce, sender, recipient, header)


def clear_payload(data: bytes) -> memoryview:
    """The payload of a clear envelope already opened and checked, without a copy.

    For a party that keeps the envelope (its signature is what binds the payload
    to its sender) and reads the payload again later: nothing is checked here
    but the format, so call it only on bytes that ``open_envelope`` accepted.
    """
    parsed = _parse(data)
    if parsed.sealed:
        raise InvalidEnvelope(MALFORMED)
    return memoryview(data)[parsed.payload_start : parsed.payload_end]


def _decrypt_with(data: bytes, parsed: _Parsed, key: bytes) -> bytes:
    start, end = parsed.payload_start, parsed.payload_end
    try:
        return AESGCM(key).decrypt(_AEAD_NONCE, memoryview(data)[start:end], data[:start])
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
    parsed, pos, size = _parse_header(data)
    end = _need(len(data), pos, size)
    rest = len(data) - end
    if rest < SIGNATURE_SIZE:
        raise InvalidEnvelope(TRUNCATED)
    if rest > SIGNATURE_SIZE:
        raise InvalidEnvelope(TRAILING_BYTES)
    return parsed._replace(payload_end=end)


def _parse_header(data: bytes) -> tuple[_Parsed, int, int]:
    """The header's fields (``payload_end`` not yet known), where the payload starts,
    and its size; ``TRUNCATED`` if ``data`` ends inside the header."""
    n = len(data)
    if n == 0:
        raise InvalidEnvelope(TRUNCATED)
    if data[0] != VERSION:
        if data[0] < 0x10 or data[:3] == V1_MAGIC:  # another version, or version 1
            raise InvalidEnvelope(UNSUPPORTED_VERSION)
        raise InvalidEnvelope(BAD_MAGIC)
    pos = _need(n, 0, 3)
    kind, flags = data[1], data[2]
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
    pos = _need(n, end, 4)
    (size,) = _U32.unpack_from(data, end)
    if size > _MAX_WIRE_PAYLOAD:
        raise InvalidEnvelope(TOO_LARGE)
    if sealed and size < TAG_SIZE:
        raise InvalidEnvelope(MALFORMED)
    parsed = _Parsed(
        kind,
        JobId(job_id),
        round_,
        NodeId(sender),
        NodeId(recipient),
        nonce,
        sealed,
        size,
        pos,
        pos + size,
    )
    return parsed, pos, size


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

"""A node's long-term identity: an Ed25519 signing key and an X25519 agreement key.

Theory of operation
-------------------
Every node (and the coordinator) holds one ``NodeKeys``: Ed25519 signs every
envelope it sends, X25519 receives sealed envelopes. Its ``PublicKeys`` (the
two 32-byte raw public keys, 64 bytes on the wire) is what a directory of
nodes holds; ``fingerprint`` names it for people and logs.

Where keys come from:

- ``NodeKeys.generate()``: fresh keys from the operating system's CSPRNG.
  The only source for production keys.
- ``NodeKeys.from_seed(seed)``: both private keys are derived from
  ``HKDF-SHA256(ikm=seed, salt=none, info="tessera/node-keys/v1/from-seed",
  L=64)``; bytes 0..31 are the Ed25519 private key, 32..63 the X25519 one.
  Deterministic, for simulations, tests and known-answer vectors only:
  anyone who knows or guesses the seed holds the keys. Never for
  production keys.

Key files (``private_bytes`` / ``save``) are two PEM blocks, PKCS#8: the
Ed25519 signing key first, the X25519 agreement key second. Unencrypted
without a passphrase; with one, each block is ``ENCRYPTED PRIVATE KEY``
made by cryptography's ``BestAvailableEncryption``. In cryptography 50 that
is PBES2 with PBKDF2-HMAC-SHA256 (2048 iterations) and AES-256-CBC: it
protects a key file under a high-entropy passphrase (a generated secret),
not under a short human-chosen password. Each block opens with
``openssl pkey``. ``save`` writes the file with mode 0600 atomically (a
temporary file in the same folder, fsync, then a rename or hard link), and
refuses to replace an existing key file unless ``overwrite=True``.

A wrong or missing passphrase, or a file that is not a node key file,
raises ``ConfigError`` naming ``passphrase`` or ``key file``: it is this
node's own configuration that is wrong. A malformed 64-byte public key from
a peer raises ``RemoteProtocolError``.

Costs on the reference machine: ``generate`` and ``from_seed`` about 70 us
each (two scalar multiplications to derive the public keys), so keys for
10,000 simulated nodes take about a second.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tessera.errors import ConfigError, RemoteProtocolError

__all__ = ["KEY_SIZE", "PUBLIC_KEYS_SIZE", "NodeKeys", "PublicKeys"]

#: Size of each raw public or private key.
KEY_SIZE = 32
#: Size of ``PublicKeys.to_bytes()``: signing key then agreement key.
PUBLIC_KEYS_SIZE = 2 * KEY_SIZE

_SEED_INFO = b"tessera/node-keys/v1/from-seed"
_DRAW_LABEL = b"tessera/draw/v1\x00"  # never a prefix of what envelopes or documents sign
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
_PLAIN_LABEL = b"PRIVATE KEY"
_ENCRYPTED_LABEL = b"ENCRYPTED PRIVATE KEY"


@dataclass(frozen=True, slots=True)
class PublicKeys:
    """A node's public identity: raw Ed25519 and X25519 public keys, 32 bytes each."""

    signing: bytes
    agreement: bytes

    def __post_init__(self) -> None:
        for name in ("signing", "agreement"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != KEY_SIZE:
                raise ValueError(f"{name} must be {KEY_SIZE} bytes")

    def to_bytes(self) -> bytes:
        """The 64-byte wire form: signing key, then agreement key."""
        return self.signing + self.agreement

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> PublicKeys:
        """Parse the 64-byte wire form; a wrong size is the peer's fault."""
        raw = bytes(data)
        if len(raw) != PUBLIC_KEYS_SIZE:
            raise RemoteProtocolError(f"public keys must be {PUBLIC_KEYS_SIZE} bytes")
        return cls(signing=raw[:KEY_SIZE], agreement=raw[KEY_SIZE:])

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of ``to_bytes()``: 64 characters, names the node's keys."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @property
    def short_fingerprint(self) -> str:
        """The first 16 hex characters (64 bits) of ``fingerprint``, for display only."""
        return self.fingerprint[:16]

    def __repr__(self) -> str:
        return f"PublicKeys(fingerprint={self.short_fingerprint})"


class NodeKeys:
    """A node's private keys. Build with ``generate``, ``from_seed`` or ``load``."""

    __slots__ = ("_agreement", "_public", "_signing")

    def __init__(
        self, signing: ed25519.Ed25519PrivateKey, agreement: x25519.X25519PrivateKey
    ) -> None:
        if not isinstance(signing, ed25519.Ed25519PrivateKey):
            raise TypeError("signing must be an Ed25519 private key")
        if not isinstance(agreement, x25519.X25519PrivateKey):
            raise TypeError("agreement must be an X25519 private key")
        self._signing = signing
        self._agreement = agreement
        self._public = PublicKeys(
            signing=signing.public_key().public_bytes_raw(),
            agreement=agreement.public_key().public_bytes_raw(),
        )

    @classmethod
    def generate(cls) -> NodeKeys:
        """Fresh random keys: the only way to make production keys."""
        return cls(ed25519.Ed25519PrivateKey.generate(), x25519.X25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeKeys:
        """Deterministic keys from ``seed``, for simulations and tests. Never for production."""
        if not isinstance(seed, bytes) or not seed:
            raise ValueError("seed must be non-empty bytes")
        okm = HKDF(algorithm=hashes.SHA256(), length=2 * KEY_SIZE, salt=None, info=_SEED_INFO)
        material = okm.derive(seed)
        return cls(
            ed25519.Ed25519PrivateKey.from_private_bytes(material[:KEY_SIZE]),
            x25519.X25519PrivateKey.from_private_bytes(material[KEY_SIZE:]),
        )

    @property
    def public(self) -> PublicKeys:
        return self._public

    def __repr__(self) -> str:
        return f"NodeKeys(fingerprint={self._public.short_fingerprint})"

    # -- serialization -----------------------------------------------------------
    def private_bytes(self, passphrase: bytes | None) -> bytes:
        """Both private keys as two PKCS#8 PEM blocks, encrypted when a passphrase is given."""
        encryption: serialization.KeySerializationEncryption
        if passphrase is None:
            encryption = serialization.NoEncryption()
        else:
            _check_passphrase(passphrase)
            encryption = serialization.BestAvailableEncryption(passphrase)
        return b"".join(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
            )
            for key in (self._signing, self._agreement)
        )

    @classmethod
    def from_private_bytes(
        cls, data: bytes | bytearray | memoryview, passphrase: bytes | None
    ) -> NodeKeys:
        """Parse what ``private_bytes`` wrote; ``ConfigError`` if it cannot."""
        if passphrase is not None:
            _check_passphrase(passphrase)
        blocks = [(m.group(1), m.group(0)) for m in _PEM_BLOCK.finditer(bytes(data))]
        if len(blocks) != 2 or any(
            label not in (_PLAIN_LABEL, _ENCRYPTED_LABEL) for label, _ in blocks
        ):
            raise ConfigError("key file", "not a Tessera node key file (two PKCS#8 PEM blocks)")
        encrypted = {label == _ENCRYPTED_LABEL for label, _ in blocks}
        if encrypted == {True} and passphrase is None:
            raise ConfigError("passphrase", "the key file is encrypted: a passphrase is required")
        if encrypted == {False} and passphrase is not None:
            raise ConfigError("passphrase", "the key file is not encrypted: pass passphrase=None")
        if len(encrypted) != 1:
            raise ConfigError("key file", "one key is encrypted and the other is not")
        keys = []
        for _, block in blocks:
            try:
                keys.append(serialization.load_pem_private_key(block, passphrase))
            except (ValueError, TypeError, UnsupportedAlgorithm):
                if passphrase is not None:
                    raise ConfigError(
                        "passphrase", "wrong passphrase, or the key file is corrupt"
                    ) from None
                raise ConfigError("key file", "unsupported or corrupt private key") from None
        signing, agreement = keys
        if not isinstance(signing, ed25519.Ed25519PrivateKey) or not isinstance(
            agreement, x25519.X25519PrivateKey
        ):
            raise ConfigError(
                "key file", "expected an Ed25519 key, then an X25519 key (in that order)"
            )
        return cls(signing, agreement)

    def draw(self, context: bytes) -> bytes:
        """32 bytes that only this key's holder can compute, the same for the same context.

        SHA-256 of the deterministic Ed25519 signature (RFC 8032) of ``context``
        under a label of its own: a keyed pseudo-random function, for choices
        others must not predict but that replay identically (which sums to audit).
        """
        if not isinstance(context, bytes):
            raise TypeError("context must be bytes")
        digest = hashes.Hash(hashes.SHA256())
        digest.update(self._signing.sign(_DRAW_LABEL + context))
        return digest.finalize()

    # -- for tessera.crypto.envelope only ------------------------------------------
    def _sign(self, message: bytes) -> bytes:
        return self._signing.sign(message)

    def _exchange(self, peer_agreement: bytes) -> bytes:
        """Raw X25519 shared secret; ``ValueError`` for a low-order peer key."""
        return self._agreement.exchange(x25519.X25519PublicKey.from_public_bytes(peer_agreement))


def _check_passphrase(passphrase: bytes) -> None:
    if not isinstance(passphrase, bytes) or not passphrase:
        raise ConfigError("passphrase", "must be non-empty bytes, or None for no encryption")

"""A node's long-term identity: an Ed25519 signing key and an X25519 agreement key.

Theory of operation
-------------------
Every node (and the coordinator) holds one ``NodeKeys``: Ed25519 signs every
envelope it sends; X25519, static-static, agrees the key of every sealed
envelope it sends or receives (with the peer's X25519 key, cached per peer:
see ``NodeKeys``). Its ``PublicKeys`` (the
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

Key files (``private_bytes``; ``tessera.storage.keyfile`` writes them).
Without a passphrase: two PEM blocks, PKCS#8, the Ed25519 signing key first,
the X25519 agreement key second; each opens with ``openssl pkey``; anyone who reads the file holds
the keys. With one: a single PEM block ``TESSERA ENCRYPTED NODE KEYS`` whose
body is the 33-byte header ``version (1) | kdf (1 = scrypt) | log2 N | r |
p | salt (16) | nonce (12)``, then AES-256-GCM, under the 32-byte scrypt key
of the passphrase, of both raw private keys (64 bytes), with
``"tessera/node-keys/v1/file" || header`` as associated data: a changed
parameter or salt is as wrong as a changed ciphertext. Files are written
with ``SCRYPT_DEFAULT``, N=2**17, r=8, p=1 (OWASP's setting: 128 MiB
and about 0.3 s a guess); the parameters are in the file, so they can be
raised later and old files still open. A file is read only if its cost lies
between 16 MiB and 1 GiB of memory (p at most 16): the floor refuses a
file weakened by hand, the ceiling one built to exhaust memory.
Files written before this format (PKCS#8 under PBES2: PBKDF2-HMAC-SHA256,
2048 iterations, cheap to brute-force) still open; ``key_file_format``
names them, and ``tessera.storage.keyfile`` re-seals them under scrypt.

A wrong or missing passphrase, or a file that is not a node key file,
raises ``ConfigError`` naming ``passphrase`` or ``key file``: it is this
node's own configuration that is wrong. A malformed 64-byte public key from
a peer raises ``RemoteProtocolError``.

Costs on the reference machine: ``generate`` and ``from_seed`` about 70 us
each (two scalar multiplications to derive the public keys), so keys for
10,000 simulated nodes take about a second. Writing or reading an encrypted
key file costs one scrypt: 0.2-0.5 s and 128 MiB at the default. An X25519
exchange costs about 36 us; a cached one (``SHARED_CACHE_SIZE`` peers, about
100 bytes each) under 1 us.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import ClassVar, Literal

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from tessera.errors import ConfigError, RemoteProtocolError

__all__ = [
    "KEY_SIZE",
    "PUBLIC_KEYS_SIZE",
    "SCRYPT_DEFAULT",
    "SHARED_CACHE_SIZE",
    "KeyFileFormat",
    "NodeKeys",
    "PublicKeys",
    "ScryptParams",
    "key_file_format",
]

#: Size of each raw public or private key.
KEY_SIZE = 32
#: Size of ``PublicKeys.to_bytes()``: signing key then agreement key.
PUBLIC_KEYS_SIZE = 2 * KEY_SIZE
#: Peers whose X25519 shared secret a ``NodeKeys`` remembers (least recently used go first).
SHARED_CACHE_SIZE = 4096

_SEED_INFO = b"tessera/node-keys/v1/from-seed"
_DRAW_LABEL = b"tessera/draw/v1\x00"  # never a prefix of what envelopes or documents sign
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
_PLAIN_LABEL = b"PRIVATE KEY"
_ENCRYPTED_LABEL = b"ENCRYPTED PRIVATE KEY"  # legacy: PBES2 with PBKDF2, 2048 iterations
_SEALED_LABEL = b"TESSERA ENCRYPTED NODE KEYS"
_SEALED_VERSION = 1
_KDF_SCRYPT = 1
_HEADER = struct.Struct(">BBBBB16s12s")  # version, kdf, log2 N, r, p, salt, nonce
_SEALED_AAD = b"tessera/node-keys/v1/file"
_TAG_SIZE = 16

#: What a key file is: keys in the clear, the legacy PBKDF2 form, or scrypt-sealed.
KeyFileFormat = Literal["clear", "pbkdf2", "scrypt"]


@dataclass(frozen=True, slots=True)
class ScryptParams:
    """scrypt's cost: N = 2**log2_n, block size r, parallelism p; memory is 128*N*r bytes."""

    log2_n: int
    r: int
    p: int

    #: Memory bounds of a readable file (see the module docstring).
    MIN_MEMORY: ClassVar[int] = 16 * 2**20
    MAX_MEMORY: ClassVar[int] = 2**30
    MAX_P: ClassVar[int] = 16

    @property
    def n(self) -> int:
        return 1 << self.log2_n

    @property
    def memory(self) -> int:
        """Bytes of memory one derivation (one guess) needs."""
        return 128 * self.n * self.r

    def check(self) -> None:
        """``ConfigError`` unless the cost lies within the readable bounds."""
        if not (
            1 <= self.log2_n <= 63
            and 1 <= self.r <= 255
            and 1 <= self.p <= self.MAX_P
            and self.MIN_MEMORY <= self.memory <= self.MAX_MEMORY
        ):
            raise ConfigError(
                "key file",
                f"scrypt parameters out of bounds (N=2**{self.log2_n}, r={self.r}, "
                f"p={self.p}): too cheap to protect a key, or too costly to open",
            )

    @classmethod
    def cheapest(cls) -> ScryptParams:
        """The floor (16 MiB): for tests that open many files, never for real keys."""
        return cls(log2_n=14, r=8, p=1)

    @classmethod
    def of_key_file(cls, data: bytes | bytearray | memoryview) -> ScryptParams:
        """The parameters a sealed key file was written with; ``ConfigError`` for another form."""
        header, _ = _sealed_parts(bytes(data))
        _, _, log2_n, r, p, _, _ = _HEADER.unpack(header)
        return cls(log2_n=log2_n, r=r, p=p)


#: What ``private_bytes`` writes with (OWASP's scrypt setting: 128 MiB a guess).
SCRYPT_DEFAULT = ScryptParams(log2_n=17, r=8, p=1)


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
    """A node's private keys. Build with ``generate``, ``from_seed`` or ``load``.

    It remembers the X25519 shared secret of up to ``shared_cache_size`` peers
    (least recently used evicted first; 0 turns the cache off): envelopes are
    sealed static-static, so a pair that meets again pays no scalar
    multiplication (36 us). Each entry is 32 bytes that this key's holder can
    recompute at will, so the cache holds nothing the private key does not.
    Thread-safe.
    """

    __slots__ = ("_agreement", "_cache_size", "_lock", "_public", "_shared", "_signing")

    def __init__(
        self,
        signing: ed25519.Ed25519PrivateKey,
        agreement: x25519.X25519PrivateKey,
        *,
        shared_cache_size: int = SHARED_CACHE_SIZE,
    ) -> None:
        if not isinstance(signing, ed25519.Ed25519PrivateKey):
            raise TypeError("signing must be an Ed25519 private key")
        if not isinstance(agreement, x25519.X25519PrivateKey):
            raise TypeError("agreement must be an X25519 private key")
        if isinstance(shared_cache_size, bool) or not isinstance(shared_cache_size, int):
            raise TypeError("shared_cache_size must be an int")
        if shared_cache_size < 0:
            raise ValueError("shared_cache_size must be >= 0")
        self._signing = signing
        self._agreement = agreement
        self._public = PublicKeys(
            signing=signing.public_key().public_bytes_raw(),
            agreement=agreement.public_key().public_bytes_raw(),
        )
        self._cache_size = shared_cache_size
        self._shared: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()

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

    @property
    def cached_peers(self) -> int:
        """How many peers' shared secrets are cached now."""
        return len(self._shared)

    def forget_shared(self) -> None:
        """Drop every cached shared secret (benchmarks measure a cold cache with it)."""
        with self._lock:
            self._shared.clear()

    # -- serialization -----------------------------------------------------------
    def private_bytes(
        self, passphrase: bytes | None, *, kdf: ScryptParams = SCRYPT_DEFAULT
    ) -> bytes:
        """The key file: two PKCS#8 PEM blocks in the clear, or sealed under ``passphrase``."""
        if passphrase is None:
            return b"".join(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                for key in (self._signing, self._agreement)
            )
        _check_passphrase(passphrase)
        kdf.check()
        salt, nonce = os.urandom(16), os.urandom(12)
        header = _HEADER.pack(_SEALED_VERSION, _KDF_SCRYPT, kdf.log2_n, kdf.r, kdf.p, salt, nonce)
        raw = self._signing.private_bytes_raw() + self._agreement.private_bytes_raw()
        sealed = AESGCM(_derive(passphrase, salt, kdf)).encrypt(nonce, raw, _SEALED_AAD + header)
        body = base64.encodebytes(header + sealed)
        return b"-----BEGIN %s-----\n%s-----END %s-----\n" % (_SEALED_LABEL, body, _SEALED_LABEL)

    @classmethod
    def from_private_bytes(
        cls, data: bytes | bytearray | memoryview, passphrase: bytes | None
    ) -> NodeKeys:
        """Parse a key file (also the legacy PBKDF2 form); ``ConfigError`` if it cannot."""
        if passphrase is not None:
            _check_passphrase(passphrase)
        data = bytes(data)
        form = key_file_format(data)
        if form != "clear" and passphrase is None:
            raise ConfigError("passphrase", "the key file is encrypted: a passphrase is required")
        if form == "clear" and passphrase is not None:
            raise ConfigError("passphrase", "the key file is not encrypted: pass passphrase=None")
        if form == "scrypt":
            assert passphrase is not None
            return cls._unseal(data, passphrase)
        return cls._from_pkcs8(data, passphrase)

    @classmethod
    def _unseal(cls, data: bytes, passphrase: bytes) -> NodeKeys:
        header, sealed = _sealed_parts(data)
        params = ScryptParams.of_key_file(data)
        params.check()  # before any memory is spent on it
        salt, nonce = _HEADER.unpack(header)[5:]
        try:
            raw = AESGCM(_derive(passphrase, salt, params)).decrypt(
                nonce, sealed, _SEALED_AAD + header
            )
        except InvalidTag:
            raise ConfigError(
                "passphrase", "wrong passphrase, or the key file is corrupt"
            ) from None
        return cls(
            ed25519.Ed25519PrivateKey.from_private_bytes(raw[:KEY_SIZE]),
            x25519.X25519PrivateKey.from_private_bytes(raw[KEY_SIZE:]),
        )

    @classmethod
    def _from_pkcs8(cls, data: bytes, passphrase: bytes | None) -> NodeKeys:
        keys = []
        for match in _PEM_BLOCK.finditer(data):
            try:
                keys.append(serialization.load_pem_private_key(match.group(0), passphrase))
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
        """Raw X25519 shared secret, cached; ``ValueError`` for a low-order peer key."""
        with self._lock:
            shared = self._shared.get(peer_agreement)
            if shared is not None:
                self._shared.move_to_end(peer_agreement)
                return shared
        peer = x25519.X25519PublicKey.from_public_bytes(peer_agreement)
        shared = self._agreement.exchange(peer)  # raises before anything is cached
        if self._cache_size:
            with self._lock:
                self._shared[bytes(peer_agreement)] = shared
                while len(self._shared) > self._cache_size:
                    self._shared.popitem(last=False)
        return shared


def key_file_format(data: bytes | bytearray | memoryview) -> KeyFileFormat:
    """Which form a key file is in; ``ConfigError`` if it is no node key file at all."""
    labels = [m.group(1) for m in _PEM_BLOCK.finditer(bytes(data))]
    if labels == [_SEALED_LABEL]:
        return "scrypt"
    if len(labels) != 2 or any(label not in (_PLAIN_LABEL, _ENCRYPTED_LABEL) for label in labels):
        raise ConfigError("key file", "not a Tessera node key file")
    if len(set(labels)) != 1:
        raise ConfigError("key file", "one key is encrypted and the other is not")
    return "clear" if labels[0] == _PLAIN_LABEL else "pbkdf2"


def _sealed_parts(data: bytes) -> tuple[bytes, bytes]:
    """A sealed file's header and ciphertext (with its tag)."""
    match = _PEM_BLOCK.search(data)
    if key_file_format(data) != "scrypt" or match is None:
        raise ConfigError("key file", "not a passphrase-sealed Tessera key file")
    body = match.group(0).split(b"\n", 1)[1].rsplit(b"-----END", 1)[0]
    try:
        raw = base64.b64decode(b"".join(body.split()), validate=True)
    except binascii.Error:
        raise ConfigError("key file", "corrupt sealed key file (not base64)") from None
    if len(raw) != _HEADER.size + 2 * KEY_SIZE + _TAG_SIZE:
        raise ConfigError("key file", "corrupt sealed key file (wrong size)")
    version, kdf = raw[0], raw[1]
    if version != _SEALED_VERSION or kdf != _KDF_SCRYPT:
        raise ConfigError("key file", f"unsupported key file version {version} or KDF {kdf}")
    return raw[: _HEADER.size], raw[_HEADER.size :]


def _derive(passphrase: bytes, salt: bytes, params: ScryptParams) -> bytes:
    """The AES-256-GCM key of a passphrase: scrypt, memory-hard against offline guessing."""
    return Scrypt(salt=salt, length=32, n=params.n, r=params.r, p=params.p).derive(passphrase)


def _check_passphrase(passphrase: bytes) -> None:
    if not isinstance(passphrase, bytes) or not passphrase:
        raise ConfigError("passphrase", "must be non-empty bytes, or None for no encryption")

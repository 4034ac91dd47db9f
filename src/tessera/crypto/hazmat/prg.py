"""Seed -> words expansion with AES-256-CTR (hazmat: see the package warning).

Theory of operation
-------------------
A 32-byte seed is an AES-256 key. The keystream is AES-256 in counter mode
from the all-zero 16-byte initial counter block, i.e. the encryption of a
zero buffer; it is read as little-endian unsigned words of the ring's width
(8, 16, 32 or 64 bits: every keystream bit is uniform, so words of any of
these widths are uniform modulo ``2**bits``). The zero nonce is
safe only because every seed is fresh (drawn from the OS CSPRNG by the
caller) and expanded exactly once, so no (key, counter) pair ever encrypts
twice; a seed must therefore never be reused, nor expanded to two different
lengths or word types for two different purposes (the shorter keystream is a
prefix of the longer one, and a uint64 word is two uint32 words, or four
uint16 words).

AES-CTR is a PRF-based PRG: without the seed, its output is computationally
indistinguishable from uniform words. The 128-bit counter cannot wrap within
the 2**64 blocks a vector could ever need.

Speed: the keystream is produced by OpenSSL (AES-NI) straight into the numpy
output buffer in chunks of ``_CHUNK`` bytes, reading from one shared immutable
zero buffer; Python only loops over chunks, never over words.
``add_expansion`` / ``subtract_expansion`` fold the keystream into an existing
vector chunk by chunk, so they need one cache-sized scratch buffer instead of
a vector-sized temporary. ``Keystream`` folds one seed's expansion into a
vector that arrives in pieces (a vector made chunk by chunk): folding its
pieces in order equals folding the whole.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

__all__ = ["SEED_SIZE", "Keystream", "add_expansion", "expand", "subtract_expansion"]

SEED_SIZE = 32
"""Bytes in a seed: one AES-256 key."""

_ZERO_NONCE = bytes(16)
_CHUNK = 1 << 18  # 256 KiB: large enough to amortise the call, small enough to stay in L2
_ZEROS = bytes(_CHUNK)

Words = npt.NDArray[np.unsignedinteger[Any]]
WordType = type[np.unsignedinteger[Any]]
_WORDS = (np.uint8, np.uint16, np.uint32, np.uint64)


def _keystream(seed: bytes) -> CipherContext:
    if not isinstance(seed, bytes | bytearray):
        raise TypeError(f"seed must be bytes, not {type(seed).__name__}")
    if len(seed) != SEED_SIZE:
        raise ValueError(f"seed must be exactly {SEED_SIZE} bytes, got {len(seed)}")
    return Cipher(algorithms.AES256(bytes(seed)), modes.CTR(_ZERO_NONCE)).encryptor()


def _check_dtype(dtype: object) -> np.dtype[np.unsignedinteger[Any]]:
    for word in _WORDS:
        if dtype is word:
            return np.dtype(word)
    raise ValueError(f"dtype must be numpy.uint32 or numpy.uint64 (or uint8/16), got {dtype!r}")


def _check_count(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise TypeError(f"n must be an int, not {type(n).__name__}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return int(n)


def expand(seed: bytes, n: int, dtype: WordType) -> Words:
    """Return ``n`` words of ``dtype`` from the AES-256-CTR keystream keyed by ``seed``.

    Deterministic: the same (seed, n, dtype) always gives the same words, and
    a shorter expansion is a prefix of a longer one. Raises ``ValueError``
    unless ``seed`` is exactly 32 bytes, ``n >= 0`` and ``dtype`` is
    ``numpy.uint8``, ``uint16``, ``uint32`` or ``uint64``.
    """
    cipher = _keystream(seed)
    count = _check_count(n)
    dt = _check_dtype(dtype)
    out = np.empty(count, dtype=dt.newbyteorder("<"))
    raw = out.data.cast("B")
    total = raw.nbytes
    for start in range(0, total, _CHUNK):
        stop = min(start + _CHUNK, total)
        cipher.update_into(_ZEROS[: stop - start], raw[start:stop])
    return out.astype(dt, copy=False)  # a no-op on little-endian hosts


class Keystream:
    """One seed's expansion, folded into consecutive pieces of a vector as they come.

    ``subtract_from(a); subtract_from(b)`` leaves ``a`` and ``b`` as
    ``subtract_expansion`` leaves their concatenation: the keystream goes on
    where the last piece ended. The pieces must share one word type."""

    __slots__ = ("_cipher", "_dtype", "_raw", "_scratch")

    def __init__(self, seed: bytes, dtype: WordType) -> None:
        self._cipher = _keystream(seed)
        self._dtype = _check_dtype(dtype)
        self._scratch = np.empty(
            _CHUNK // self._dtype.itemsize, dtype=self._dtype.newbyteorder("<")
        )
        self._raw = self._scratch.data.cast("B")

    def add_to(self, acc: Words) -> None:
        """``acc +=`` the next ``len(acc)`` words of the expansion, modulo 2**bits."""
        self._fold(acc, np.add)

    def subtract_from(self, acc: Words) -> None:
        """``acc -=`` the next ``len(acc)`` words of the expansion, modulo 2**bits."""
        self._fold(acc, np.subtract)

    def _fold(self, acc: Words, op: np.ufunc) -> None:
        if not isinstance(acc, np.ndarray) or acc.ndim != 1:
            raise ValueError("acc must be a one-dimensional numpy array")
        if _check_dtype(acc.dtype.type) != self._dtype:
            raise ValueError(f"acc must have dtype {self._dtype}, got {acc.dtype}")
        if not acc.flags.c_contiguous or not acc.flags.writeable:
            raise ValueError("acc must be C-contiguous and writeable")
        size = self._dtype.itemsize
        per_chunk = self._scratch.shape[0]
        for start in range(0, acc.shape[0], per_chunk):
            stop = min(start + per_chunk, acc.shape[0])
            m = stop - start
            self._cipher.update_into(_ZEROS[: m * size], self._raw[: m * size])
            part = acc[start:stop]
            op(part, self._scratch[:m], out=part, casting="unsafe")


def _fold(seed: bytes, acc: Words, *, negate: bool) -> None:
    if not isinstance(acc, np.ndarray) or acc.ndim != 1:
        raise ValueError("acc must be a one-dimensional numpy array")
    stream = Keystream(seed, _check_dtype(acc.dtype.type).type)
    if negate:
        stream.subtract_from(acc)
    else:
        stream.add_to(acc)


def add_expansion(seed: bytes, acc: Words) -> None:
    """``acc += expand(seed, len(acc), acc.dtype)`` modulo 2**bits, in place, chunk by chunk."""
    _fold(seed, acc, negate=False)


def subtract_expansion(seed: bytes, acc: Words) -> None:
    """``acc -= expand(seed, len(acc), acc.dtype)`` modulo 2**bits, in place, chunk by chunk."""
    _fold(seed, acc, negate=True)

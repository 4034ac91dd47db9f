"""Fixed-point encoding of real-valued updates into the ring Z_2^bits.

Theory of operation
-------------------
Secure aggregation adds vectors modulo ``2**bits``; ``bits`` is a machine word
(8, 16, 32 or 64), so the reduction is numpy's own unsigned wraparound and
costs nothing. A real ``v`` becomes the integer ``round(v * 2**frac_bits)`` stored in
two's complement; a word decodes as its signed value times ``step =
2**-frac_bits``.

A ``Ring`` also records ``terms``, how many encodings it is sized to add up.
Its per-term ``bound`` is the largest magnitude ``encode`` accepts:
``terms * bound * 2**frac_bits`` fits the signed range ``[-2**(bits-1),
2**(bits-1) - 1]``, so a sum of at most ``terms`` encodings never overflows
and decodes exactly to the sum of the encoded integers. ``choose_ring`` picks
the smallest word that can do this for a given clipping bound and spends every
spare bit on precision: by default among 32 and 64 bits, which at the default
16 fractional bits is the smallest that can hold anything; ``quantized_ring``
asks for fewer fractional bits (``q``-bit words per term, ``[secure]
precision``) and so may get a 16- or 8-bit word: ``terms`` terms of ``q`` bits
need ``q + ceil(log2 terms)`` bits (``q`` counts the sign), and the word is the
narrowest of 8/16/32/64 that holds them; the spare bits of that word are again
spent on precision, as they cost no bytes.

Rounding is stochastic and unbiased: ``v * 2**f = i + r`` with integer ``i``
and ``0 <= r < 1`` encodes as ``i + 1`` with probability exactly ``r`` and as
``i`` otherwise. So ``E[decode(encode(v))] = v`` and each term is off by less
than one ``step``: ``|decode(sum of encodings) - true sum| < terms * step``
(``max_error``), plus the float64 rounding of the decoded result itself
(relative 2**-53), which only matters for 64-bit sums beyond 2**53 steps.

The coin is tossed a byte at a time, without floating-point rounding anywhere:
the first 8 bits of ``r`` (an integer ``q`` in [0, 255]) are compared with a
uniform random byte ``k`` from the caller's generator; ``k < q`` rounds up,
``k > q`` rounds down, and only a tie (probability 1/256) goes on to compare
the next 8 bits of ``r`` with a fresh byte, and so on until they differ or
``r`` has no bits left. That is a comparison of ``r`` with a uniform real in
[0, 1) drawn to as many bits as needed, so ``P(up) = r`` exactly, for every
finite float32 or float64 value, the sub-2**-53 fractions of tiny values and
negative values just below an integer included (``floor(x + u)`` with a
uniform double ``u`` is biased for large ``x``; ``x - floor(x)`` is rounded in
float64 for some ``-1 < x < 0``; neither is computed). ``i`` and ``q`` come from
``floor(v * 2**(f + 8))`` with exact float64 operations (scaling by powers of
two, ``floor``, and subtractions of integers whose difference is a small
integer). ``encode`` takes about ``256/255`` random bytes per element from
the generator on average, as 64-bit words, rather than one double per element
as it once did: a seeded generator still gives a deterministic result, but
not the one it gave before.

The rounding randomness is neither masking randomness (``sharing``) nor
differential-privacy noise (``privacy``): it only makes quantisation unbiased.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

__all__ = [
    "WIDTHS",
    "Ring",
    "Words",
    "choose_ring",
    "decode",
    "encode",
    "max_error",
    "quantized_ring",
]

Words = npt.NDArray[np.unsignedinteger[Any]]
"""A vector of ring elements: ``numpy.uint8``, ``uint16``, ``uint32`` or ``uint64`` words."""

WIDTHS = (8, 16, 32, 64)
"""The ring widths: numpy's unsigned words."""
_UNSIGNED: dict[int, Any] = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}
_SIGNED: dict[int, Any] = {8: np.int8, 16: np.int16, 32: np.int32, 64: np.int64}

_CHUNK = 1 << 15  # elements per encode block: its two float64 scratch rows (512 KiB) stay in L2
_BYTE = 256.0  # encode resolves the rounding coin 8 bits at a time


def _is_int(x: object) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


@dataclass(frozen=True)
class Ring:
    """Z_2^bits with ``frac_bits`` fractional bits, sized to add up ``terms`` encodings."""

    bits: int
    frac_bits: int
    terms: int = 1

    def __post_init__(self) -> None:
        if not _is_int(self.bits) or self.bits not in WIDTHS:
            raise ValueError(f"Ring.bits must be 8, 16, 32 or 64, got {self.bits!r}")
        if not _is_int(self.frac_bits) or not 0 <= self.frac_bits < self.bits:
            raise ValueError(
                f"Ring.frac_bits must be an int in [0, {self.bits - 1}], got {self.frac_bits!r}"
            )
        if not _is_int(self.terms) or not 1 <= self.terms < 2 ** (self.bits - 1):
            raise ValueError(
                f"Ring.terms must be an int in [1, 2**{self.bits - 1}), got {self.terms!r}"
            )

    @property
    def dtype(self) -> type[np.unsignedinteger[Any]]:
        """The unsigned word type holding one ring element."""
        word: type[np.unsignedinteger[Any]] = _UNSIGNED[self.bits]
        return word

    @property
    def modulus(self) -> int:
        """``2**bits``."""
        return 1 << self.bits

    @property
    def step(self) -> float:
        """The quantisation step ``2**-frac_bits``."""
        return math.ldexp(1.0, -self.frac_bits)

    @property
    def bound(self) -> float:
        """The largest ``|v|`` that ``encode`` accepts: ``terms`` such values cannot overflow."""
        return math.ldexp(_float_at_most(self._word_limit), -self.frac_bits)

    @property
    def _word_limit(self) -> int:
        """Largest encoded magnitude per term: ``floor((2**(bits-1) - 1) / terms)``."""
        return ((1 << (self.bits - 1)) - 1) // self.terms

    @property
    def _signed(self) -> type[np.signedinteger[Any]]:
        word: type[np.signedinteger[Any]] = _SIGNED[self.bits]
        return word


def _as_words(a: npt.NDArray[Any]) -> Words:
    return a


def _float_at_most(n: int) -> float:
    """The largest float that is <= the integer ``n``."""
    f = float(n)
    return math.nextafter(f, -math.inf) if f > n else f


def choose_ring(
    *, bound: float, terms: int, min_frac_bits: int = 16, widths: tuple[int, ...] = (32, 64)
) -> Ring:
    """The smallest ring (of ``widths``: 32-bit, else 64-bit by default) in which ``terms``
    values with ``|v| <= bound`` always sum without overflow, with every spare bit given
    to ``frac_bits``.

    Raises ``ValueError`` if even the widest leaves fewer than ``min_frac_bits``
    fractional bits.
    """
    if isinstance(bound, bool) or not isinstance(bound, int | float | np.floating | np.integer):
        raise ValueError(f"bound must be a real number, got {bound!r}")
    try:
        as_float = float(bound)
    except OverflowError:
        as_float = math.inf
    if not (math.isfinite(as_float) and as_float > 0):
        raise ValueError(f"bound must be finite and > 0, got {bound!r}")
    if not _is_int(terms) or terms < 1:
        raise ValueError(f"terms must be an int >= 1, got {terms!r}")
    if not _is_int(min_frac_bits) or min_frac_bits < 0:
        raise ValueError(f"min_frac_bits must be an int >= 0, got {min_frac_bits!r}")
    if not widths or any(w not in WIDTHS for w in widths):
        raise ValueError(f"widths must be some of {WIDTHS}, got {widths!r}")
    exact = Fraction(as_float)
    for bits in sorted(widths):
        if terms >= 1 << (bits - 1):
            continue
        limit = ((1 << (bits - 1)) - 1) // terms
        # Largest f in [0, bits - 1] with bound * 2**f <= limit; the per-term
        # encodings are then at most ceil(bound * 2**f) <= limit in magnitude.
        for frac_bits in range(bits - 1, min_frac_bits - 1, -1):
            if exact * (1 << frac_bits) <= limit:
                return Ring(bits=bits, frac_bits=frac_bits, terms=int(terms))
    worst = terms * math.ceil(exact * (1 << min_frac_bits))
    raise ValueError(
        f"no ring of at most {max(widths)} bits can sum {terms} values with |v| <= {bound} "
        f"at {min_frac_bits} fractional bits (it would need {worst.bit_length() + 1} bits); "
        "lower the clipping bound, the number of terms, or min_frac_bits"
    )


def quantized_ring(*, bound: float, terms: int, precision: int) -> Ring:
    """The narrowest ring (8, 16, 32 or 64 bits) in which ``terms`` values with
    ``|v| <= bound``, each quantised to a ``precision``-bit signed word, sum without
    overflow; spare bits of that word go to precision as in ``choose_ring``.

    ``frac_bits`` is at least the largest ``f`` with ``bound * 2**f <= 2**(precision-1)
    - 1``, so the ring needs ``precision + ceil(log2 terms)`` bits at most. Raises
    ``ValueError`` if ``precision`` is not an int in [2, 63] or leaves ``bound`` no
    fractional bit (``bound > 2**(precision-1) - 1``).
    """
    if not _is_int(precision) or not 2 <= precision <= 63:
        raise ValueError(f"precision must be an int in [2, 63], got {precision!r}")
    top = (1 << (precision - 1)) - 1
    if isinstance(bound, bool) or not isinstance(bound, int | float | np.floating | np.integer):
        raise ValueError(f"bound must be a real number, got {bound!r}")
    if not (math.isfinite(float(bound)) and bound > 0):
        raise ValueError(f"bound must be finite and > 0, got {bound!r}")
    exact = Fraction(float(bound))
    if exact > top:
        raise ValueError(
            f"{precision}-bit words cannot hold |v| <= {bound} (at most {top}): raise precision"
        )
    frac_bits = 0
    while exact * (1 << (frac_bits + 1)) <= top:
        frac_bits += 1
    return choose_ring(bound=bound, terms=terms, min_frac_bits=frac_bits, widths=WIDTHS)


def encode(values: npt.NDArray[np.floating[Any]], ring: Ring, rng: np.random.Generator) -> Words:
    """Quantise ``values`` into ``ring`` words with unbiased stochastic rounding.

    Each element rounds up with probability exactly its fractional part (in
    steps); the coin uses random bytes from ``rng``, about ``256/255`` per
    element (see the module docstring), so a seeded generator gives a
    deterministic result. Raises ``ValueError`` for a non-float array, a
    non-finite value, or ``|v| > ring.bound``, before drawing anything from
    ``rng``. The result has the shape of ``values`` and dtype ``ring.dtype``.
    """
    if not isinstance(ring, Ring):
        raise TypeError(f"ring must be a Ring, not {type(ring).__name__}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, not {type(rng).__name__}")
    if not isinstance(values, np.ndarray) or values.dtype.type not in (np.float32, np.float64):
        got = values.dtype if isinstance(values, np.ndarray) else type(values).__name__
        raise ValueError(f"values must be a float32 or float64 numpy array, got {got}")
    flat = values.reshape(-1)
    n = flat.shape[0]
    out: npt.NDArray[Any] = np.empty(n, dtype=ring._signed)
    if n == 0:
        return _as_words(out.view(ring.dtype).reshape(values.shape))
    # z = v * 2**(f + 8) = x * 256 for x = v * 2**f; exact (a power of two, no overflow).
    fine = math.ldexp(1.0, ring.frac_bits + 8)
    limit = ring.bound
    first = np.empty(n, dtype=np.uint8)  # q: the first 8 bits of frac(x)
    size = min(_CHUNK, n)
    scratch = np.empty((2, size), dtype=np.float64)
    for start in range(0, n, size):
        stop = min(start + size, n)
        z, whole = scratch[0, : stop - start], scratch[1, : stop - start]
        v = flat[start:stop]
        # NaN fails both comparisons; all checked before anything is drawn from rng
        if not (-limit <= float(np.min(v)) and float(np.max(v)) <= limit):
            _refuse(flat, ring)
        np.multiply(v, fine, out=z, dtype=np.float64)
        np.floor(z, out=z)  # floor(x * 256)
        np.multiply(z, 1.0 / _BYTE, out=z)  # floor(x * 256) / 256, exact
        np.floor(z, out=whole)  # floor(x), exact
        np.subtract(z, whole, out=z)  # q / 256: exact, a multiple of 1/256 in [0, 1)
        np.multiply(z, _BYTE, out=z)  # q, an integer in [0, 255]
        np.copyto(first[start:stop], z, casting="unsafe")  # exact
        np.copyto(out[start:stop], whole, casting="unsafe")  # exact: |floor(x)| <= word limit
    draws = _random_bytes(rng, n)
    up = np.less(draws, first)
    ties = np.flatnonzero(np.equal(draws, first))  # about n / 256 of them
    if ties.shape[0]:  # round up with probability frac(x * 256), from the next bits on
        up[ties] = _round_up(flat[ties].astype(np.float64) * fine, rng)
    np.add(out, up, out=out, casting="unsafe")  # exact: rounds up only to ceil(x) <= word limit
    return _as_words(out.view(ring.dtype).reshape(values.shape))


def _refuse(flat: npt.NDArray[np.floating[Any]], ring: Ring) -> NoReturn:
    if not bool(np.all(np.isfinite(flat))):
        raise ValueError("values must be finite (found NaN or infinity)")
    lo, hi, limit = float(np.min(flat)), float(np.max(flat)), ring.bound
    raise ValueError(
        f"values must satisfy |v| <= {limit} for this ring "
        f"({ring.bits} bits, {ring.frac_bits} fractional, {ring.terms} terms); "
        f"got min {lo}, max {hi}: clip the update first"
    )


def _random_bytes(rng: np.random.Generator, n: int) -> npt.NDArray[np.uint8]:
    """``n`` independent uniform bytes: full 64-bit words from ``rng``, split up."""
    words = rng.integers(0, 1 << 64, size=-(-n // 8), dtype=np.uint64)
    return words.view(np.uint8)[:n]


def _round_up(z: npt.NDArray[np.float64], rng: np.random.Generator) -> npt.NDArray[np.bool_]:
    """Independent coins, each True with probability exactly ``frac(z) = z - floor(z)``.

    The byte-at-a-time comparison of ``encode``, for the few elements that tied
    on the bits before: ``q = floor(frac(z) * 256)`` is computed as
    ``floor(256 z) - 256 floor(z)``, exact, and against a random byte ``k``,
    ``k < q`` is up, ``k > q`` down, ``k == q`` goes on with ``256 z``. An
    element stops as soon as its remaining fraction is zero (down), so the
    loop ends after at most 135 rounds (float64 holds no bits below 2**-1074),
    and on average after 256/255 of one.
    """
    up = np.zeros(z.shape[0], dtype=np.bool_)
    live = np.flatnonzero(z != np.floor(z))  # a zero fraction never rounds up
    z = z[live]
    while live.shape[0]:
        z = z * _BYTE  # exact: z has a fractional part, so |z| < 2**52
        whole = np.floor(z)
        q = whole - np.floor(whole / _BYTE) * _BYTE  # exact: an integer in [0, 255]
        k = _random_bytes(rng, live.shape[0])
        up[live] = k < q
        more = (k == q) & (z != whole)
        live, z = live[more], z[more]
    return up


def decode(words: Words, ring: Ring) -> npt.NDArray[np.float64]:
    """Read ``ring`` words as signed fixed-point numbers (the nearest float64)."""
    if not isinstance(ring, Ring):
        raise TypeError(f"ring must be a Ring, not {type(ring).__name__}")
    if not isinstance(words, np.ndarray) or words.dtype != np.dtype(ring.dtype):
        got = words.dtype if isinstance(words, np.ndarray) else type(words).__name__
        raise ValueError(f"words must be a numpy array of {np.dtype(ring.dtype)}, got {got}")
    out = words.view(ring._signed).astype(np.float64)
    out *= ring.step
    return out


def max_error(ring: Ring, terms: int) -> float:
    """Bound on ``|decode(sum of terms encodings) - true sum|``: ``terms * step``.

    Each stochastic rounding is off by less than one step. The bound is on the
    exact ring value; the float64 that ``decode`` returns adds at most half an
    ulp of the result.
    """
    if not isinstance(ring, Ring):
        raise TypeError(f"ring must be a Ring, not {type(ring).__name__}")
    if not _is_int(terms) or terms < 0:
        raise ValueError(f"terms must be an int >= 0, got {terms!r}")
    return int(terms) * ring.step

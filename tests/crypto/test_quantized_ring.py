"""Reduced-precision secure aggregation (``[secure] precision``): q-bit stochastic words in
the narrowest ring that cannot overflow, summed exactly through the shares."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.crypto.fixedpoint import WIDTHS, Ring, choose_ring, decode, encode, quantized_ring
from tessera.crypto.hazmat import prg
from tessera.crypto.sharing import ShareAccumulator, combine, split


def _old_choose_ring(bound: float, terms: int, min_frac_bits: int = 16) -> Ring | None:
    """``choose_ring`` as it was before narrow rings (32, else 64 bits): the default."""
    exact = Fraction(bound)
    for bits in (32, 64):
        limit = ((1 << (bits - 1)) - 1) // terms
        for frac_bits in range(bits - 1, min_frac_bits - 1, -1):
            if exact * (1 << frac_bits) <= limit:
                return Ring(bits=bits, frac_bits=frac_bits, terms=terms)
    return None


@settings(max_examples=200, deadline=None)
@given(
    bound=st.floats(1e-3, 1e6),
    terms=st.integers(1, 10**7),
    min_frac_bits=st.sampled_from([0, 8, 16, 24]),
)
def test_the_default_ring_is_unchanged(bound: float, terms: int, min_frac_bits: int) -> None:
    """Without ``precision`` a job gets the ring it got before, bit for bit."""
    before = _old_choose_ring(bound, terms, min_frac_bits)
    if before is None:
        with pytest.raises(ValueError, match="no ring"):
            choose_ring(bound=bound, terms=terms, min_frac_bits=min_frac_bits)
    else:
        assert choose_ring(bound=bound, terms=terms, min_frac_bits=min_frac_bits) == before


def _q_frac_bits(bound: float, precision: int) -> int:
    """The fraction bits of a ``precision``-bit word holding ``|v| <= bound``."""
    return math.floor(math.log2(((1 << (precision - 1)) - 1) / bound))


@pytest.mark.parametrize(
    ("bound", "terms", "precision", "bits"),
    [
        (10.0, 30, 8, 16),  # digits: 30 contributors, clip 10
        (5.0, 434, 7, 16),  # Chem97: 434 schools, clip 5
        (5.0, 434, 8, 32),  # 8 + 9 bits: past 16
        (1.0, 4, 6, 8),  # 6 + 2 bits
        (1.0, 1000, 16, 32),
        (1.0, 2**20, 20, 64),
    ],
)
def test_the_ring_is_the_narrowest_that_holds_the_worst_case(
    bound: float, terms: int, precision: int, bits: int
) -> None:
    ring = quantized_ring(bound=bound, terms=terms, precision=precision)
    assert ring.bits == bits and ring.terms == terms
    f = _q_frac_bits(bound, precision)
    assert ring.frac_bits >= f  # at least the asked precision; spare bits spent on it
    worst = terms * math.ceil(bound * 2**ring.frac_bits)  # every term at the clip bound
    assert worst <= 2 ** (bits - 1) - 1
    for narrower in (w for w in WIDTHS if w < bits):  # cannot overflow only from ``bits`` up
        assert terms * math.ceil(bound * 2**f) > 2 ** (narrower - 1) - 1


@pytest.mark.parametrize("precision", [1, 64, 8.0, True])
def test_precision_out_of_range_is_refused(precision: object) -> None:
    with pytest.raises(ValueError, match="precision"):
        quantized_ring(bound=1.0, terms=2, precision=precision)  # type: ignore[arg-type]


def test_a_bound_that_no_q_bit_word_holds_is_refused() -> None:
    with pytest.raises(ValueError, match="raise precision"):
        quantized_ring(bound=200.0, terms=2, precision=8)


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize(("terms", "precision"), [(30, 8), (256, 8), (4, 6), (255, 2)])
def test_every_contributor_at_the_clip_bound_does_not_overflow(
    sign: float, terms: int, precision: int
) -> None:
    bound = 0.75
    ring = quantized_ring(bound=bound, terms=terms, precision=precision)
    rng = np.random.default_rng(terms)
    k = 3
    accs = [ShareAccumulator(2, ring) for _ in range(k)]
    exact = 0
    for i in range(terms):
        words = encode(np.array([sign * bound, sign * bound]), ring, rng)
        exact += int(words.view(ring._signed)[0])
        for j, part in enumerate(split(words, k, full_position=i % k, ring=ring)):
            accs[j].add(part)
    total = combine([a.value for a in accs], ring)
    assert int(total.view(ring._signed)[0]) == exact  # no wraparound
    assert abs(exact) <= 2 ** (ring.bits - 1) - 1
    assert abs(decode(total, ring)[0] - sign * bound * terms) <= terms * ring.step


@settings(max_examples=60, deadline=None)
@given(
    terms=st.integers(1, 40),
    precision=st.integers(3, 12),
    k=st.integers(2, 4),
    n=st.integers(0, 50),
    seed=st.integers(0, 2**32 - 1),
)
def test_quantized_secure_sum_is_the_plaintext_quantized_sum(
    terms: int, precision: int, k: int, n: int, seed: int
) -> None:
    bound = 2.0
    ring = quantized_ring(bound=bound, terms=terms, precision=precision)
    rng = np.random.default_rng(seed)
    coins = random.Random(seed)
    accs = [ShareAccumulator(n, ring) for _ in range(k)]
    plain = np.zeros(n, dtype=np.int64)
    for i in range(terms):
        words = encode(rng.uniform(-bound, bound, size=n), ring, rng)
        plain += words.view(ring._signed).astype(np.int64)  # the quantized values, as ints
        shares = split(words, k, full_position=i % k, ring=ring, random_bytes=coins.randbytes)
        for j, part in enumerate(shares):
            accs[j].add(part)
    total = combine([a.value for a in accs], ring)
    assert total.dtype == ring.dtype
    assert np.array_equal(total.view(ring._signed).astype(np.int64), plain)
    assert np.array_equal(decode(total, ring), plain * ring.step)


@pytest.mark.parametrize("value", [0.3, -1.17, 9.99])
def test_stochastic_quantization_is_unbiased(value: float) -> None:
    ring = quantized_ring(bound=10.0, terms=30, precision=8)  # a step of 1/64
    draws = 200_000
    decoded = decode(encode(np.full(draws, value), ring, np.random.default_rng(1)), ring)
    assert set(np.unique(decoded)) <= {
        math.floor(value / ring.step) * ring.step,
        math.ceil(value / ring.step) * ring.step,
    }
    frac = value / ring.step - math.floor(value / ring.step)
    sigma = ring.step * math.sqrt(frac * (1 - frac) / draws)
    assert abs(decoded.mean() - value) <= 5 * sigma


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_narrow_prg_words_are_the_keystream_read_at_their_width(dtype: type) -> None:
    seed = bytes(range(32))
    wide = prg.expand(seed, 16, np.uint64)
    narrow = prg.expand(seed, 16 * 8 // np.dtype(dtype).itemsize, dtype)  # type: ignore[arg-type]
    assert narrow.tobytes() == wide.tobytes()  # little-endian: the same bytes
    acc = np.zeros(1000, dtype=dtype)
    stream = prg.Keystream(seed, dtype)  # type: ignore[arg-type]
    stream.add_to(acc[:300])
    stream.add_to(acc[300:])
    assert np.array_equal(acc, prg.expand(seed, 1000, dtype))  # type: ignore[arg-type]

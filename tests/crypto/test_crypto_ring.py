"""Fixed-point rings: sizing, encoding, decoding and unbiased stochastic rounding."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tessera.crypto import Ring, choose_ring, decode, encode, max_error

FAST = settings(max_examples=80, deadline=None)
RINGS = [Ring(bits=32, frac_bits=16), Ring(bits=64, frac_bits=40, terms=1000)]


def float_at_most(bound: float, dtype: type[np.float32] | type[np.float64]) -> float:
    """The largest ``dtype`` value that is <= ``bound``, as a Python float."""
    limit = dtype(bound)
    if float(limit) > bound:  # a float, not a weak scalar cast down to dtype
        limit = np.nextafter(limit, dtype(0))
    return float(limit)


def _signed(word: int, bits: int) -> int:
    return word - (1 << bits) if word >= 1 << (bits - 1) else word


def _wrapped_sum(word: int, copies: int, bits: int) -> int:
    """``copies`` additions of ``word`` in Z_2^bits, read back as a signed integer."""
    return _signed((word * copies) % (1 << bits), bits)


# -- Ring ------------------------------------------------------------------


def test_ring_properties() -> None:
    r32 = Ring(bits=32, frac_bits=16)
    assert r32.dtype is np.uint32 and r32.modulus == 2**32 and r32.step == 2**-16
    assert r32.terms == 1 and r32.bound == (2**31 - 1) * 2**-16
    r64 = Ring(bits=64, frac_bits=20, terms=3)
    assert r64.dtype is np.uint64 and r64.modulus == 2**64 and r64.step == 2**-20
    assert Fraction(r64.bound) <= Fraction((2**63 - 1) // 3, 2**20)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bits": 24, "frac_bits": 8},
        {"bits": 16, "frac_bits": 16},
        {"bits": 128, "frac_bits": 8},
        {"bits": 32, "frac_bits": 32},
        {"bits": 32, "frac_bits": -1},
        {"bits": 32, "frac_bits": 8, "terms": 0},
        {"bits": 32, "frac_bits": 8, "terms": 2**31},
        {"bits": True, "frac_bits": 8},
        {"bits": 32, "frac_bits": 1.5},
    ],
)
def test_ring_rejects_bad_parameters(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="Ring"):
        Ring(**kwargs)


# -- choose_ring -----------------------------------------------------------


def test_choose_ring_prefers_32_bits_and_spends_spare_bits_on_precision() -> None:
    # 1000 * 1.0 * 2**21 < 2**31 <= 1000 * 1.0 * 2**22
    assert choose_ring(bound=1.0, terms=1000) == Ring(bits=32, frac_bits=21, terms=1000)
    # 10**6 terms of 10**3 need 30 integer bits + sign: 32 bits leave 1 fractional bit < 16
    assert choose_ring(bound=1e3, terms=10**6) == Ring(bits=64, frac_bits=33, terms=10**6)
    assert choose_ring(bound=1e3, terms=10**6, min_frac_bits=1).bits == 32


def test_choose_ring_refuses_what_64_bits_cannot_hold() -> None:
    with pytest.raises(ValueError, match=r"no ring of at most 64 bits.*clipping bound"):
        choose_ring(bound=1e9, terms=10**9, min_frac_bits=16)
    with pytest.raises(ValueError, match="no ring"):
        choose_ring(bound=1.0, terms=1, min_frac_bits=64)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bound": 0.0, "terms": 1},
        {"bound": -1.0, "terms": 1},
        {"bound": math.nan, "terms": 1},
        {"bound": math.inf, "terms": 1},
        {"bound": 10**400, "terms": 1},
        {"bound": True, "terms": 1},
        {"bound": 1.0, "terms": 0},
        {"bound": 1.0, "terms": 2.0},
        {"bound": 1.0, "terms": 1, "min_frac_bits": -1},
    ],
)
def test_choose_ring_rejects_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"bound|terms|min_frac_bits"):
        choose_ring(**kwargs)


@FAST
@given(
    bound=st.floats(min_value=1e-9, max_value=1e12),
    terms=st.one_of(st.integers(1, 5000), st.integers(1, 10**15)),
    min_frac_bits=st.integers(0, 48),
    seed=st.integers(0, 2**32 - 1),
)
def test_choose_ring_never_overflows_at_its_bound(
    bound: float, terms: int, min_frac_bits: int, seed: int
) -> None:
    need = Fraction(bound)
    try:
        ring = choose_ring(bound=bound, terms=terms, min_frac_bits=min_frac_bits)
    except ValueError:
        # only when even 64 bits cannot hold terms * bound at min_frac_bits
        assert terms * math.ceil(need * 2**min_frac_bits) > 2**63 - 1
        return
    bits, f = ring.bits, ring.frac_bits
    top = 2 ** (bits - 1) - 1
    assert ring.terms == terms and f >= min_frac_bits and ring.bound >= bound
    assert terms * math.ceil(need * 2**f) <= top  # the worst rounding still fits
    assert f == bits - 1 or terms * math.ceil(need * 2 ** (f + 1)) > top  # no bit wasted
    if bits == 64:  # 32 bits would not do
        assert min_frac_bits > 31 or terms * math.ceil(need * 2**min_frac_bits) > 2**31 - 1
    # The extremes +-bound, summed terms times in the ring, come back as +-terms * bound.
    words = encode(np.array([bound, -bound]), ring, np.random.default_rng(seed))
    for word, sign in zip(words.tolist(), (1, -1), strict=True):
        total = _wrapped_sum(int(word), terms, bits)
        assert total == terms * _signed(int(word), bits)  # no wraparound happened
        exact_error = Fraction(total, 2**f) - sign * terms * need
        assert abs(exact_error) < terms * Fraction(ring.step)
    if terms <= 5000:  # and the same with real numpy wraparound arithmetic
        summed = np.full(terms, words[0], dtype=ring.dtype).sum(dtype=ring.dtype)
        got = decode(np.array([summed], dtype=ring.dtype), ring)[0]
        tolerance = max_error(ring, terms) + 4 * np.finfo(np.float64).eps * terms * bound
        assert abs(got - terms * bound) <= tolerance


# -- encode / decode ---------------------------------------------------------


@st.composite
def ring_and_values(draw: st.DrawFn) -> tuple[Ring, np.ndarray]:
    ring = draw(
        st.builds(
            choose_ring,
            bound=st.sampled_from([1e-3, 0.5, 1.0, 37.25, 1e4]),
            terms=st.integers(1, 10**6),
            min_frac_bits=st.sampled_from([0, 8, 16, 24]),
        )
    )
    dtype = np.float32 if draw(st.booleans()) else np.float64
    limit = float_at_most(ring.bound, dtype)
    elements = st.floats(-limit, limit, width=32 if dtype is np.float32 else 64)
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=20))
    return ring, draw(hnp.arrays(dtype, shape, elements=elements))


@FAST
@given(rv=ring_and_values(), seed=st.integers(0, 2**32 - 1))
def test_round_trip_within_one_step(rv: tuple[Ring, np.ndarray], seed: int) -> None:
    ring, values = rv
    words = encode(values, ring, np.random.default_rng(seed))
    assert words.dtype == ring.dtype and words.shape == values.shape
    back = decode(words, ring)
    assert back.dtype == np.float64 and back.shape == values.shape
    err = np.abs(back - values.astype(np.float64))
    assert np.all(err < ring.step + 4 * np.finfo(np.float64).eps * np.abs(back))
    assert max_error(ring, 1) == ring.step


@pytest.mark.parametrize("ring", RINGS, ids=["r32", "r64"])
def test_exact_grid_values_encode_exactly(ring: Ring) -> None:
    values = np.array([0.0, ring.step, -ring.step, 3 * ring.step, -1024 * ring.step, 0.5, -0.5])
    words = encode(values, ring, np.random.default_rng(0))
    np.testing.assert_array_equal(decode(words, ring), values)
    assert words[2] == ring.modulus - 1  # two's complement of -1


@pytest.mark.parametrize("ring", RINGS, ids=["r32", "r64"])
@pytest.mark.parametrize("steps", [0.3, -0.3, 5.3, -1234.7])
def test_stochastic_rounding_is_unbiased(ring: Ring, steps: float) -> None:
    m = 200_000
    value = steps * ring.step
    words = encode(np.full(m, value), ring, np.random.default_rng(12345))
    decoded = decode(words, ring)
    p = steps - math.floor(steps)
    assert set(np.unique(decoded)) == {math.floor(steps) * ring.step, math.ceil(steps) * ring.step}
    std_error = ring.step * math.sqrt(p * (1 - p) / m)
    assert abs(decoded.mean() - value) < 5 * std_error
    # deterministic rounding would be off by at least min(p, 1 - p) steps: far outside
    assert min(p, 1 - p) * ring.step > 50 * std_error


def test_stochastic_rounding_is_exact_where_float_addition_is_not() -> None:
    # x = 2**50 + 0.25 steps: floor(x + u) in float64 has 2**-2 resolution left and is
    # biased; the i + (u < r) form rounds up with probability exactly 0.25.
    ring = Ring(bits=64, frac_bits=8)
    m = 200_000
    value = (2**50 + 0.25) * ring.step
    words = encode(np.full(m, value), ring, np.random.default_rng(7))
    ups = words.astype(object) - 2**50
    assert set(ups.tolist()) == {0, 1}
    rate = float(np.mean(ups.astype(np.float64)))
    assert abs(rate - 0.25) < 5 * math.sqrt(0.25 * 0.75 / m)


def _round_up_rate(
    value: float, dtype: type[np.floating[Any]], ring: Ring, m: int, rng: Any
) -> tuple[float, float]:
    """(observed rate of rounding up, exact probability it should have) for ``m`` encodings."""
    v = dtype(value)
    x = Fraction(float(v)) * 2**ring.frac_bits
    low = math.floor(x)
    words = encode(np.full(m, v, dtype=dtype), ring, rng)
    ups = words.view(ring._signed).astype(np.float64) - float(low)
    assert set(np.unique(ups).tolist()) <= {0.0, 1.0}
    return float(ups.mean()), float(x - low)


@settings(max_examples=40, deadline=None)
@given(
    ring=st.sampled_from([*RINGS, Ring(bits=32, frac_bits=0), Ring(bits=64, frac_bits=8)]),
    whole=st.integers(-(2**20), 2**20),
    frac=st.floats(0.02, 0.98),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_encode_is_unbiased_for_any_value(
    ring: Ring, whole: int, frac: float, dtype: type[np.floating[Any]], seed: int
) -> None:
    # Floor, round-to-nearest or any fixed rounding is off by at least min(p, 1 - p) >= ~0.02
    # in this rate, more than 25 standard errors: they all fail here.
    m = 40_000
    rate, p = _round_up_rate(
        (whole + frac) * ring.step, dtype, ring, m, np.random.default_rng(seed)
    )
    assert abs(rate - p) <= 6 * math.sqrt(p * (1 - p) / m) + 1e-12


@pytest.mark.parametrize(
    ("steps", "note"),
    [
        (2.0**-9, "rounds up only through a tie on the first byte"),
        (-(2.0**-9), "-1 < x < 0: 1 + x is never formed"),
        (2.0**-8 + 2.0**-12, "up on the first byte or through a tie"),
        (5 - 2.0**-10, "just below an integer"),
    ],
)
def test_stochastic_rounding_is_exact_beyond_the_first_random_byte(steps: float, note: str) -> None:
    ring = Ring(bits=32, frac_bits=4)
    m = 1_000_000
    rate, p = _round_up_rate(steps * ring.step, np.float64, ring, m, np.random.default_rng(11))
    assert abs(rate - p) <= 6 * math.sqrt(p * (1 - p) / m), note


def test_stochastic_rounding_with_another_bit_generator() -> None:
    ring = RINGS[0]
    m = 200_000
    rng = np.random.Generator(np.random.MT19937(5))  # 32-bit raw output underneath
    rate, p = _round_up_rate(7.3 * ring.step, np.float32, ring, m, rng)
    assert abs(rate - p) <= 6 * math.sqrt(p * (1 - p) / m)


def _replayed_encoding(values: np.ndarray, ring: Ring, seed: int) -> list[int]:
    """encode's documented coin in exact rationals, fed the same random bytes in the same order:
    the first fractional byte of every element against one byte each, then each tie's
    next byte against a fresh byte, tie by tie, round by round."""
    rng = np.random.default_rng(seed)

    def random_bytes(n: int) -> list[int]:
        words = rng.integers(0, 1 << 64, size=-(-n // 8), dtype=np.uint64)
        return words.view(np.uint8)[:n].tolist()

    xs = [Fraction(float(v)) * 2**ring.frac_bits for v in values.reshape(-1)]
    result = [math.floor(x) for x in xs]
    rest = [x - low for x, low in zip(xs, result, strict=True)]  # exact r in [0, 1)
    live = list(range(len(xs)))
    draws = random_bytes(len(live))
    while live:
        tied = []
        for i, k in zip(live, draws, strict=True):
            q = math.floor(rest[i] * 256)
            rest[i] = rest[i] * 256 - q
            if k < q:
                result[i] += 1
            elif k == q and rest[i] != 0:
                tied.append(i)
        live = tied
        draws = random_bytes(len(live)) if live else []
    return result


def test_encode_equals_its_exact_rational_reference() -> None:
    gen = np.random.default_rng(2024)
    edge = [5e-324, -5e-324, 2.0**-60, -(2.0**-60), -0.5 + 2.0**-60, 1 - 2.0**-53, -1 + 2.0**-53]
    for ring in (Ring(bits=32, frac_bits=0), RINGS[0], RINGS[1], Ring(bits=64, frac_bits=3)):
        # fractions with set bits at every depth, so that ties go several bytes deep
        deep = 2.0 ** -gen.integers(8, 60, size=400).astype(np.float64)
        steps = gen.integers(-50, 50, size=400) + gen.integers(0, 256, size=400) / 256 + deep
        values = np.concatenate([steps, edge]) * ring.step
        for dtype in (np.float64, np.float32):
            v = values.astype(dtype)
            for seed in range(3):
                got = encode(v, ring, np.random.default_rng(seed)).view(ring._signed)
                assert got.tolist() == _replayed_encoding(v, ring, seed)


@FAST
@given(
    data=st.data(),
    ring=st.sampled_from([*RINGS, Ring(bits=64, frac_bits=0), choose_ring(bound=3.0, terms=7)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_grid_values_encode_exactly_whatever_the_seed(
    data: st.DataObject, ring: Ring, seed: int
) -> None:
    limit = ring._word_limit
    ints = data.draw(st.lists(st.integers(-limit, limit), min_size=1, max_size=50))
    as_float = [math.ldexp(float(i), -ring.frac_bits) for i in ints]
    exact = [i for i, f in zip(ints, as_float, strict=True) if Fraction(f) * 2**ring.frac_bits == i]
    values = np.array([math.ldexp(float(i), -ring.frac_bits) for i in exact], np.float64)
    words = encode(values, ring, np.random.default_rng(seed))
    assert words.view(ring._signed).tolist() == exact
    small = [i for i in exact if abs(i) < 2**24]  # exact in float32 too
    v32 = np.array([math.ldexp(float(i), -ring.frac_bits) for i in small], np.float32)
    assert encode(v32, ring, np.random.default_rng(seed)).view(ring._signed).tolist() == small


@FAST
@given(
    where=st.floats(0, 1, exclude_max=True),
    bad=st.sampled_from(["nan", "inf", "-inf", "above", "below"]),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_encode_refuses_bad_values_anywhere_before_drawing(
    where: float, bad: str, dtype: type[np.floating[Any]]
) -> None:
    from tessera.crypto import fixedpoint

    ring = choose_ring(bound=2.0, terms=10)
    n = 2 * fixedpoint._CHUNK + 17  # several encode blocks
    values = np.linspace(-ring.bound, ring.bound, n).astype(dtype)
    values = np.clip(values, -float_at_most(ring.bound, dtype), float_at_most(ring.bound, dtype))
    beyond = float(np.nextafter(dtype(float_at_most(ring.bound, dtype)), dtype(np.inf)))
    values[int(where * n)] = {
        "nan": math.nan,
        "inf": math.inf,
        "-inf": -math.inf,
        "above": beyond,
        "below": -beyond,
    }[bad]
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    with pytest.raises(ValueError, match="finite" if bad in ("nan", "inf", "-inf") else "clip"):
        encode(values, ring, rng)
    assert rng.bit_generator.state == before  # nothing was drawn


def test_encode_is_deterministic_given_the_generator() -> None:
    ring = RINGS[0]
    values = np.linspace(-3, 3, 100_001)
    a = encode(values, ring, np.random.default_rng(3))
    b = encode(values, ring, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)


def test_encode_accepts_the_bound_and_refuses_beyond_it() -> None:
    ring = choose_ring(bound=2.0, terms=10)
    encode(np.array([ring.bound, -ring.bound]), ring, np.random.default_rng(0))
    beyond = np.nextafter(ring.bound, math.inf)
    for bad in (beyond, -beyond, 1e300):
        with pytest.raises(ValueError, match="clip the update"):
            encode(np.array([0.0, bad]), ring, np.random.default_rng(0))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_encode_refuses_non_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        encode(np.array([1.0, bad], np.float32), RINGS[0], np.random.default_rng(0))


def test_encode_and_decode_refuse_wrong_types() -> None:
    rng = np.random.default_rng(0)
    ring = RINGS[0]
    with pytest.raises(ValueError, match="float32 or float64"):
        encode(np.arange(3), ring, rng)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="float32 or float64"):
        encode([0.5], ring, rng)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Generator"):
        encode(np.zeros(3), ring, np.random.RandomState(0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Ring"):
        encode(np.zeros(3), (32, 16), rng)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Ring"):
        decode(np.zeros(3, np.uint32), (32, 16))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Ring"):
        max_error((32, 16), 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="uint32"):
        decode(np.zeros(3, np.uint64), ring)
    with pytest.raises(ValueError, match="uint32"):
        decode(np.zeros(3, np.int32), ring)
    with pytest.raises(ValueError, match="terms"):
        max_error(ring, -1)
    empty = encode(np.zeros(0), ring, rng)
    assert empty.shape == (0,) and empty.dtype == np.uint32


def test_max_error() -> None:
    ring = Ring(bits=32, frac_bits=10, terms=7)
    assert max_error(ring, 7) == 7 / 1024 and max_error(ring, 0) == 0.0

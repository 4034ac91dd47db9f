"""The PRG and additive sharing: aggregation with dropouts, uniformity of shares, refusals."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tessera.crypto import (
    SEED_SIZE,
    FullShare,
    Ring,
    SeedShare,
    ShareAccumulator,
    choose_ring,
    combine,
    decode,
    encode,
    materialize,
    max_error,
    split,
)
from tessera.crypto.hazmat import prg

FAST = settings(max_examples=60, deadline=None)
RINGS = [Ring(bits=32, frac_bits=16, terms=64), Ring(bits=64, frac_bits=40, terms=64)]
RING_IDS = ["r32", "r64"]
EPS = float(np.finfo(np.float64).eps)


def float_at_most(bound: float, dtype: type[np.float32] | type[np.float64]) -> float:
    """The largest ``dtype`` value that is <= ``bound``, as a Python float."""
    limit = dtype(bound)
    if float(limit) > bound:  # a float, not a weak scalar cast down to dtype
        limit = np.nextafter(limit, dtype(0))
    return float(limit)


def seeded_bytes(seed: int) -> Callable[[int], bytes]:
    """A deterministic stand-in for os.urandom, for reproducible tests only."""
    return np.random.default_rng(seed).bytes


# -- PRG -------------------------------------------------------------------


def test_prg_known_answer() -> None:
    # AES-256 of the zero block under the zero key (FIPS-197 style value), read little-endian
    first = bytes.fromhex("dc95c078a2408989ad48a21492842087")
    np.testing.assert_array_equal(
        prg.expand(bytes(32), 4, np.uint32), np.frombuffer(first, "<u4").astype(np.uint32)
    )
    np.testing.assert_array_equal(
        prg.expand(bytes(32), 2, np.uint64), np.frombuffer(first, "<u8").astype(np.uint64)
    )


def test_prg_is_the_aes_ctr_keystream_from_a_zero_counter() -> None:
    seed = bytes(range(32))
    n = 300_000  # crosses several internal chunks, and not a multiple of one
    ecb = Cipher(algorithms.AES256(seed), modes.ECB()).encryptor()
    blocks = (n * 8 + 15) // 16
    counters = b"".join(i.to_bytes(16, "big") for i in range(blocks))
    stream = ecb.update(counters)[: n * 8]
    np.testing.assert_array_equal(prg.expand(seed, n, np.uint64), np.frombuffer(stream, "<u8"))
    np.testing.assert_array_equal(prg.expand(seed, 2 * n, np.uint32), np.frombuffer(stream, "<u4"))


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_prg_deterministic_prefix_and_folding(dtype: type[np.uint32] | type[np.uint64]) -> None:
    seed = seeded_bytes(1)(32)
    n = 200_003
    full = prg.expand(seed, n, dtype)
    assert full.dtype == dtype and full.shape == (n,) and full.flags.writeable
    np.testing.assert_array_equal(prg.expand(seed, n, dtype), full)
    np.testing.assert_array_equal(prg.expand(seed, 17, dtype), full[:17])
    assert prg.expand(seed, 0, dtype).shape == (0,)
    assert not np.array_equal(prg.expand(seeded_bytes(2)(32), n, dtype), full)
    start = prg.expand(bytes(32), n, dtype)
    acc = start.copy()
    prg.add_expansion(seed, acc)
    np.testing.assert_array_equal(acc, start + full)
    prg.subtract_expansion(seed, acc)
    np.testing.assert_array_equal(acc, start)


def test_prg_refuses_bad_arguments() -> None:
    for seed in (bytes(31), bytes(33), b""):
        with pytest.raises(ValueError, match="32 bytes"):
            prg.expand(seed, 4, np.uint32)
    with pytest.raises(TypeError, match="bytes"):
        prg.expand("x" * 32, 4, np.uint32)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 0"):
        prg.expand(bytes(32), -1, np.uint32)
    with pytest.raises(ValueError, match=r"uint32 or numpy\.uint64"):
        prg.expand(bytes(32), 4, np.int64)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one-dimensional"):
        prg.add_expansion(bytes(32), np.zeros((2, 2), np.uint32))
    with pytest.raises(ValueError, match="writeable"):
        prg.add_expansion(bytes(32), np.zeros(8, np.uint32)[::2])


# -- aggregation through shares ----------------------------------------------


@st.composite
def federations(draw: st.DrawFn) -> tuple[Ring, np.ndarray, list[bool], int, int]:
    n_contributors = draw(st.integers(1, 30))
    k = draw(st.integers(2, 6))
    bound = draw(st.sampled_from([1e-3, 1.0, 250.0, 1e5]))
    ring = choose_ring(
        bound=bound, terms=n_contributors, min_frac_bits=draw(st.sampled_from([8, 16, 40]))
    )
    dtype = np.float32 if draw(st.booleans()) else np.float64
    limit = float_at_most(bound, dtype)
    elements = st.floats(-limit, limit, width=32 if dtype is np.float32 else 64)
    n = draw(st.integers(1, 40))
    updates = draw(hnp.arrays(dtype, (n_contributors, n), elements=elements))
    alive = draw(st.lists(st.booleans(), min_size=n_contributors, max_size=n_contributors))
    return ring, updates, alive, k, draw(st.integers(0, 2**32 - 1))


@FAST
@given(fed=federations())
def test_sum_of_surviving_contributors(fed: tuple[Ring, np.ndarray, list[bool], int, int]) -> None:
    ring, updates, alive, k, seed = fed
    n = updates.shape[1]
    rng = np.random.default_rng(seed)
    random_bytes = seeded_bytes(seed)
    aggregators = [ShareAccumulator(n, ring) for _ in range(k)]
    encoded_sum = np.zeros(n, ring.dtype)
    survivors = [i for i, ok in enumerate(alive) if ok]
    for i in range(len(alive)):
        words = encode(updates[i], ring, rng)
        shares = split(words, k, full_position=i % k, ring=ring, random_bytes=random_bytes)
        assert [isinstance(s, FullShare) for s in shares] == [j == i % k for j in range(k)]
        if i not in survivors:
            continue  # dropped out: its shares never arrive anywhere
        encoded_sum += words
        for aggregator, share in zip(aggregators, shares, strict=True):
            aggregator.add(share)
    assert all(a.count == len(survivors) for a in aggregators)
    total = combine([a.value for a in aggregators], ring)
    np.testing.assert_array_equal(total, encoded_sum)  # exact in the ring
    got = decode(total, ring)
    want = np.array(
        [math.fsum(float(updates[i, c]) for i in survivors) for c in range(n)], np.float64
    )
    tolerance = max_error(ring, len(survivors)) + 4 * EPS * np.abs(want)
    assert np.all(np.abs(got - want) <= tolerance)


@pytest.mark.parametrize("ring", RINGS, ids=RING_IDS)
@pytest.mark.parametrize("k", [2, 3, 5])
def test_split_reconstructs_exactly_and_every_share_is_needed(ring: Ring, k: int) -> None:
    words = prg.expand(seeded_bytes(3)(32), 1000, ring.dtype)
    for p in range(k):
        shares = split(words, k, full_position=p, ring=ring)
        parts = [materialize(s, words.shape[0], ring) for s in shares]
        np.testing.assert_array_equal(combine(parts, ring), words)
        for missing in range(k):
            rest = parts[:missing] + parts[missing + 1 :]
            assert not np.array_equal(combine(rest, ring), words)


def test_upload_is_one_vector_plus_seeds() -> None:
    ring = RINGS[0]
    words = prg.expand(bytes(32), 10_000, ring.dtype)
    shares = split(words, 6, full_position=4, ring=ring)
    full = [s for s in shares if isinstance(s, FullShare)]
    seeds = [s for s in shares if isinstance(s, SeedShare)]
    assert len(full) == 1 and full[0].words.nbytes == words.nbytes
    assert len(seeds) == 5 and all(len(s.seed) == SEED_SIZE == 32 for s in seeds)
    assert not full[0].words.flags.writeable
    assert len({s.seed for s in seeds}) == 5  # fresh seeds, not reused


def test_default_seeds_are_fresh_per_split() -> None:
    ring = RINGS[0]
    words = np.zeros(16, ring.dtype)
    a, b = split(words, 2, full_position=0, ring=ring), split(words, 2, full_position=0, ring=ring)
    assert isinstance(a[1], SeedShare) and isinstance(b[1], SeedShare)
    assert a[1].seed != b[1].seed
    assert isinstance(a[0], FullShare) and isinstance(b[0], FullShare)
    assert not np.array_equal(a[0].words, b[0].words)


def test_accumulator_wraps_modulo_the_ring() -> None:
    ring = RINGS[0]
    acc = ShareAccumulator(3, ring)
    big = np.full(3, 2**32 - 1, np.uint32)
    acc.add(FullShare(big))
    acc.add(FullShare(np.array([1, 2, 3], np.uint32)))
    np.testing.assert_array_equal(acc.value, [0, 1, 2])
    value = acc.value
    value[0] = 99  # a copy: the running sum is untouched
    np.testing.assert_array_equal(acc.value, [0, 1, 2])
    assert acc.count == 2 and "count=2" in repr(acc)


def test_secrets_stay_out_of_repr() -> None:
    shares = split(np.zeros(4, np.uint32), 3, full_position=0, ring=RINGS[0])
    seeds = [s.seed for s in shares if isinstance(s, SeedShare)]
    text = repr(shares) + str(shares) + repr(SeedShare(bytes(range(32))))
    assert "seed=" not in text
    for seed in [*seeds, bytes(range(32))]:
        assert seed.hex() not in text and repr(seed) not in text
    assert repr(FullShare(np.arange(4, dtype=np.uint32))) == "FullShare(<4 x uint32>)"


# -- uniformity: any k-1 shares look like uniform words ------------------------

# Two tests that a uniform word vector passes and a biased one fails:
# a chi-square test on the top byte (256 cells), and a z-test on every bit's frequency.
# Thresholds sit near 5 standard deviations; inputs are seeded, so the outcome is fixed.


def _chi2_critical(df: int, z: float) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile at a normal z-score."""
    c = 2 / (9 * df)
    return df * (1 - c + z * math.sqrt(c)) ** 3


def top_byte_chi2(words: np.ndarray, bits: int) -> float:
    counts = np.bincount((words >> (bits - 8)).astype(np.int64), minlength=256)
    expected = words.shape[0] / 256
    return float(np.sum((counts - expected) ** 2) / expected)


def worst_bit_z(words: np.ndarray) -> float:
    n = words.shape[0]
    bytes_ = words.astype(words.dtype.newbyteorder("<")).view(np.uint8).reshape(n, -1)
    ones = np.unpackbits(bytes_, axis=1, bitorder="little").sum(axis=0, dtype=np.int64)
    return float(np.max(np.abs(ones - n / 2)) / math.sqrt(n / 4))


def looks_uniform(words: np.ndarray, bits: int) -> bool:
    return top_byte_chi2(words, bits) < _chi2_critical(255, 5.0) and worst_bit_z(words) < 5.5


N_WORDS = 1 << 15


def _fixed_secret(ring: Ring) -> np.ndarray:
    """A structured, nonzero secret: a smooth 'model update' with small values."""
    values = 0.5 * np.sin(np.arange(N_WORDS) / 50.0) + 0.01
    return encode(values, ring, np.random.default_rng(0))


@pytest.mark.parametrize("ring", RINGS, ids=RING_IDS)
@pytest.mark.parametrize("k", [2, 3, 4])
def test_any_k_minus_1_shares_look_uniform(ring: Ring, k: int) -> None:
    secret = _fixed_secret(ring)
    assert not looks_uniform(secret, ring.bits)  # the secret itself is far from uniform
    shares = split(secret, k, full_position=k - 1, ring=ring, random_bytes=seeded_bytes(k))
    parts = [materialize(s, N_WORDS, ring) for s in shares]
    assert looks_uniform(parts[-1], ring.bits)  # the full share alone
    for subset in itertools.combinations(range(k), k - 1):
        seen = [parts[j] for j in subset]
        assert looks_uniform(np.concatenate(seen), ring.bits), subset  # each share
        assert looks_uniform(combine(seen, ring), ring.bits), subset  # and their sum
    # all k together are the secret: the same test sees through them at once
    assert not looks_uniform(combine(parts, ring), ring.bits)


@pytest.mark.parametrize("ring", RINGS, ids=RING_IDS)
def test_uniformity_test_rejects_biased_shares(ring: Ring) -> None:
    """Negative controls: the test above has the power to reject what a leaky share looks like."""
    rng = np.random.default_rng(99)
    uniform = prg.expand(seeded_bytes(5)(32), N_WORDS, ring.dtype)
    assert looks_uniform(uniform, ring.bits)
    secret = _fixed_secret(ring)
    # "model plus gaussian noise": DP noise is not masking
    noisy = 0.5 * np.sin(np.arange(N_WORDS) / 50.0) + rng.normal(0.0, 1.0, N_WORDS)
    assert not looks_uniform(encode(noisy, ring, rng), ring.bits)
    # words that never reach the top half of the ring
    half = uniform >> ring.dtype(1)
    assert top_byte_chi2(half, ring.bits) > _chi2_critical(255, 5.0)
    assert not looks_uniform(half, ring.bits)
    # one stuck low bit: the top byte is fine, the bit test is not
    stuck = uniform & ~ring.dtype(1)
    assert top_byte_chi2(stuck, ring.bits) < _chi2_critical(255, 5.0)
    assert not looks_uniform(stuck, ring.bits)
    # masking with a narrow mask (only the low 16 bits random)
    narrow = secret + (uniform & ring.dtype(0xFFFF))
    assert not looks_uniform(narrow, ring.bits)


# -- refusals ---------------------------------------------------------------


def test_split_refuses_bad_arguments() -> None:
    ring = RINGS[0]
    words = np.zeros(8, np.uint32)
    with pytest.raises(ValueError, match="k must be an int >= 2"):
        split(words, 1, full_position=0, ring=ring)
    with pytest.raises(ValueError, match="k must be"):
        split(words, True, full_position=0, ring=ring)
    for p in (-1, 3):
        with pytest.raises(ValueError, match="full_position must be in"):
            split(words, 3, full_position=p, ring=ring)
    with pytest.raises(ValueError, match="dtype uint32"):
        split(np.zeros(8, np.uint64), 3, full_position=0, ring=ring)
    with pytest.raises(ValueError, match="dtype uint32"):
        split(np.zeros(8, np.float32), 3, full_position=0, ring=ring)
    with pytest.raises(ValueError, match="one-dimensional"):
        split(np.zeros((2, 4), np.uint32), 3, full_position=0, ring=ring)
    with pytest.raises(ValueError, match="must return 32 bytes"):
        split(words, 3, full_position=0, ring=ring, random_bytes=lambda n: bytes(n - 1))


def test_shares_and_accumulators_refuse_mismatches() -> None:
    ring = RINGS[0]
    with pytest.raises(ValueError, match="32 bytes"):
        SeedShare(bytes(16))
    with pytest.raises(ValueError, match="one-dimensional uint32 or uint64"):
        FullShare(np.zeros(4, np.int32))
    with pytest.raises(ValueError, match="one-dimensional uint32 or uint64"):
        FullShare(np.zeros((2, 2), np.uint32))
    acc = ShareAccumulator(4, ring)
    with pytest.raises(ValueError, match="has 5 words, expected 4"):
        acc.add(FullShare(np.zeros(5, np.uint32)))
    with pytest.raises(ValueError, match="dtype uint32"):
        acc.add(FullShare(np.zeros(4, np.uint64)))
    with pytest.raises(TypeError, match="SeedShare or FullShare"):
        acc.add(np.zeros(4, np.uint32))  # type: ignore[arg-type]
    assert acc.count == 0  # refused shares are not counted
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        ShareAccumulator(-1, ring)
    with pytest.raises(ValueError, match="expected 3"):
        materialize(FullShare(np.zeros(4, np.uint32)), 3, ring)
    with pytest.raises(TypeError, match="SeedShare or FullShare"):
        materialize(b"x" * 32, 3, ring)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        combine([], ring)
    with pytest.raises(ValueError, match="non-empty"):
        combine(np.zeros((2, 4), np.uint32), ring)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"parts\[1\] has 3 words"):
        combine([np.zeros(4, np.uint32), np.zeros(3, np.uint32)], ring)
    view = materialize(FullShare(np.zeros(4, np.uint32)), 4, ring)
    assert not view.flags.writeable


def test_wrong_types_are_refused() -> None:
    ring = RINGS[0]
    words = np.zeros(4, np.uint32)
    not_a_ring: Any = (32, 16)
    with pytest.raises(TypeError, match="Ring"):
        split(words, 2, full_position=0, ring=not_a_ring)
    with pytest.raises(TypeError, match="Ring"):
        materialize(SeedShare(bytes(32)), 4, not_a_ring)
    with pytest.raises(TypeError, match="Ring"):
        ShareAccumulator(4, not_a_ring)
    with pytest.raises(ValueError, match="full_position must be an int"):
        split(words, 2, full_position=0.0, ring=ring)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="n must be an int"):
        prg.expand(bytes(32), 4.0, np.uint32)  # type: ignore[arg-type]

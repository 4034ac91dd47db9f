"""Additive secret sharing of ring vectors: the secure-aggregation recipe.

Theory of operation
-------------------
A contributor's update, already clipped, optionally noised and encoded into
the ring (``fixedpoint.encode``), is a vector ``x`` of ``n`` words of
Z_2^bits (``bits`` is 32 or 64, or 16 or 8 for a job with ``[secure] precision``:
``fixedpoint.quantized_ring``). ``split(x, k, full_position=p, ring=ring)`` draws ``k - 1`` fresh
32-byte seeds ``s_j`` from the OS CSPRNG and returns ``k`` shares whose sum
modulo ``2**bits`` is ``x``:

- position ``j != p``: ``SeedShare(s_j)``, standing for ``PRG(s_j)`` (AES-256-CTR,
  ``hazmat.prg``), 32 bytes on the wire;
- position ``p``: ``FullShare(x - sum_j PRG(s_j))``, ``n`` words on the wire.

So a contributor uploads one full vector plus ``k - 1`` seeds whatever ``k``
is; rotating ``p`` from contributor to contributor spreads the full-size
shares evenly over the ``k`` aggregators.

What each party sees. Aggregator ``j`` receives only share ``j`` (sealed for it
by the envelope recipe) and adds it, for every contributor in the agreed set,
into a ``ShareAccumulator``; a sum of ``j``-th shares is a ``j``-th share of the
sum, so parents accumulate partial sums the same way, and only ``combine`` of
all ``k`` root partial sums reveals the total. Any ``k - 1`` shares of one
contributor are uniform and independent of ``x``: if the missing share is the
full one, the others are seeds drawn independently of ``x``; if a seed share
``s_m`` is missing, the full share is ``x`` one-time-padded by ``PRG(s_m)``,
which its holder cannot predict. Hence no coalition of fewer than ``k``
aggregators of a group (nor the coordinator, which relays ciphertexts) can
tell an update from uniform noise, up to the security of AES as a PRF.
This holds at every ring width: a narrow ring's seed shares are its PRG words
(uniform modulo ``2**bits`` like the wide ones, ``hazmat.prg``) and its full
share is ``x`` padded by them modulo the same ``2**bits``, so a narrower ring
makes the shares shorter, never less uniform.

Rules the recipe relies on:

- Never split the same update twice. A replacement aggregator is re-fed with
  the *same* share; a fresh split of ``x`` whose shares mix with the old ones
  can hand a coalition of ``k`` holders the whole vector.
- A seed is a share: keep it secret (``SeedShare`` hides it from ``repr``)
  and keep it only until the round commits.
- Shares carry no integrity; the envelope recipe authenticates them.
- ``ring.terms`` must cover the number of contributors summed, or the total
  wraps around (``fixedpoint.choose_ring``).

Masking randomness is not differential-privacy noise. The seeds and shares
here are *masking randomness*: they cancel exactly in ``combine`` and protect
an individual update only from the aggregators; the released sum is exact.
*Differential-privacy noise* (``tessera.privacy``) is added to the update
before encoding, does not cancel, and is what protects individuals in the
released sum. Never derive one from the other: DP noise drawn from share seeds
would be known to aggregators, and a seeded numpy generator (fine for DP
sampling in simulation) is not a CSPRNG and must never make shares.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np

from tessera.crypto.fixedpoint import Ring, Words
from tessera.crypto.hazmat import prg

__all__ = [
    "SEED_SIZE",
    "FullShare",
    "SeedShare",
    "Share",
    "ShareAccumulator",
    "combine",
    "materialize",
    "split",
]

SEED_SIZE = prg.SEED_SIZE
"""Bytes in the seed of a ``SeedShare``."""

_WORD_DTYPES = tuple(np.dtype(w) for w in (np.uint8, np.uint16, np.uint32, np.uint64))


@dataclass(frozen=True)
class SeedShare:
    """A share given by its 32-byte PRG seed; secret, so never shown by ``repr``."""

    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.seed, bytes) or len(self.seed) != SEED_SIZE:
            raise ValueError(f"SeedShare.seed must be {SEED_SIZE} bytes")


@dataclass(frozen=True, eq=False)
class FullShare:
    """A share given word by word (the one position per contributor that carries the data)."""

    words: Words = field(repr=False)

    def __post_init__(self) -> None:
        w = self.words
        if not isinstance(w, np.ndarray) or w.ndim != 1 or w.dtype not in _WORD_DTYPES:
            raise ValueError(
                "FullShare.words must be a one-dimensional uint32 or uint64 array "
                "(uint8 or uint16 in a narrow ring)"
            )

    def __repr__(self) -> str:
        return f"FullShare(<{self.words.shape[0]} x {self.words.dtype}>)"


Share: TypeAlias = SeedShare | FullShare


def _check_words(words: object, ring: Ring, what: str, n: int | None = None) -> Words:
    if not isinstance(ring, Ring):
        raise TypeError(f"ring must be a Ring, not {type(ring).__name__}")
    if not isinstance(words, np.ndarray) or words.ndim != 1:
        raise ValueError(f"{what} must be a one-dimensional numpy array")
    if words.dtype != np.dtype(ring.dtype):
        raise ValueError(f"{what} must have dtype {np.dtype(ring.dtype)}, got {words.dtype}")
    if n is not None and words.shape[0] != n:
        raise ValueError(f"{what} has {words.shape[0]} words, expected {n}")
    return words


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    return int(n)


def split(
    words: Words,
    k: int,
    *,
    full_position: int,
    ring: Ring,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> list[Share]:
    """Split ``words`` into ``k >= 2`` additive shares; ``full_position`` gets the full one.

    ``random_bytes`` is the seed source; leave it as ``os.urandom`` except in
    tests. Every share is needed to rebuild ``words``; any ``k - 1`` of them
    are uniform and reveal nothing about it.
    """
    secret = _check_words(words, ring, "words")
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an int >= 2, got {k!r}")
    if isinstance(full_position, bool) or not isinstance(full_position, int):
        raise ValueError(f"full_position must be an int, got {full_position!r}")
    if not 0 <= full_position < k:
        raise ValueError(f"full_position must be in [0, {k}), got {full_position}")
    full = secret.copy(order="C")
    shares: list[Share] = []
    for position in range(k):
        if position == full_position:
            shares.append(FullShare(full))
            continue
        seed = random_bytes(SEED_SIZE)
        if not isinstance(seed, bytes) or len(seed) != SEED_SIZE:
            raise ValueError(f"random_bytes({SEED_SIZE}) must return {SEED_SIZE} bytes")
        prg.subtract_expansion(seed, full)
        shares.append(SeedShare(seed))
    full.flags.writeable = False
    return shares


def materialize(share: Share, n: int, ring: Ring) -> Words:
    """The ``n`` ring words that ``share`` stands for (read-only for a ``FullShare``)."""
    count = _check_n(n)
    if isinstance(share, SeedShare):
        if not isinstance(ring, Ring):
            raise TypeError(f"ring must be a Ring, not {type(ring).__name__}")
        return prg.expand(share.seed, count, ring.dtype)
    if isinstance(share, FullShare):
        view = _check_words(share.words, ring, "FullShare.words", count).view()
        view.flags.writeable = False
        return view
    raise TypeError(f"share must be a SeedShare or FullShare, not {type(share).__name__}")


class ShareAccumulator:
    """Running sum, modulo ``2**bits``, of one position's shares of ``n`` words each."""

    __slots__ = ("_acc", "_count", "_ring")

    def __init__(self, n: int, ring: Ring) -> None:
        if not isinstance(ring, Ring):
            raise TypeError(f"ring must be a Ring, not {type(ring).__name__}")
        self._ring = ring
        self._acc: Words = np.zeros(_check_n(n), dtype=ring.dtype)
        self._count = 0

    def add(self, share: Share) -> None:
        """Add one share in place; a seed share is expanded chunk by chunk, never whole."""
        if isinstance(share, SeedShare):
            prg.add_expansion(share.seed, self._acc)
        elif isinstance(share, FullShare):
            words = _check_words(share.words, self._ring, "FullShare.words", self._acc.shape[0])
            np.add(self._acc, words, out=self._acc)
        else:
            raise TypeError(f"share must be a SeedShare or FullShare, not {type(share).__name__}")
        self._count += 1

    @property
    def value(self) -> Words:
        """A copy of the sum so far."""
        return self._acc.copy()

    @property
    def count(self) -> int:
        """How many shares have been added."""
        return self._count

    def __repr__(self) -> str:
        n, ring = self._acc.shape[0], self._ring
        return f"ShareAccumulator(n={n}, ring={ring!r}, count={self._count})"


def combine(parts: Sequence[Words], ring: Ring) -> Words:
    """Sum ``parts`` (shares or partial sums, one per position) modulo ``2**bits``."""
    if isinstance(parts, np.ndarray) or not isinstance(parts, Sequence) or len(parts) == 0:
        raise ValueError("parts must be a non-empty sequence of word arrays")
    first = _check_words(parts[0], ring, "parts[0]")
    total = first.copy(order="C")
    for index, part in enumerate(parts[1:], start=1):
        np.add(total, _check_words(part, ring, f"parts[{index}]", total.shape[0]), out=total)
    return total

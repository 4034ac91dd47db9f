"""Cryptographic recipes: one obvious call each way, no algorithm choices.

The protocol layer imports from here and never from ``tessera.crypto.hazmat``.

Secure-aggregation arithmetic (``fixedpoint``, ``sharing``): ``choose_ring``
sizes a ring Z_2^bits for a clipping bound and a number of contributors;
``encode`` / ``decode`` move between floats and ring words with unbiased
stochastic rounding; ``split`` cuts an encoded update into ``k`` additive
shares (one full vector plus ``k - 1`` 32-byte seeds); aggregators sum one
position each in a ``ShareAccumulator``; ``combine`` adds the ``k`` partial
sums into the total.
"""

from tessera.crypto.fixedpoint import Ring, Words, choose_ring, decode, encode, max_error
from tessera.crypto.sharing import (
    SEED_SIZE,
    FullShare,
    SeedShare,
    Share,
    ShareAccumulator,
    combine,
    materialize,
    split,
)

__all__ = [
    "SEED_SIZE",
    "FullShare",
    "Ring",
    "SeedShare",
    "Share",
    "ShareAccumulator",
    "Words",
    "choose_ring",
    "combine",
    "decode",
    "encode",
    "materialize",
    "max_error",
    "split",
]

"""A contributor's heaviest step as a pure function: encode, split and seal one vector.

Theory of operation: between its local result and its ``Send``s, a secure
contributor turns one (clipped, weighted) vector into k sealed shares. That
step reads no machine state once its inputs are fixed, so it is written here
as ``ShareJob`` (the inputs) and ``share`` (the work), and the contributor
calls ``share`` itself. A runtime that has spare cores may do the same work
ahead, elsewhere (the simulator's process and Ray backends), and hand the
result in with the ``LocalUpdateReady`` event (``shared``): the contributor
takes it only if it was made for exactly the job it would run now, else it
does the work itself. So the result never depends on who did the work.

In pieces: the vector is encoded, masked and sealed ``CHUNK`` elements at a
time, straight into the full share's envelope (``Wire.send_stream``), so a
contributor holds its update, one envelope and a few small buffers, never
the words, the share and the payload beside them. The words do not depend
on the pieces: each ``BLOCK`` of elements has its own rounding (and noise)
generator, keyed by the node's key, job, round and the block's index
(``encode_words``), and each mask is one AES-CTR keystream read on where the
last piece stopped (``hazmat.prg.Keystream``). So a vector shared in any
whole number of blocks at a time gives the same words as shared at once.

What is random and where it comes from: the stochastic rounding and a
private job's noise are keyed by the node's own key, job and round
(``rounding_seed``, ``protocol.noise.noise_seed``), so any holder of the
node's keys rounds and noises the same vector to the same words; the masks
and the envelopes' nonces are fresh OS randomness, as in a
deployment. The masks cancel in the total, so the total (and the model) is
the same whoever did the work; the shares themselves never repeat.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tessera.crypto.envelope import Bytes
from tessera.crypto.fixedpoint import Ring, Words, encode
from tessera.crypto.hazmat.prg import Keystream
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.crypto.sharing import SEED_SIZE, SeedShare
from tessera.ids import NodeId
from tessera.protocol.codec import encode_share, full_share_prefix
from tessera.protocol.kinds import Kind
from tessera.protocol.messages import Sealed
from tessera.protocol.noise import PrivacyParams, contributor_noise, noise_seed, noisy
from tessera.protocol.wire import Wire

#: Elements whose rounding coins (and noise) one generator draws: the unit of pieces.
BLOCK = 1 << 16
#: Elements encoded, masked and sealed at a time (whole blocks; 1 MiB of 32-bit words).
CHUNK = 4 * BLOCK


def rounding_seed(keys: NodeKeys, job_id: str, round: int) -> int:
    """The seed of a contributor's stochastic rounding in ``round``: secret, repeatable."""
    context = b"rounding\x00" + job_id.encode() + b"\x00" + str(round).encode()
    return int.from_bytes(keys.draw(context), "big")


@dataclass(frozen=True, eq=False, slots=True)
class ShareJob:
    """Everything one contributor's sharing step needs besides its keys."""

    node: NodeId
    job_id: str
    round: int
    group: str
    aggregators: tuple[NodeId, ...]
    full_position: int
    ring: Ring
    vector: npt.NDArray[np.float64]
    privacy: PrivacyParams | None = None  # set: this node adds its share of the noise
    cohort: int = 0  # the public tree's contributors, for the noise share

    @property
    def length(self) -> int:
        return int(self.vector.shape[0])

    def same(self, other: ShareJob) -> bool:
        """Whether ``other`` asks for exactly this work (the vector bit for bit)."""
        return (
            self.node == other.node
            and self.job_id == other.job_id
            and self.round == other.round
            and self.group == other.group
            and self.aggregators == other.aggregators
            and self.full_position == other.full_position
            and self.ring == other.ring
            and self.privacy == other.privacy
            and self.cohort == other.cohort
            and self.vector.dtype == other.vector.dtype
            and np.array_equal(self.vector, other.vector)
        )


@dataclass(frozen=True, slots=True)
class SharedUpdate:
    """A ``ShareJob`` done: the k sealed shares, the j-th for ``job.aggregators[j]``.

    Only the ciphertext is kept: the contributor reads a share back from its own
    envelope to reseal it for a replacement (``crypto.envelope.reopen_sent``)."""

    job: ShareJob
    envelopes: tuple[bytes, ...]


def encode_words(job: ShareJob, keys: NodeKeys, start: int, stop: int) -> Words:
    """The ring words of ``job.vector[start:stop]`` (``start`` on a block boundary):
    rounded, plus a private job's noise share, block by block."""
    return _encode(job, _Coins.of(job, keys), start, stop)


@dataclass(frozen=True, slots=True)
class _Coins:
    """A contributor's rounding (and noise) seeds for one round, derived once."""

    rounding: int
    noise: int

    @classmethod
    def of(cls, job: ShareJob, keys: NodeKeys) -> _Coins:
        noise = noise_seed(keys, job.job_id, job.round) if job.privacy is not None else 0
        return cls(rounding_seed(keys, job.job_id, job.round), noise)


def _encode(job: ShareJob, coins: _Coins, start: int, stop: int) -> Words:
    if start % BLOCK:
        raise ValueError(f"start must be a multiple of {BLOCK}, got {start}")
    ring, privacy = job.ring, job.privacy
    out: Words = np.empty(stop - start, dtype=ring.dtype)
    for first in range(start, stop, BLOCK):
        last, block = min(first + BLOCK, stop), first // BLOCK
        words = encode(job.vector[first:last], ring, np.random.default_rng([coins.rounding, block]))
        if privacy is not None:
            rng = np.random.default_rng([coins.noise, block])
            words = noisy(words, ring, contributor_noise(privacy, job.cohort, rng, words.size))
        out[first - start : last - start] = words
    return out


def share(
    job: ShareJob,
    keys: NodeKeys,
    directory: Mapping[NodeId, PublicKeys],
    *,
    chunk: int = CHUNK,
) -> SharedUpdate:
    """Encode ``job.vector`` into the ring (plus a private job's noise share), split
    it into one share per aggregator, and seal each for its aggregator, ``chunk``
    elements at a time.

    The split is ``crypto.sharing.split``'s: fresh 32-byte seeds for every
    position but ``job.full_position``, whose share is the words less every
    seed's expansion."""
    if chunk < BLOCK or chunk % BLOCK:
        raise ValueError(f"chunk must be a positive multiple of {BLOCK}, got {chunk}")
    ring, n = job.ring, job.length
    seeds = {
        p: os.urandom(SEED_SIZE) for p in range(len(job.aggregators)) if p != job.full_position
    }
    wire = Wire(job.node, job.job_id, keys, directory)
    envelopes = []
    for position, aggregator in enumerate(job.aggregators):
        if position == job.full_position:
            prefix = full_share_prefix(job.group, position, ring, n)
            size = len(prefix) + n * np.dtype(ring.dtype).itemsize
            pieces = _full_share(job, keys, list(seeds.values()), prefix, chunk)
            sent = wire.send_stream(aggregator, Kind.SHARE, job.round, size, pieces).message
        else:
            payload = encode_share(job.group, position, ring, n, SeedShare(seeds[position]))
            sent = wire.send(aggregator, Kind.SHARE, job.round, payload, sealed=True).message
        assert isinstance(sent, Sealed)
        envelopes.append(sent.data)
    return SharedUpdate(job=job, envelopes=tuple(envelopes))


def _full_share(
    job: ShareJob, keys: NodeKeys, seeds: list[bytes], prefix: bytes, chunk: int
) -> Iterator[Bytes]:
    """The full share's payload, piece by piece: its prefix, then the words less every
    seed's expansion, ``chunk`` words at a time (little-endian)."""
    yield prefix
    masks = [Keystream(seed, job.ring.dtype) for seed in seeds]
    coins = _Coins.of(job, keys)  # one key derivation per share, not per piece
    for start in range(0, job.length, chunk):
        words = _encode(job, coins, start, min(start + chunk, job.length))
        for mask in masks:
            mask.subtract_from(words)
        yield words.astype(words.dtype.newbyteorder("<"), copy=False).view(np.uint8).data

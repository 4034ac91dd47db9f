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

What is random and where it comes from: the stochastic rounding and a
private job's noise are keyed by the node's own key, job and round
(``rounding_rng``, ``protocol.noise.noise_rng``), so any holder of the
node's keys rounds and noises the same vector to the same words; the masks
and the envelopes' nonces are fresh OS randomness, as in a
deployment. The masks cancel in the total, so the total (and the model) is
the same whoever did the work; the shares themselves never repeat.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tessera.crypto.fixedpoint import Ring, encode
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.crypto.sharing import split
from tessera.ids import NodeId
from tessera.protocol.codec import encode_share
from tessera.protocol.kinds import Kind
from tessera.protocol.messages import Sealed
from tessera.protocol.noise import PrivacyParams, contributor_noise, noise_rng, noisy
from tessera.protocol.wire import Wire


def rounding_rng(keys: NodeKeys, job_id: str, round: int) -> np.random.Generator:
    """The coins of a contributor's stochastic rounding in ``round``: secret, repeatable."""
    context = b"rounding\x00" + job_id.encode() + b"\x00" + str(round).encode()
    return np.random.default_rng(int.from_bytes(keys.draw(context), "big"))


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


def share(job: ShareJob, keys: NodeKeys, directory: Mapping[NodeId, PublicKeys]) -> SharedUpdate:
    """Encode ``job.vector`` into the ring (plus a private job's noise share), split
    it into one share per aggregator, and seal each for its aggregator."""
    ring = job.ring
    words = encode(job.vector, ring, rounding_rng(keys, job.job_id, job.round))
    if job.privacy is not None:
        rng = noise_rng(keys, job.job_id, job.round)
        words = noisy(words, ring, contributor_noise(job.privacy, job.cohort, rng, words.size))
    shares = split(words, len(job.aggregators), full_position=job.full_position, ring=ring)
    wire = Wire(job.node, job.job_id, keys, directory)
    envelopes = []
    for position, aggregator in enumerate(job.aggregators):
        payload = encode_share(job.group, position, ring, job.length, shares[position])
        sent = wire.send(aggregator, Kind.SHARE, job.round, payload, sealed=True).message
        assert isinstance(sent, Sealed)
        envelopes.append(sent.data)
    return SharedUpdate(job=job, envelopes=tuple(envelopes))

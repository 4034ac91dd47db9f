"""A contributor's update shared in pieces sums to what the whole vectors sum to, exactly.

``sharing_job.share`` encodes, masks and seals its full share a piece at a
time, straight into the envelope. These tests open what it sealed, as the
aggregators do (one running sum per position), and check that the total is,
word for word, the sum of the contributors' whole-vector encodings
(``encode_words`` over the whole vector in one call), whatever the pieces,
for public and private (noised) jobs. ``BLOCK`` is shrunk so that a few
hundred words make many blocks and pieces.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.crypto.envelope import open_envelope
from tessera.crypto.fixedpoint import (
    Ring,
    Words,
    choose_ring,
    decode,
    max_error,
    quantized_ring,
)
from tessera.crypto.keys import NodeKeys
from tessera.crypto.sharing import ShareAccumulator, combine
from tessera.ids import NodeId
from tessera.protocol import sharing_job
from tessera.protocol.codec import decode_share
from tessera.protocol.noise import PrivacyParams
from tessera.protocol.sharing_job import ShareJob, encode_words, share

SEATS = tuple(NodeId(f"seat-{j}") for j in range(4))
KEYS = {node: NodeKeys.from_seed(node.encode()) for node in SEATS}
BLOCK = 16


def _contributor(i: int) -> tuple[NodeId, NodeKeys]:
    node = NodeId(f"node-{i}")
    return node, NodeKeys.from_seed(node.encode())


def _job(i: int, vector: np.ndarray, ring: Ring, k: int, privacy: PrivacyParams | None) -> ShareJob:
    return ShareJob(
        node=_contributor(i)[0],
        job_id="chunks",
        round=4,
        group="L0",
        aggregators=SEATS[:k],
        full_position=i % k,
        ring=ring,
        vector=vector,
        privacy=privacy,
        cohort=8,
    )


def _aggregate(jobs: list[ShareJob], chunk: int) -> Words:
    """Share every job ``chunk`` words at a time; each seat opens and adds what it got;
    the seats' sums combined."""
    k, ring, n = len(jobs[0].aggregators), jobs[0].ring, jobs[0].length
    sums = [ShareAccumulator(n, ring) for _ in range(k)]
    for job in jobs:
        node, keys = _contributor(int(job.node.split("-")[1]))
        directory = {node: keys.public} | {s: KEYS[s].public for s in SEATS}
        done = share(job, keys, directory, chunk=chunk)
        for position, (seat, box) in enumerate(zip(job.aggregators, done.envelopes, strict=True)):
            opened = open_envelope(
                box,
                recipient_keys=KEYS[seat],
                directory=directory,
                expect_job="chunks",
                expect_round=4,
                expect_recipient=seat,
                max_bytes=1 << 24,
                replay=None,
            )
            payload = decode_share(opened.payload)
            assert payload.position == position and payload.length == n
            sums[position].add(payload.share)
    return combine([s.value for s in sums], ring)


def _whole(job: ShareJob) -> Words:
    _node, keys = _contributor(int(job.node.split("-")[1]))
    return encode_words(job, keys, 0, job.length)


def _privacy() -> PrivacyParams:
    return PrivacyParams(epsilon=1.0, delta=1e-5, variance=400.0, frac_bits=16, l1=1.0, l2=1.0)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 300),
    contributors=st.integers(1, 4),
    k=st.integers(2, 4),
    blocks=st.integers(1, 5),
    private=st.booleans(),
    data=st.data(),
)
def test_chunked_aggregation_equals_whole_vector_aggregation_exactly(
    n: int, contributors: int, k: int, blocks: int, private: bool, data: st.DataObject
) -> None:
    ring = choose_ring(bound=4.0, terms=8)
    vectors = [
        np.asarray(data.draw(st.lists(st.floats(-4, 4), min_size=n, max_size=n)), dtype=np.float64)
        for _ in range(contributors)
    ]
    privacy = _privacy() if private else None
    jobs = [_job(i, v, ring, k, privacy) for i, v in enumerate(vectors)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sharing_job, "BLOCK", BLOCK)
        expected = np.zeros(n, dtype=ring.dtype)
        for job in jobs:
            expected += _whole(job)  # unsigned words wrap modulo 2**bits, as shares add
        assert np.array_equal(_aggregate(jobs, chunk=blocks * BLOCK), expected)
        assert np.array_equal(_aggregate(jobs, chunk=BLOCK), expected)  # any other pieces
    if not private:  # and the words are the vectors' sum, to the rounding's bound
        total = np.sum(vectors, axis=0) if n else np.zeros(0)
        error = max_error(ring, contributors)
        assert np.all(np.abs(decode(expected, ring) - total) <= error)


def test_the_words_do_not_depend_on_the_block_a_piece_starts_at() -> None:
    """The words of a piece are those of the whole vector at its place (keyed per block),
    so a piece made on its own, elsewhere, fits in."""
    ring = choose_ring(bound=4.0, terms=8)
    vector = np.random.default_rng(0).uniform(-4, 4, size=5 * 65536 + 17)
    job = _job(0, vector, ring, 3, _privacy())
    whole = _whole(job)
    keys = _contributor(0)[1]
    piece = encode_words(job, keys, 2 * 65536, 4 * 65536)
    assert np.array_equal(piece, whole[2 * 65536 : 4 * 65536])
    with pytest.raises(ValueError, match="multiple of 65536"):
        encode_words(job, keys, 100, 200)


def test_a_chunk_that_is_not_whole_blocks_is_refused() -> None:
    ring = choose_ring(bound=4.0, terms=8)
    node, keys = _contributor(0)
    job = _job(0, np.zeros(10), ring, 2, None)
    with pytest.raises(ValueError, match="multiple of 65536"):
        share(job, keys, {node: keys.public} | {s: KEYS[s].public for s in SEATS}, chunk=1000)


@pytest.mark.parametrize("precision", [4, 8])
def test_a_narrow_ring_shares_in_pieces_exactly(precision: int) -> None:
    """``[secure] precision``'s 8- and 16-bit rings: shares of fewer bytes, the same sum."""
    ring = quantized_ring(bound=4.0, terms=3, precision=precision)
    assert ring.bits == (8 if precision == 4 else 16)
    rng = np.random.default_rng(precision)
    jobs = [_job(i, rng.uniform(-4, 4, size=100), ring, 3, None) for i in range(3)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sharing_job, "BLOCK", BLOCK)
        expected = np.zeros(100, dtype=ring.dtype)
        for job in jobs:
            expected += _whole(job)
        assert np.array_equal(_aggregate(jobs, chunk=3 * BLOCK), expected)
        assert np.array_equal(_aggregate(jobs, chunk=BLOCK), expected)
    total = np.sum([job.vector for job in jobs], axis=0)
    assert np.all(np.abs(decode(expected, ring) - total) <= max_error(ring, 3))

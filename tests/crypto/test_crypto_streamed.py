"""Payloads made piece by piece: ``envelope.seal_stream`` and ``prg.Keystream``.

A contributor seals its full share as it makes it, so the envelope must be the
one ``seal`` would have made of the whole payload, and a mask folded in pieces
the one folded at once, whatever the pieces.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.crypto.envelope import open_envelope, seal, seal_stream
from tessera.crypto.hazmat import prg
from tessera.crypto.keys import NodeKeys

ALICE = NodeKeys.from_seed(b"stream-alice")
BOB = NodeKeys.from_seed(b"stream-bob")
NONCE = bytes(range(12))


def _cuts(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (empty pieces included)."""
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)])]


def _sealed(payload: bytes, pieces: list[bytes] | None) -> bytes:
    common = {
        "kind": 7,
        "job_id": "job",
        "round": 2,
        "sender": "alice",
        "recipient": "bob",
        "sender_keys": ALICE,
        "recipient_public": BOB.public,
        "random_bytes": lambda n: NONCE[:n],
    }
    if pieces is None:
        return seal(payload=payload, **common)  # type: ignore[arg-type]
    return seal_stream(size=len(payload), chunks=pieces, **common)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=5000), cuts=st.lists(st.integers(0, 5000), max_size=8))
def test_a_streamed_envelope_is_the_one_seal_makes_of_the_whole_payload(
    payload: bytes, cuts: list[int]
) -> None:
    """Same nonce, same bytes: the ciphertext, the tag and the (deterministic) Ed25519
    signature do not depend on how the payload was cut."""
    streamed = _sealed(payload, _cuts(payload, cuts))
    assert streamed == _sealed(payload, None)
    opened = open_envelope(
        streamed,
        recipient_keys=BOB,
        sender_public=ALICE.public,
        expect_job="job",
        expect_round=2,
        expect_recipient="bob",
        max_bytes=1 << 20,
        replay=None,
    )
    assert opened.payload == payload


def test_pieces_that_do_not_add_up_to_the_announced_size_are_refused() -> None:
    with pytest.raises(ValueError, match="more than the 4 bytes"):
        seal_stream(
            kind=1, job_id="j", round=0, sender="a", recipient="b", size=4,
            chunks=[b"abc", b"de"], sender_keys=ALICE, recipient_public=BOB.public,
        )  # fmt: skip
    with pytest.raises(ValueError, match="hold 3 bytes, not the 4"):
        seal_stream(
            kind=1, job_id="j", round=0, sender="a", recipient="b", size=4,
            chunks=[b"abc"], sender_keys=ALICE, recipient_public=BOB.public,
        )  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 200_000),
    cuts=st.lists(st.integers(0, 200_000), max_size=6),
    wide=st.booleans(),
    seed=st.binary(min_size=32, max_size=32),
)
def test_a_keystream_folded_in_pieces_is_the_expansion_folded_at_once(
    n: int, cuts: list[int], wide: bool, seed: bytes
) -> None:
    dtype = np.uint64 if wide else np.uint32
    base = np.random.default_rng(n).integers(0, 2**32, size=n, dtype=np.uint64).astype(dtype)
    whole = base.copy()
    prg.subtract_expansion(seed, whole)
    pieces = base.copy()
    stream = prg.Keystream(seed, dtype)
    points = sorted({min(c, n) for c in cuts})
    for a, b in itertools.pairwise([0, *points, n]):
        stream.subtract_from(pieces[a:b])
    assert np.array_equal(pieces, whole)
    back = prg.Keystream(seed, dtype)
    back.add_to(pieces)
    assert np.array_equal(pieces, base)


def test_a_keystream_refuses_words_of_another_type() -> None:
    stream = prg.Keystream(bytes(32), np.uint32)
    with pytest.raises(ValueError, match="dtype"):
        stream.add_to(np.zeros(4, dtype=np.uint64))

"""The staleness weight of buffered rounds, and their fields' wire forms."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.ids import JobId
from tessera.protocol.buffering import staleness_weight
from tessera.protocol.control import decode_update, encode_update
from tessera.protocol.messages import UpdateSubmission


@given(st.integers(0, 10**6))
def test_the_staleness_weight_is_fedbuffs_polynomial_in_0_1(tau: int) -> None:
    s = staleness_weight(tau)
    assert 0 < s <= 1
    assert s == pytest.approx((1 + tau) ** -0.5)
    assert staleness_weight(tau + 1) < s


def test_a_fresh_update_weighs_exactly_one() -> None:
    assert staleness_weight(0) == 1.0
    with pytest.raises(ValueError, match="staleness"):
        staleness_weight(-1)


@given(st.integers(0, 50), st.integers(0, 50))
def test_an_update_round_trips_and_is_unchanged_on_the_wire_when_fresh(r: int, tau: int) -> None:
    tau = min(tau, r)
    fresh = UpdateSubmission(
        job_id=JobId("j"), round=r, delta=np.ones(3, np.float32), num_samples=2, loss=0.5
    )
    stale = UpdateSubmission(
        job_id=JobId("j"),
        round=r,
        delta=np.ones(3, np.float32),
        num_samples=2,
        loss=0.5,
        staleness=tau,
    )
    assert decode_update(encode_update(stale)).staleness == tau
    assert (encode_update(stale) == encode_update(fresh)) == (tau == 0)
    assert b"stale" not in encode_update(fresh)

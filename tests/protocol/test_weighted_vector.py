"""weighted_vector: what a contributor shares, before encoding."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tessera.protocol.contributor import weighted_vector

finite = st.floats(-50, 50, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    delta=arrays(np.float32, st.integers(1, 20_000), elements=finite),
    samples=st.integers(0, 300),
    loss=st.floats(-5, 100, allow_nan=False),
    clip=st.floats(0.01, 100),
)
def test_clipped_weighted_update_then_loss_then_capped_then_weight(
    delta, samples, loss, clip
) -> None:
    v = weighted_vector(delta, samples, loss, clip=clip, max_weight=100.0, loss_cap=20.0)
    w = min(samples, 100.0) / 100.0
    assert v.dtype == np.float64 and v.shape == (delta.shape[0] + 3,)
    assert v[-1] == w
    assert v[-3] == w * min(max(loss, 0.0), 20.0) / 20.0
    assert v[-2] == (1.0 if loss > 20.0 else 0.0)  # counted, not weighted: the cap hides none
    norm = float(np.linalg.norm(delta.astype(np.float64)))
    assert np.linalg.norm(v[:-3]) <= w * clip * (1 + 1e-9)  # never past the bound
    if norm <= clip:  # inside the bound: only weighted
        np.testing.assert_allclose(v[:-3], w * delta.astype(np.float64), rtol=1e-15, atol=0)
    else:  # outside: clipped to just under it, same direction
        scale = clip * (1 - 1e-9) / norm
        expected = w * delta.astype(np.float64) * scale
        np.testing.assert_allclose(v[:-3], expected, rtol=1e-9, atol=1e-12 * clip)

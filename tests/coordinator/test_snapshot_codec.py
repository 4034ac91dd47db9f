"""The driver's snapshot blob: a round trip, and a refusal for anything else."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import save

from tessera.coordinator.snapshots import (
    CorruptSnapshot,
    DriverState,
    decode_snapshot,
    encode_snapshot,
)
from tessera.ids import NodeId
from tessera.protocol.coordinator import CoordinatorSnapshot
from tessera.protocol.timers import Timer
from tessera.testing.strategies import timers

floats = st.floats(-(2.0**100), 2.0**100, width=32)


@given(
    weights=st.lists(floats, min_size=1, max_size=20),
    strategy=st.sampled_from([(), ("m", "v"), ("velocity",)]),
    round=st.integers(0, 10**6),
    opened_at=st.floats(0, 2e9),
    withdrawn=st.lists(st.text("abc-", min_size=1, max_size=5), max_size=4, unique=True),
    timers=st.lists(st.tuples(timers, st.floats(0, 2e9)), max_size=5),
    cursor=st.integers(0, 2**62),
    excluded=st.dictionaries(
        st.text("abc-", min_size=1, max_size=5),
        st.tuples(st.integers(0, 10**6), st.text(max_size=40)),
        max_size=3,
    ),
    ratings=st.dictionaries(st.text("abc-", min_size=1, max_size=5), st.floats(0.01, 1.0)),
)
def test_a_snapshot_reads_back_as_it_was_written(
    weights: list[float],
    strategy: tuple[str, ...],
    round: int,
    opened_at: float,
    withdrawn: list[str],
    timers: list[tuple[Timer, float]],
    cursor: int,
    excluded: dict[str, tuple[int, str]],
    ratings: dict[str, float],
) -> None:
    w = np.array(weights, np.float32)
    state = DriverState(
        machine=CoordinatorSnapshot(
            round=round,
            opened_at=opened_at,
            weights=w,
            strategy=dict.fromkeys(strategy, w * 2),
            withdrawn=tuple(NodeId(n) for n in sorted(withdrawn)),
            excluded={NodeId(n): v for n, v in excluded.items()},
            ratings={NodeId(n): v for n, v in ratings.items()},
        ),
        timers=timers,
        cursor=cursor,
    )
    back = decode_snapshot(encode_snapshot(state))
    assert np.array_equal(back.machine.weights, w)
    assert set(back.machine.strategy) == set(strategy)
    assert all(np.array_equal(back.machine.strategy[k], w * 2) for k in strategy)
    assert (back.machine.round, back.machine.opened_at) == (round, opened_at)
    assert back.machine.withdrawn == state.machine.withdrawn
    assert back.machine.excluded == excluded and back.machine.ratings == ratings
    assert list(back.timers) == timers and back.cursor == cursor


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a snapshot",
        save({"weights": np.zeros(3, np.float32)}),  # no meta
        save({"weights": np.zeros(3, np.float64), "meta": np.frombuffer(b"{}", np.uint8)}),
        save({"meta": np.frombuffer(b'{"format": "other/9"}', np.uint8)}),
    ],
)
def test_anything_else_is_refused_with_a_clear_error(data: bytes) -> None:
    with pytest.raises(CorruptSnapshot, match="snapshot"):
        decode_snapshot(data)

"""One RoundRecord everywhere: its JSON form round-trips, old rows load, bad rows are refused."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.jobs.records import RoundRecord

ids = st.lists(st.text(min_size=1, max_size=8), max_size=6).map(tuple)
numbers = st.floats(allow_infinity=False) | st.just(math.nan)
drawn: dict[str, st.SearchStrategy[object]] = {
    "round": st.integers(0, 10**6),
    "selected": st.integers(0, 10**5),
    "participants": st.integers(0, 10**5),
    "skipped": st.booleans(),
    "skip_reason": st.none() | st.text(max_size=40),
    "train_loss": numbers,
    "num_samples": st.integers(0, 10**9),
    "included": ids,
    "blamed": ids,
    "excluded": ids,
    "declined": ids,
    "closed_at": st.floats(0, 2e9),
    "weights": st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
    "group_sums": st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
    "bytes_up": st.integers(0, 2**40),
    "bytes_down": st.integers(0, 2**40),
    "bytes_aggregation": st.integers(0, 2**40),
    "value": numbers,
    "dropped": st.integers(0, 10**5),
    "late": st.integers(0, 10**5),
    "aggregators_failed": st.integers(0, 100),
    "capped": st.integers(0, 10**5),
    "seconds": st.floats(0, 1e6),
    "virtual_seconds": st.floats(0, 1e9),
    "virtual_round_seconds": st.floats(0, 1e6),
    "cpu_seconds": st.floats(0, 1e6),
    "coordinator_cpu_seconds": st.floats(0, 1e6),
    "rmse": numbers,
    "mae": numbers,
    "epsilon": numbers,
    "loss_before": numbers,
    "norm_ratio": numbers,
    "clipped": st.integers(0, 10**5),
    "labels": st.lists(st.floats(0, 1), max_size=12).map(tuple),
    "stragglers": st.integers(0, 10**5),
    "partial": st.integers(0, 10**5),
    "mean_steps": numbers,
    "staleness": st.lists(st.integers(0, 100), max_size=6).map(tuple),
    "tree_levels": st.lists(st.integers(0, 10**4), max_size=5).map(tuple),
    "tree_aggregators": st.integers(0, 10**5),
    "tree_backups": st.integers(0, 10**5),
    "tree_leaf_sizes": st.lists(st.integers(0, 100), max_size=8).map(tuple),
}
records = st.builds(RoundRecord, **drawn)


def test_the_strategy_draws_every_field() -> None:
    """A field added to RoundRecord must join the round trip below."""
    assert set(drawn) == {f.name for f in fields(RoundRecord)}


def same(a: RoundRecord, b: RoundRecord) -> bool:
    """Equal, NaN equal to NaN."""
    for f in fields(RoundRecord):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, float) and math.isnan(x):
            if not (isinstance(y, float) and math.isnan(y)):
                return False
        elif x != y:
            return False
    return True


@given(records)
def test_json_round_trip(record: RoundRecord) -> None:
    assert same(RoundRecord.from_json(record.to_json()), record)
    assert "included" not in record.to_json(with_included=False)


def test_a_row_written_before_the_record_was_typed_still_loads() -> None:
    """The coordinator's store kept this dict in earlier versions: it must read back."""
    old = {
        "round": 3,
        "selected": 20,
        "participants": 19,
        "included": ["node-a", "node-b"],
        "num_samples": 240,
        "train_loss": None,
        "skipped": False,
        "blamed": [],
        "closed_at": 1733300000.5,
        "bytes_up": 1000,
        "bytes_down": 2000,
        "bytes_aggregation": 300,
        "weights": "ab" * 32,
    }
    record = RoundRecord.from_json(old)
    assert (record.round, record.participants, record.included) == (3, 19, ("node-a", "node-b"))
    assert math.isnan(record.train_loss) and math.isnan(record.value)
    assert record.bytes_aggregation == 300 and record.weights == "ab" * 32


OK = {"round": 1, "selected": 1, "participants": 1, "skipped": False}


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"selected": 1, "participants": 1, "skipped": False}, "round"),
        ({"round": "1", "selected": 1, "participants": 1, "skipped": False}, "round"),
        ({"round": 1, "selected": 1, "participants": 1, "skipped": "no"}, "skipped"),
        (
            {"round": 1, "selected": 1, "participants": 1, "skipped": False, "included": "a"},
            "included",
        ),
        (
            {"round": 1, "selected": 1, "participants": 1, "skipped": False, "value": "high"},
            "value",
        ),
        ({"round": 1, "selected": True, "participants": 1, "skipped": False}, "selected"),
    ],
)
def test_a_bad_row_is_refused_naming_the_field(row: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RoundRecord.from_json(row)

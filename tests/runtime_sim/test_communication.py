"""Reduced encodings end to end: ``[secure] precision`` narrows the ring (fewer bytes up),
``[simulation] downlink = "delta"`` charges the compressed exact model delta (fewer
bytes down), and metrics.json's bytes per node say so; the defaults are unchanged."""

from __future__ import annotations

import dataclasses
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.config import parse_config
from tessera.errors import ConfigError, DataError
from tessera.ids import JobId, NodeId
from tessera.jobs.prepared import PreparedJob, prepare_job
from tessera.jobs.records import SimulationResult
from tessera.jobs.secure import summarize
from tessera.protocol.limits import TAIL
from tessera.protocol.messages import TrainRequest
from tessera.reports import build_metrics
from tessera.runtime.sim.downlink import Downlink
from tessera.runtime.sim.job import simulate
from tessera.weights import apply_delta, delta_bytes


def _raw(precision: int | None = None, downlink: str = "full") -> dict[str, object]:
    secure: dict[str, object] = {"k": 2, "group_size": 4, "phase_timeout": 30.0}
    if precision is not None:
        secure["precision"] = precision
    return {
        "job": {"name": "comms", "task": "classification", "seed": 6},
        "data": {"source": "sklearn", "dataset": "digits", "target": "target"},
        "partition": {"scheme": "iid", "nodes": 8},
        "model": {"kind": "linear"},
        "recipe": {"clip_norm": 10.0},
        "federation": {"rounds": 2, "round_timeout": 60.0},
        "simulation": {"downlink": downlink, "dropout": 0.1},
        "secure": secure,
        "baseline": {"enabled": False},
    }


@cache
def _job(precision: int | None = None, downlink: str = "full") -> PreparedJob:
    base = prepare_job(parse_config(_raw()))  # the data prepared once; only the config differs
    return dataclasses.replace(base, config=parse_config(_raw(precision, downlink)))


@cache
def _run(precision: int | None = None, downlink: str = "full") -> SimulationResult:
    return simulate(_job(precision, downlink), secure=True)


def test_the_defaults_are_full_words_and_full_models() -> None:
    cfg = _job().config
    assert cfg.secure.precision is None and cfg.simulation.downlink == "full"
    assert summarize(_job()).ring_bits == 32
    request = TrainRequest(job_id=JobId("j"), round=0, weights=np.ones(7, np.float32), deadline=1)
    assert Downlink().size(NodeId("n"), request) == request.nbytes


def test_precision_narrows_the_ring_and_the_upload_by_exactly_its_words() -> None:
    full, narrow = _run(), _run(precision=8)
    assert summarize(_job(precision=8)).ring_bits == 16  # 8 bits + 8 contributors' 3
    words = _job().layout.size + TAIL
    for a, b in zip(full.rounds, narrow.rounds, strict=True):
        assert a.participants == b.participants > 0
        saved = a.bytes_up / a.participants - b.bytes_up / b.participants
        assert saved == words * (4 - 2)  # each full share: 2 bytes a word, not 4
    assert narrow.rounds[-1].value > 0.5  # it still learns (0.1 is chance)


def test_a_delta_downlink_charges_less_and_trains_the_same_model() -> None:
    full, delta = _run(), _run(downlink="delta")
    np.testing.assert_array_equal(full.weights, delta.weights)  # bit for bit
    assert [r.bytes_up for r in full.rounds] == [r.bytes_up for r in delta.rounds]
    assert all(d.bytes_down < f.bytes_down for f, d in zip(full.rounds, delta.rounds, strict=True))
    metrics = build_metrics(_job(downlink="delta"), delta.rounds, None, status="finished")
    for entry, record in zip(metrics["rounds"], delta.rounds, strict=True):
        assert entry["bytes_down_per_contributor"] == record.bytes_down / record.selected
        assert entry["bytes_up_per_contributor"] == record.bytes_up / record.participants


def test_precision_is_refused_with_privacy() -> None:
    raw = _raw(precision=8)
    raw["privacy"] = {"epsilon": 3.0}
    with pytest.raises(ConfigError, match="precision"):
        parse_config(raw)


def _float32(bits: list[int]) -> np.ndarray:
    return np.array(bits, dtype=np.uint32).view(np.float32)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), n=st.integers(0, 200), base=st.booleans())
def test_the_downlink_delta_rebuilds_the_model_bit_for_bit(
    data: st.DataObject, n: int, base: bool
) -> None:
    words = st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n)  # NaNs, -0.0 and all
    new = _float32(data.draw(words))
    old = _float32(data.draw(words)) if base else None
    rebuilt = apply_delta(delta_bytes(new, old), old, n)
    assert rebuilt.dtype == np.float32 and rebuilt.tobytes() == new.tobytes()


def test_a_small_step_deflates_and_a_bad_delta_is_refused() -> None:
    old = np.random.default_rng(0).normal(size=10_000).astype(np.float32)
    new = (old + np.float32(1e-4) * old).astype(np.float32)
    assert len(delta_bytes(new, old)) < 0.8 * len(delta_bytes(new)) < new.nbytes
    payload = delta_bytes(new, old)
    for bad, size in ((payload[:-3], 10_000), (payload, 9_999), (b"junk", 10_000)):
        with pytest.raises(DataError, match="downlink delta"):
            apply_delta(bad, old, size)
    with pytest.raises(DataError, match="delta"):
        delta_bytes(new, old[:5])

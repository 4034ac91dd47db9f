"""A job's [deadline] and strategy.normalize end to end, and the default unchanged."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import pytest

from tessera.config import parse_config
from tessera.errors import ConfigError
from tessera.jobs.prepared import PreparedJob, prepare_job
from tessera.jobs.records import SimulationResult
from tessera.runtime.sim.job import simulate

from .test_profile_metrics import measured


@cache
def _job(secure: bool, **sections: Any) -> PreparedJob:
    raw: dict[str, Any] = {
        "job": {"name": "deadlines", "task": "classification", "seed": 6},
        "data": {"source": "sklearn", "dataset": "digits", "target": "target"},
        "partition": {"scheme": "quantity", "nodes": 12, "alpha": 1.0},
        "model": {"kind": "linear"},
        "recipe": {"clip_norm": 10.0, "batch_size": 16},
        "federation": {"rounds": 2, "round_timeout": 60.0},
        "simulation": {"samples_per_second": 50.0, "speed_sigma": 1.0},
        "secure": {"enabled": secure, "k": 2, "group_size": 4, "phase_timeout": 30.0},
        "baseline": {"enabled": False},
        **{k: dict(v) for k, v in sections.items()},
    }
    return prepare_job(parse_config(raw))


@cache
def _simulated(secure: bool, **sections: Any) -> SimulationResult:
    return simulate(_job(secure, **sections))


def _same(run: SimulationResult, default: SimulationResult) -> None:
    np.testing.assert_array_equal(run.weights, default.weights)
    assert measured(run) == measured(default)


def test_normalize_off_is_the_default_bit_for_bit() -> None:
    _same(_simulated(False, strategy=(("normalize", "none"),)), _simulated(False))


@pytest.mark.parametrize("secure", [False, True])
def test_a_deadline_every_node_meets_changes_nothing(secure: bool) -> None:
    default = _simulated(secure)
    _same(_simulated(secure, deadline=(("seconds", 1e9),)), default)
    assert all(r.stragglers == 0 and r.partial == 0 for r in default.rounds)


def test_a_deadline_job_reports_stragglers_partial_work_and_steps() -> None:
    job = _job(False, deadline=(("seconds", 2.0),), strategy=(("normalize", "fednova"),))
    sizes = job.node_samples
    result = simulate(job)
    full = _simulated(False)
    for cut, whole in zip(result.rounds, full.rounds, strict=True):
        assert cut.stragglers + cut.partial > 0
        assert cut.participants == whole.participants - cut.stragglers
        assert cut.mean_steps < whole.mean_steps
        assert cut.late == 0
    assert full.rounds[0].mean_steps == pytest.approx(np.ceil(sizes / 16).mean())
    entry = result.rounds[0].to_json()
    assert {"stragglers", "partial", "mean_steps"} <= entry.keys()
    assert np.isfinite(result.weights).all()


def test_fednova_is_refused_with_privacy_or_group_sums() -> None:
    with pytest.raises(ConfigError, match=r"strategy\.normalize"):
        _job(True, strategy=(("normalize", "fednova"),), privacy=(("epsilon", 5.0),))


def test_deadline_and_normalize_fields_are_checked() -> None:
    base = {
        "job": {"name": "d", "task": "classification"},
        "data": {"source": "sklearn", "dataset": "digits", "target": "target"},
        "partition": {"scheme": "iid", "nodes": 4},
        "model": {"kind": "linear"},
        "federation": {"rounds": 1},
        "secure": {"enabled": False},
    }
    cfg = parse_config({**base, "deadline": {"seconds": 30}})
    assert cfg.deadline is not None and cfg.deadline.partial_work
    assert cfg.strategy.normalize == "none" and cfg.strategy.params == {}
    with pytest.raises(ConfigError, match=r"deadline\.seconds"):
        parse_config({**base, "deadline": {"seconds": 0}})
    with pytest.raises(ConfigError, match=r"deadline\.partial"):
        parse_config({**base, "deadline": {"seconds": 1, "partial": True}})
    with pytest.raises(ConfigError, match=r"strategy\.normalize"):
        parse_config({**base, "strategy": {"normalize": "fedavg"}})

"""A job's device profile end to end, and metrics.json's simulated seconds and bytes per node."""

from __future__ import annotations

import dataclasses
from functools import cache

import numpy as np
import pytest

from tessera.config import parse_config
from tessera.jobs.prepared import PreparedJob, prepare_job
from tessera.jobs.records import SimulationResult
from tessera.reports import build_metrics
from tessera.runtime.sim import DeviceModel
from tessera.runtime.sim.job import job_devices, simulate


@cache
def small_job(secure: bool, **simulation: object) -> PreparedJob:
    raw = {
        "job": {"name": "profiles", "task": "classification", "seed": 6},
        "data": {"source": "sklearn", "dataset": "digits", "target": "target"},
        "partition": {"scheme": "iid", "nodes": 16},
        "model": {"kind": "linear"},
        "recipe": {"clip_norm": 10.0},
        "federation": {"rounds": 3, "round_timeout": 60.0},
        "simulation": simulation,
        "secure": {"enabled": secure, "k": 2, "group_size": 4, "phase_timeout": 30.0},
        "baseline": {"enabled": False},
    }
    return prepare_job(parse_config(raw))


def measured(result: SimulationResult) -> list[dict[str, object]]:
    """Every round's record but the wall-clock time it took to simulate."""
    return [{**r.to_json(), "seconds": None} for r in result.rounds]


@pytest.mark.parametrize("secure", [False, True])
def test_no_profile_is_main_s_device_model(secure: bool) -> None:
    job = small_job(secure, dropout=0.2, speed_sigma=0.7)
    devices = job_devices(job)
    assert devices.up_rate is None and devices.down_rate is None and devices.availability is None
    sim = job.config.simulation
    before = DeviceModel.sample(  # how main drew a job's devices
        job.n_nodes,
        dropout=sim.dropout,
        speed_sigma=sim.speed_sigma,
        samples_per_second=sim.samples_per_second,
        seed=job.config.job.seed,
        aggregator_failure=sim.aggregator_failure,
    )
    np.testing.assert_array_equal(devices.speed, before.speed)
    same_runs(simulate(job), simulate(job, devices=before), secure)


def same_runs(a: SimulationResult, b: SimulationResult, secure: bool) -> None:
    """The same model and rounds; a secure round's virtual times within 1e-5.

    The coordinator audits root sums it picks unpredictably (``protocol.audit``);
    whose audit it asks, over whose own link, moves a round's close a little.
    """
    np.testing.assert_array_equal(a.weights, b.weights)
    if not secure:
        assert measured(a) == measured(b)
        return
    times = dict.fromkeys(("closed_at", "virtual_seconds", "virtual_round_seconds"))
    assert [{**r, **times} for r in measured(a)] == [{**r, **times} for r in measured(b)]
    for x, y in zip(a.rounds, b.rounds, strict=True):
        assert x.virtual_seconds == pytest.approx(y.virtual_seconds, rel=1e-5)


@pytest.mark.parametrize("secure", [False, True])
def test_a_profiled_job_runs_the_same_for_its_seed(secure: bool) -> None:
    job = small_job(secure, profile="mixed", day_seconds=120.0, phase_hours=12.0)
    a, b = simulate(job), simulate(job)
    np.testing.assert_array_equal(a.weights, b.weights)
    same_runs(a, b, secure)
    rounds = a.rounds
    assert all(r.dropped > 0 for r in rounds)  # a 2-minute day: about half are offline
    assert all(r.participants + r.dropped + r.late == r.selected for r in rounds)


def test_metrics_give_simulated_seconds_and_bytes_per_node() -> None:
    # noon, one time zone: every laptop is online (09:00 to 18:00) all job long
    job = small_job(False, profile="laptops", day_start_hour=12.0, phase_hours=0.0)
    result = simulate(job)
    metrics = build_metrics(job, result.rounds, None, status="finished")
    entries = metrics["rounds"]
    for entry, record in zip(entries, result.rounds, strict=True):
        assert entry["simulated_seconds"] == record.virtual_round_seconds > 0
        assert record.dropped == 0 or record.participants > 0
        assert entry["bytes_up_per_contributor"] == record.bytes_up / record.participants
        assert entry["bytes_down_per_contributor"] == record.bytes_down / record.selected
    assert metrics["simulated_seconds"] == sum(e["simulated_seconds"] for e in entries)
    # the rounds tile the job's virtual time
    assert metrics["simulated_seconds"] == pytest.approx(result.rounds[-1].virtual_seconds)


def test_a_round_nobody_took_part_in_has_no_bytes_per_contributor() -> None:
    job = small_job(False)
    record = dataclasses.replace(
        simulate(job).rounds[0], participants=0, selected=0, virtual_round_seconds=0.0
    )
    entry = build_metrics(job, [record], None, status="finished")["rounds"][0]
    assert entry["bytes_up_per_contributor"] is None
    assert entry["bytes_down_per_contributor"] is None
    assert entry["simulated_seconds"] == 0.0

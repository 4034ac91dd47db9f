"""The claims the README makes about the bundled examples, checked on real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tessera.config import load_config
from tessera.jobs.prepared import prepare_job
from tessera.runtime.sim.job import centralized, simulate

EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "tessera" / "examples"


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.mark.parametrize(("name", "tolerance"), [("chem97.toml", 0.02), ("digits.toml", 0.03)])
def test_federated_is_close_to_centralized(name: str, tolerance: float) -> None:
    job = prepare_job(load_config(EXAMPLES / name))
    fed = simulate(job, secure=False)  # secure == plaintext is checked below, on fewer rounds
    base = centralized(job)
    assert len(fed.rounds) == job.config.federation.rounds
    assert abs(base.value - fed.final_value) <= tolerance, (fed.final_value, base.value)


def test_chem97_is_one_node_per_school_tested_on_unseen_schools() -> None:
    cfg = load_config(EXAMPLES / "chem97.toml")
    job = prepare_job(cfg)
    assert 2000 < job.n_nodes < 2410  # 2,410 schools less the held-out ones
    assert len(job.y) + len(job.test.y) == 31_022
    assert job.node_samples.max() > 20 * job.node_samples.min()  # unbalanced


def test_secure_equals_plaintext_on_chem97() -> None:
    cfg = load_config(EXAMPLES / "chem97.toml")
    cfg = cfg.model_copy(update={"federation": cfg.federation.model_copy(update={"rounds": 8})})
    job = prepare_job(cfg)
    plain = simulate(job, secure=False)
    secure = simulate(job, secure=True)
    assert secure.secure and not plain.secure
    assert abs(secure.final_value - plain.final_value) <= 0.001
    # the same contributors took part, and the models differ only by quantization
    assert [r.participants for r in secure.rounds] == [r.participants for r in plain.rounds]
    np.testing.assert_allclose(secure.weights, plain.weights, atol=1e-3)
    assert all(r.bytes_up > 0 for r in secure.rounds)


def test_chem97_schools_declare_their_education_authority_as_organisation() -> None:
    from tessera.jobs.secure import secure_params
    from tessera.protocol.topology import derive_tree

    job = prepare_job(load_config(EXAMPLES / "chem97.toml"))
    assert job.organisations is not None and None not in job.organisations
    orgs = dict(zip(job.node_ids, job.organisations, strict=True))
    assert len(set(orgs.values())) > 100  # Chem97 has 131 LEAs
    tree = derive_tree(
        job_id=job.config.job.name,
        round=0,
        nodes=orgs,
        contributors=job.node_ids[:400],
        params=secure_params(job).tree,
    )
    for group in tree.groups:  # no authority fills every seat of a group
        assert len({orgs[a] for a in group.aggregators}) >= 2


def test_organisations_need_a_natural_or_per_record_partition() -> None:
    from tessera.config import parse_config
    from tessera.errors import ConfigError

    raw = {
        "job": {"name": "t", "task": "classification"},
        "data": {"source": "sklearn", "dataset": "digits", "target": "target"},
        "partition": {"scheme": "iid", "nodes": 10},
        "model": {"kind": "linear"},
        "recipe": {"clip_norm": 1.0},
        "federation": {"rounds": 1},
        "secure": {"organisation_column": "target"},
    }
    with pytest.raises(ConfigError) as err:
        prepare_job(parse_config(raw))
    assert err.value.field == "secure.organisation_column"


def test_first_nodes_keeps_nodes_records_and_organisations_aligned() -> None:
    job = prepare_job(load_config(EXAMPLES / "chem97.toml"))
    small = job.first_nodes(10)
    assert small.n_nodes == 10 and len(small.y) == int(job.offsets[10])
    assert small.organisations == job.organisations[:10]
    np.testing.assert_array_equal(small.x, job.x[: len(small.y)])


def test_the_heterogeneous_digits_example_runs_deadline_rounds_on_mixed_devices() -> None:
    """examples/digits_hetero.toml: phones and laptops, some offline, a 1.5 s deadline with
    partial work and FedNova. Slow phones send partial updates, offline nodes are not
    waited for past the round's timeout, and every round reports its simulated time."""
    from tessera.runtime.sim.statistics import totals_for

    cfg = load_config(EXAMPLES / "digits_hetero.toml")
    cfg = cfg.model_copy(
        update={
            "federation": cfg.federation.model_copy(update={"rounds": 4}),
            "baseline": cfg.baseline.model_copy(update={"enabled": False}),
        }
    )
    assert cfg.simulation.profile == "mixed" and cfg.deadline is not None
    result = simulate(prepare_job(cfg, totals_of=totals_for(cfg, secure=True)), secure=True)
    rounds = result.rounds
    assert sum(r.partial for r in rounds) > 0  # phones cut short by the deadline
    assert sum(r.dropped for r in rounds) > 0  # nodes offline at their request
    bound = cfg.federation.round_timeout + 2 * cfg.secure.phase_timeout
    assert all(0 < r.virtual_round_seconds <= bound for r in rounds)
    assert all(r.participants > 0 for r in rounds)

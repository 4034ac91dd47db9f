"""The claims the README makes about the bundled examples, checked on real data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tessera.config import load_config
from tessera.runtime.prepare import prepare_job
from tessera.runtime.sim.job import centralized, simulate

EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "tessera" / "examples"


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


@pytest.mark.parametrize(("name", "tolerance"), [("chem97.toml", 0.02), ("digits.toml", 0.03)])
def test_federated_is_close_to_centralized(name: str, tolerance: float) -> None:
    job = prepare_job(load_config(EXAMPLES / name))
    fed = simulate(job)
    base = centralized(job)
    assert len(fed.rounds) == job.config.federation.rounds
    assert abs(base.value - fed.final_value) <= tolerance, (fed.final_value, base.value)


def test_chem97_is_one_node_per_school_tested_on_unseen_schools() -> None:
    cfg = load_config(EXAMPLES / "chem97.toml")
    job = prepare_job(cfg)
    assert 2000 < job.n_nodes < 2410  # 2,410 schools less the held-out ones
    assert len(job.y) + len(job.test.y) == 31_022
    assert job.node_samples.max() > 20 * job.node_samples.min()  # unbalanced

"""The claims the README makes about the bundled examples, checked on real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
    cfg = cfg.model_copy(update={"federation": cfg.federation.model_copy(update={"rounds": 20})})
    job = prepare_job(cfg)
    plain = simulate(job, secure=False)
    secure = simulate(job, secure=True)
    assert secure.secure and not plain.secure
    assert abs(secure.final_value - plain.final_value) <= 0.001
    # the same contributors took part, and the models differ only by quantization
    assert [r.participants for r in secure.rounds] == [r.participants for r in plain.rounds]
    np.testing.assert_allclose(secure.weights, plain.weights, atol=1e-3)
    assert all(r.bytes_up > 0 for r in secure.rounds)

"""Server strategies: one contract, each rule checked on numbers."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.errors import ConfigError
from tessera.protocol import STRATEGIES, make_strategy

W = np.array([1.0, -2.0, 0.5], np.float32)
D = np.array([0.1, -0.3, 0.0], np.float32)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_moves_along_the_mean_delta(name: str) -> None:
    s = make_strategy(name)
    new = s.apply(W, D)
    assert new.dtype == np.float32 and new.shape == W.shape
    step = new - W
    assert np.all(np.sign(step) == np.sign(D))
    np.testing.assert_array_equal(make_strategy(name).apply(W, np.zeros(3, np.float32)), W)


def test_fedavg_server_lr() -> None:
    np.testing.assert_allclose(make_strategy("fedavg", server_lr=0.5).apply(W, D), W + 0.5 * D)


def test_fedavgm_accumulates_momentum() -> None:
    s = make_strategy("fedavgm", momentum=0.5)
    w1 = s.apply(W, D)
    w2 = s.apply(w1, D)
    np.testing.assert_allclose(w2 - w1, 1.5 * D, rtol=1e-6)


def test_fedadam_first_step_is_about_server_lr_in_size() -> None:
    s = make_strategy("fedadam", server_lr=0.01, tau=1e-6)
    step = s.apply(W, D) - W
    # m = 0.1 d, v = 0.01 d^2 (+tau^2): the first step is lr * sign(d) * ~1
    np.testing.assert_allclose(np.abs(step[:2]), 0.01, rtol=1e-2)


def test_fedprox_sends_mu_to_clients() -> None:
    assert make_strategy("fedprox", mu=0.1).configure(0)["prox_mu"] == 0.1
    assert dict(make_strategy("fedavg").configure(0)) == {}


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("fedsgd", {}, "strategy.name"),
        ("fedavg", {"server_lr": 0.0}, "strategy.server_lr"),
        ("fedavgm", {"momentum": 1.0}, "strategy.momentum"),
        ("fedadam", {"lr": 0.1}, "strategy"),
        ("fedprox", {"mu": -1.0}, "strategy.mu"),
    ],
)
def test_bad_strategy_config_names_the_field(name, params, field) -> None:
    with pytest.raises(ConfigError) as err:
        make_strategy(name, **params)
    assert err.value.field == field

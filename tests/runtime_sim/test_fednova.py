"""FedNova normalisation on a constructed case, plaintext and secure.

Node i minimises ``|x - c_i|^2 / 2`` with ``tau_i`` local gradient steps of rate
``eta``: its update from ``x`` is ``(1 - (1 - eta)^tau_i) (c_i - x)``. FedAvg's
fixed point weighs node i by ``p_i (1 - (1 - eta)^tau_i)``, about ``p_i tau_i eta``:
pulled towards the optimum of the node that took more steps. FedNova's weighs
it by ``p_i (1 - (1 - eta)^tau_i) / tau_i``, about ``p_i eta``: the data weights,
up to O(eta tau) (exactly, as eta goes to 0).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from tessera.ids import JobId, NodeId
from tessera.protocol import Coordinator, RoundParams, make_strategy
from tessera.protocol.secure_coordinator import SecureParams
from tessera.protocol.topology import TreeParams
from tessera.runtime.sim import DeviceModel, RoundStats, Simulation
from tessera.runtime.sim.secure import build_secure
from tessera.testing import QuadraticTrainer
from tessera.weights import Vector

ETA = 0.01


def quadratic(
    optima: npt.ArrayLike, steps: npt.ArrayLike, samples: npt.ArrayLike
) -> QuadraticTrainer:
    """The testing kit's quadratic nodes at this file's rate."""
    return QuadraticTrainer(optima, samples=samples, steps=steps, eta=ETA)


def _ids(n: int) -> list[NodeId]:
    return [NodeId(f"node-{i:06d}") for i in range(n)]


def _run(
    trainer: QuadraticTrainer,
    *,
    rounds: int,
    fednova: bool,
    secure: SecureParams | None = None,
    on_round: list[RoundStats] | None = None,
    **sim: object,
) -> Vector:
    n = len(trainer.samples)
    nodes, dim = _ids(n), trainer.optima.shape[1]
    params = RoundParams(job_id=JobId("nova"), rounds=rounds, round_timeout=1e3, fednova=fednova)
    start = np.zeros(dim, np.float32)
    machines = None
    coordinator: Coordinator
    if secure is None:
        coordinator = Coordinator(params, nodes, start, make_strategy("fedavg"))
    else:
        coordinator, machines = build_secure(
            nodes,
            params=params,
            secure=secure,
            initial_weights=start,
            strategy=make_strategy("fedavg"),
            seed=0,
        )
    devices = sim.pop("devices", None) or DeviceModel.sample(
        n, dropout=0.0, speed_sigma=0.0, samples_per_second=1e6, seed=0
    )
    return Simulation(
        coordinator,
        nodes,
        trainer,
        devices,  # type: ignore[arg-type]
        trainer.samples,
        local_epochs=1,
        seed=0,
        machines=machines,
        on_round=None if on_round is None else on_round.append,
        **sim,  # type: ignore[arg-type]
    ).run()


def test_fedavg_is_pulled_to_the_many_step_node_and_fednova_is_not() -> None:
    # Equal data; node 1 takes ten local steps to node 0's one (a deadline cut node 0).
    trainer = quadratic([[0.0, 0.0], [1.0, -1.0]], steps=[1, 10], samples=[50, 50])
    fedavg = _run(trainer, rounds=250, fednova=False)
    fednova = _run(trainer, rounds=250, fednova=True)
    shrink = 1.0 - (1.0 - ETA) ** np.array([1.0, 10.0])
    avg_point = shrink[1] / shrink.sum()  # about 0.905: near node 1's optimum
    nova_point = (shrink[1] / 10) / (shrink[0] + shrink[1] / 10)  # about 0.489
    np.testing.assert_allclose(fedavg, [avg_point, -avg_point], atol=1e-3)
    np.testing.assert_allclose(fednova, [nova_point, -nova_point], atol=1e-3)
    assert fedavg[0] > 0.85  # biased: FedAvg weighs node 1 nine times node 0
    assert abs(fednova[0] - 0.5) < 0.02  # the data weights' optimum, up to O(eta tau)


def test_fednova_keeps_the_data_weights_with_unequal_data() -> None:
    # Node 0 holds three times node 1's records but takes a third of its steps.
    trainer = quadratic([[0.0], [1.0]], steps=[2, 6], samples=[300, 100])
    fednova = _run(trainer, rounds=300, fednova=True)
    assert abs(float(fednova[0]) - 0.25) < 0.01  # 100 / (300 + 100)
    fedavg = _run(trainer, rounds=300, fednova=False)
    assert float(fedavg[0]) > 0.45  # steps and data cancel: about one half


def _secure(max_steps: float, n: int) -> SecureParams:
    return SecureParams(
        tree=TreeParams(k=2, group_size=4, fan_in=3, min_group=2, backups=1),
        clip=10.0,
        max_weight=float(n),
        max_steps=max_steps,
    )


@pytest.mark.parametrize("fednova", [True, False])
def test_the_secure_aggregate_is_the_plaintext_one(fednova: bool) -> None:
    rng = np.random.default_rng(3)
    optima = rng.uniform(-1, 1, size=(7, 5))
    samples = rng.integers(5, 40, size=7)
    trainer = quadratic(optima, steps=[1, 3, 12, 7, 2, 12, 5], samples=samples)
    plain = _run(trainer, rounds=3, fednova=fednova)
    secure = _run(
        trainer,
        rounds=3,
        fednova=fednova,
        secure=_secure(12.0 if fednova else 0.0, int(samples.max())),
    )
    # Only the ring's stochastic rounding differs (measured: 2e-7; FedNova moves these
    # weights 0.04 from FedAvg's in three rounds).
    np.testing.assert_allclose(secure, plain, atol=1e-5)


def test_fednova_in_a_secure_job_needs_its_steps_bound_and_only_then() -> None:
    from tessera.errors import ConfigError

    trainer = quadratic(np.zeros((4, 2)), steps=[1, 1, 1, 1], samples=[1, 1, 1, 1])
    with pytest.raises(ConfigError, match="max_steps"):
        _run(trainer, rounds=1, fednova=True, secure=_secure(0.0, 1))
    with pytest.raises(ConfigError, match="max_steps"):
        _run(trainer, rounds=1, fednova=False, secure=_secure(4.0, 1))

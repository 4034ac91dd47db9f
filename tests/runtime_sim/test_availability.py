"""Availability reweighting: nodes online less often count as much over the job.

Eight nodes minimise ``|x - c_i|^2 / 2``: four are nearly always online (optimum
+1), four answer one round in four (optimum -1). Weighted by samples alone, the
model settles where the always-online nodes pull it (about +0.58, the
participation-weighted mean of the optima); with ``reweight_availability`` each
contributor's weight is divided by its observed answer rate and each round's sum
by the rounds' mean total weight (not its own, which would make a round of
always-online nodes alone step all the way to their optimum), and it settles
near the data's own mean, 0. The factors travel as the secure assignment's weight, so
a secure job lands on the same model.
"""

from __future__ import annotations

import numpy as np
import pytest

from tessera.ids import JobId, NodeId
from tessera.protocol import Coordinator, RoundParams, make_strategy
from tessera.protocol.coordinator import AVAILABILITY_FLOOR, CoordinatorSnapshot
from tessera.protocol.secure_coordinator import SecureParams
from tessera.protocol.topology import TreeParams
from tessera.runtime.sim import DeviceModel, RoundStats, Simulation
from tessera.runtime.sim.secure import build_secure
from tessera.testing import QuadraticTrainer

ETA = 0.05
OPTIMA = np.array([[1.0]] * 4 + [[-1.0]] * 4)
DROPOUT = np.array([0.05] * 4 + [0.75] * 4)


def _run(*, reweight: bool, rounds: int, secure: bool = False) -> list[float]:
    nodes = [NodeId(f"node-{i:06d}") for i in range(len(OPTIMA))]
    params = RoundParams(
        job_id=JobId("avail"), rounds=rounds, round_timeout=10.0, reweight_availability=reweight
    )
    start = np.zeros(1, np.float32)
    machines = None
    coordinator: Coordinator
    if secure:
        sp = SecureParams(
            tree=TreeParams(k=2, group_size=4, fan_in=3, min_group=1, backups=0),
            clip=10.0,
            max_weight=10.0,
            phase_timeout=10.0,
        )
        coordinator, machines = build_secure(
            nodes, params=params, secure=sp, initial_weights=start,
            strategy=make_strategy("fedavg"), seed=0,
        )  # fmt: skip
    else:
        coordinator = Coordinator(params, nodes, start, make_strategy("fedavg"))
    devices = DeviceModel(
        speed=np.ones(len(nodes)), dropout=DROPOUT, samples_per_second=1e6, seed=1
    )
    seen: list[RoundStats] = []
    Simulation(
        coordinator, nodes, QuadraticTrainer(OPTIMA, samples=[10] * 8, eta=ETA), devices,
        np.full(len(nodes), 10), local_epochs=1, seed=0, machines=machines, on_round=seen.append,
    ).run()  # fmt: skip
    return [float(s.closed.weights[0]) for s in seen]


def test_uniform_weights_lean_to_the_nodes_online_most_and_reweighting_does_not() -> None:
    uniform = np.mean(_run(reweight=False, rounds=400)[200:])
    reweighted = np.mean(_run(reweight=True, rounds=400)[200:])
    leaning = (4 * 0.95 - 4 * 0.25) / (4 * 0.95 + 4 * 0.25)  # about 0.58 (measured 0.62)
    assert abs(uniform - leaning) < 0.1
    assert abs(reweighted) < 0.1  # the data's mean, up to the answer rates' noise (-0.03)


def test_a_secure_job_reweights_as_the_plaintext_one() -> None:
    plain = _run(reweight=True, rounds=12)
    secure = _run(reweight=True, rounds=12, secure=True)
    np.testing.assert_allclose(secure, plain, atol=1e-5)  # the ring's rounding only
    assert plain != _run(reweight=False, rounds=12)  # the factors did change the model


def test_answer_rates_and_factors_survive_a_snapshot() -> None:
    from tessera.coordinator.snapshots import DriverState, decode_snapshot, encode_snapshot

    nodes = [NodeId("a"), NodeId("b"), NodeId("c")]
    params = RoundParams(job_id=JobId("avail"), rounds=5, reweight_availability=True)
    snapshot = CoordinatorSnapshot(
        round=3,
        opened_at=1.0,
        weights=np.zeros(2, np.float32),
        strategy={},
        withdrawn=(),
        asked={nodes[0]: 3, nodes[1]: 3, nodes[2]: 40},
        heard={nodes[0]: 3, nodes[1]: 1, nodes[2]: 0},
    )
    read = decode_snapshot(encode_snapshot(DriverState(machine=snapshot, timers=(), cursor=0)))
    assert dict(read.machine.asked) == dict(snapshot.asked)
    assert dict(read.machine.heard) == dict(snapshot.heard)
    machine = Coordinator.restore(
        read.machine, params, nodes, np.zeros(2, np.float32), make_strategy("fedavg")
    )
    assert machine.answer_rate(nodes[0]) == pytest.approx(4 / 5)
    factors = machine._factors
    assert factors[nodes[0]] == pytest.approx(max(AVAILABILITY_FLOOR, (1 / 42) / (4 / 5)))
    assert nodes[2] not in factors  # the least heard node keeps its full weight
    assert factors[nodes[1]] == pytest.approx((1 / 42) / (2 / 5))


def test_availability_reweighting_is_refused_in_a_private_job() -> None:
    from tessera.config import parse_config
    from tessera.errors import ConfigError
    from tessera.testing import example_config

    raw = example_config("chem97_dp.toml").model_dump(mode="json", exclude_none=True)
    raw["federation"]["availability"] = "reweight"
    with pytest.raises(ConfigError, match=r"federation\.availability"):
        parse_config(raw)

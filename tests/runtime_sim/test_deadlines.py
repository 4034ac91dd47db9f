"""Deadline rounds: partial work as the device speeds say, stragglers dropped and counted."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.runtime.sim import DeviceModel, RoundStats
from tessera.runtime.sim.deadline import Deadline, Work

from .test_fednova import QuadraticTrainer, _run

# Six nodes of 40 records (10 minibatches of 4) at 10 records/s times 10, 1, 0.1, 10...
DEVICES = DeviceModel(
    speed=np.array([10.0, 1.0, 0.1, 10.0, 10.0, 10.0]),
    dropout=0.0,
    samples_per_second=10.0,
    seed=0,
)


def _trainer() -> QuadraticTrainer:
    optima = [[0.0], [1.0], [2.0], [0.0], [0.0], [0.0]]
    return QuadraticTrainer(optima, steps=[10] * 6, samples=[40] * 6)


def test_work_fits_the_deadline_as_the_device_speeds_say() -> None:
    deadline = Deadline(seconds=2.2, batch_size=4)
    # 0.2 s to start, then 40 records at 100/s: all of it in time.
    assert deadline.work(DEVICES, 0, 40, 1) == Work(None, pytest.approx(0.6))
    # 2 s at 10 records/s: 20 records, 5 minibatches, done at the deadline.
    assert deadline.work(DEVICES, 1, 40, 1) == Work(5, pytest.approx(2.2))
    # 2 records in 2 s: not one minibatch of 4.
    assert deadline.work(DEVICES, 2, 40, 1) is None
    # Three epochs in 11 s: two whole (80 records), then 7 minibatches (28 records) of the
    # third, done at 11.0 s.
    assert Deadline(11.2, 4).work(DEVICES, 1, 40, 3) == Work(27, pytest.approx(11.0))
    # A last, short minibatch: 10 records in batches of 4 are 3 steps an epoch.
    assert Deadline(1.3, 4).work(DEVICES, 1, 10, 2) == Work(3, pytest.approx(1.2))
    assert Deadline(2.0, 4, partial_work=False).work(DEVICES, 1, 40, 1) is None


@pytest.mark.parametrize("secure", [False, True])
def test_a_deadline_round_caps_the_slow_and_drops_the_straggler(secure: bool) -> None:
    from .test_fednova import _secure

    trainer = _trainer()
    stats: list[RoundStats] = []
    _run(
        trainer,
        rounds=2,
        fednova=True,
        secure=_secure(10.0, 40) if secure else None,
        on_round=stats,
        devices=DEVICES,
        deadline=Deadline(seconds=2.2, batch_size=4),
    )
    for s in stats:
        assert (s.stragglers, s.partial, s.dropped, s.late) == (1, 1, 0, 0)
        assert s.closed.participants == 5
        assert s.mean_steps == 9.0  # node 1's 5 and four times 10
    caps = [c for c in trainer.caps if c is not None]  # one capped node a round: 5 steps
    assert [sorted(c)[:2] for c in caps] == [[5, 1 << 62]] * 2
    if not secure:  # the straggler declined at once: the round closed with the others
        assert all(s.virtual_round_seconds < 2.2 + 1.0 for s in stats)


def test_without_partial_work_the_slow_are_stragglers_too() -> None:
    trainer = _trainer()
    stats: list[RoundStats] = []
    weights = _run(
        trainer,
        rounds=1,
        fednova=False,
        on_round=stats,
        devices=DEVICES,
        deadline=Deadline(seconds=2.2, batch_size=4, partial_work=False),
    )
    assert (stats[0].stragglers, stats[0].partial, stats[0].closed.participants) == (2, 0, 4)
    assert all(c is None for c in trainer.caps)
    np.testing.assert_allclose(weights, [0.0], atol=1e-7)  # the four fast nodes' optimum

"""Each public piece of the kit does what its docstring says."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given

import tessera.testing
from tessera.ids import COORDINATOR, NodeId
from tessera.protocol.messages import TrainRequest, UpdateSubmission
from tessera.protocol.secure_coordinator import SecureParams
from tessera.protocol.timers import Timer
from tessera.protocol.topology import TreeParams
from tessera.testing import (
    InMemoryNetwork,
    ManualClock,
    MiniFederation,
    TableTrainer,
    Update,
    example_config,
    federation,
    plaintext_federation,
    secure_federation,
)
from tessera.testing.strategies import timers

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
SECURE = SecureParams(
    tree=TreeParams(k=3, group_size=4, fan_in=3, min_group=2),
    clip=1.0,
    max_weight=10.0,
    phase_timeout=1.0,
)


def updates(fed: MiniFederation, dim: int) -> dict[NodeId, Update]:
    return {
        n: Update(delta=np.full(dim, 0.1 * (i + 1), np.float32), num_samples=i + 1, loss=float(i))
        for i, n in enumerate(sorted(fed.nodes))
    }


def weighted_mean(ups: dict[NodeId, Update]) -> np.ndarray:
    w = np.array([u.num_samples for u in ups.values()], np.float64)
    return sum(u.delta * n for u, n in zip(ups.values(), w, strict=True)) / w.sum()


# -- the clock ----------------------------------------------------------------------------


def test_the_clock_runs_forward_only_and_records_every_wake() -> None:
    clock = ManualClock(3.0)
    clock.advance(5.0)
    assert clock.now() == 5.0
    with pytest.raises(ValueError, match="time runs forward"):
        clock.advance(4.0)
    fed = plaintext_federation(nodes=2, rounds=1, round_timeout=7.0)
    fed.begin()
    assert fed.clock.wakes == [(COORDINATOR, 7.0)]  # the round's deadline, set by its host


# -- the network ----------------------------------------------------------------------------


def test_delayed_wires_wait_for_release_and_arrive_last() -> None:
    network = InMemoryNetwork(delay=lambda w: isinstance(w.message, UpdateSubmission))
    base = plaintext_federation(nodes=3, dim=2, rounds=1)
    fed = MiniFederation(base.coordinator, base.nodes, network=network)
    fed.begin()
    fed.run()
    ups = updates(fed, 2)
    fed.train(ups)
    fed.run()
    assert fed.closed == [] and len(network.held) == 3  # every update is late
    first = sorted(fed.nodes)[0]
    assert network.release(lambda w: w.sender == first) == 1
    assert [w.sender for w in network.queue] == [first] and len(network.held) == 2
    fed.run()
    assert fed.closed == []
    assert network.release() == 2 and network.held == []
    fed.run()
    np.testing.assert_allclose(fed.closed[0].weights, weighted_mean(ups), rtol=1e-6)


def test_take_removes_the_first_match_and_says_when_there_is_none() -> None:
    fed = plaintext_federation(nodes=3, rounds=1)
    fed.begin()
    last = sorted(fed.nodes)[-1]
    wire = fed.network.take(lambda w: w.recipient == last)
    assert isinstance(wire.message, TrainRequest) and len(fed.network.queue) == 2
    with pytest.raises(LookupError):
        fed.network.take(lambda w: w.recipient == last)


def test_a_wire_shows_the_envelope_kind_of_sealed_messages_only() -> None:
    plain = plaintext_federation(nodes=2, rounds=1)
    plain.begin()
    wire = plain.network.queue[0]
    assert wire.kind is None
    with pytest.raises(TypeError, match="carries no envelope"):
        _ = wire.data
    fed = secure_federation(9, secure=SECURE, dim=3)
    fed.begin()
    fed.run()
    fed.train(updates(fed, 3))
    sealed = [w for w in fed.network.queue if w.kind is not None]
    assert sealed and all(isinstance(w.data, bytes) for w in sealed)


# -- the federation -------------------------------------------------------------------------


def test_train_answers_recorded_tasks_with_the_given_updates() -> None:
    fed = plaintext_federation(nodes=4, dim=3, rounds=1)
    fed.begin()
    fed.run()
    ups = updates(fed, 3)
    fed.train(ups)
    assert fed.tasks == {}
    fed.run()
    assert fed.finished is not None
    np.testing.assert_allclose(fed.finished.weights, weighted_mean(ups), rtol=1e-6)
    with pytest.raises(LookupError, match="no training task"):
        fed.train(ups)


def test_advance_without_a_time_goes_to_the_next_deadline() -> None:
    fed = plaintext_federation(nodes=2, rounds=1, round_timeout=4.0)
    assert fed.advance() == 0  # nothing pending: time stays
    fed.begin()
    fed.run()
    assert list(fed.timers.values()) == [4.0]
    assert fed.advance() == 1 and fed.clock.now() == 4.0
    assert fed.closed[0].participants == 0


def test_settle_lets_the_deadlines_finish_a_stalled_secure_round() -> None:
    fed = secure_federation(9, secure=SECURE, dim=3)
    fed.begin()
    fed.run()
    silent = sorted(fed.nodes)[0]
    fed.train({n: u for n, u in updates(fed, 3).items() if n != silent})
    fed.settle(until=lambda: bool(fed.closed))
    assert fed.closed[0].participants == 8 and silent not in fed.closed[0].included
    with pytest.raises(AssertionError, match="settled before"):
        fed.settle(until=lambda: False)


def test_the_modules_usage_example_runs() -> None:
    doc = federation.__doc__
    assert doc is not None
    example = textwrap.dedent(doc[doc.index("\n    fed = ") :])
    exec(compile(example, "federation.__doc__", "exec"), vars(tessera.testing) | {"np": np})


# -- the simulator's trainer --------------------------------------------------------------


def test_the_table_trainer_answers_rows_in_the_order_asked() -> None:
    samples = np.array([1, 2, 3, 4])
    trainer = TableTrainer(samples, dim=2, seed=1)
    out = trainer.train(np.zeros(2, np.float32), np.array([3, 0]), seed=0)
    np.testing.assert_array_equal(out.deltas, trainer.table[[3, 0]])
    np.testing.assert_array_equal(out.num_samples, [4, 1])
    assert trainer.calls == [2]
    mask = np.array([True, False, False, True])
    expected = (trainer.table[0] * 1.0 + trainer.table[3] * 4.0) / 5.0
    np.testing.assert_allclose(trainer.mean(mask), expected, rtol=1e-6)


# -- data, strategies, exports ----------------------------------------------------------------


def test_example_config_is_the_bundled_chem97_job() -> None:
    cfg = example_config()
    assert cfg.data.dataset == "mlmRev/Chem97" and cfg.partition.column == "school"


@given(timers)
def test_the_timer_strategy_draws_real_timers(timer: Timer) -> None:
    assert isinstance(timer, Timer)


def test_every_export_is_documented() -> None:
    text = DOC.read_text()
    missing = [name for name in tessera.testing.__all__ if f"`{name}" not in text]
    assert not missing, f"docs/testing.md does not mention {missing}"
    assert "tessera.testing.provider" in text and "serve_provider" in text

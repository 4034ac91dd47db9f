"""Buffered asynchronous rounds (FedBuff) in the simulator, plaintext.

Node i's update from ``x`` is ``(optima[i] - x) / 2``, recorded per (base round,
node) by the trainer, so each round's applied change can be recomputed from
what its record says it used: ``sum_i s(tau_i) w_i d_i / sum_i s(tau_i) w_i``
with ``d_i`` trained from round ``r - tau_i``'s model.
"""

from __future__ import annotations

import numpy as np

from tessera.ids import JobId, NodeId
from tessera.protocol import Coordinator, RoundParams, make_strategy
from tessera.protocol.buffering import staleness_weight
from tessera.protocol.secure_coordinator import SecureParams
from tessera.protocol.topology import TreeParams
from tessera.runtime.sim import DeviceModel, RoundStats, Simulation
from tessera.runtime.sim.deadline import Deadline
from tessera.runtime.sim.secure import build_secure
from tessera.testing import QuadraticTrainer
from tessera.weights import Vector

FAST, SLOW = 1.0, 0.15  # relative speeds: 0.3 s of local work, or about 0.87 s


def ids(n: int) -> list[NodeId]:
    return [NodeId(f"node-{i:06d}") for i in range(n)]


def problem(n: int = 6, dim: int = 3) -> QuadraticTrainer:
    """Half-way to each node's optimum (one step of rate 1/2); every delta kept by
    (base round, node)."""
    rng = np.random.default_rng(7)
    optima, samples = rng.normal(size=(n, dim)), rng.integers(50, 150, size=n)
    return QuadraticTrainer(optima, samples=samples, eta=0.5)


def devices(speeds: list[float]) -> DeviceModel:
    return DeviceModel(
        speed=np.asarray(speeds, np.float64), dropout=0.0, samples_per_second=1000.0, seed=0
    )


def params(rounds: int, buffer: int | None, max_staleness: int = 4) -> RoundParams:
    return RoundParams(
        job_id=JobId("buf"),
        rounds=rounds,
        round_timeout=100.0,
        buffer=buffer,
        max_staleness=max_staleness,
    )


def run_plaintext(
    trainer: QuadraticTrainer, p: RoundParams, speeds: list[float]
) -> tuple[list[RoundStats], list[Vector], Vector]:
    n, dim = trainer.samples.shape[0], trainer.optima.shape[1]
    stats: list[RoundStats] = []
    models = [np.zeros(dim, np.float32)]  # the model each round starts from

    def on_round(s: RoundStats) -> None:
        stats.append(s)
        models.append(s.closed.weights.copy())

    coordinator = Coordinator(p, ids(n), models[0], make_strategy("fedavg"))
    final = Simulation(
        coordinator,
        ids(n),
        trainer,
        devices(speeds),
        trainer.samples,
        local_epochs=1,
        seed=0,
        on_round=on_round,
    ).run()
    return stats, models, final


def expected_mean(trainer: QuadraticTrainer, closed: object, weight_of: object) -> Vector:
    """The buffered mean the round's record says it applied."""
    num = 0.0
    den = 0.0
    nodes = {n: i for i, n in enumerate(ids(trainer.samples.shape[0]))}
    for node, tau in zip(closed.included, closed.staleness, strict=True):  # type: ignore[attr-defined]
        i = nodes[NodeId(node)]
        w = staleness_weight(tau) * weight_of(i)  # type: ignore[operator]
        num = num + w * trainer.deltas[(closed.round - tau, i)].astype(np.float64)  # type: ignore[attr-defined]
        den += w
    return np.asarray(num / den)


def test_the_aggregate_is_the_buffered_mean_of_the_updates_it_names() -> None:
    trainer = problem()
    speeds = [FAST, FAST, FAST, SLOW, SLOW, SLOW]
    stats, models, _ = run_plaintext(trainer, params(8, buffer=3), speeds)
    assert len(stats) == 8
    stale = 0
    for s, before, after in zip(stats, models, models[1:], strict=False):
        closed = s.closed
        assert not closed.skipped and closed.participants == 3
        assert len(closed.staleness) == len(closed.included) == 3
        stale += sum(t > 0 for t in closed.staleness)
        mean = expected_mean(trainer, closed, lambda i: float(trainer.samples[i]))
        want = (before + mean.astype(np.float32)).astype(np.float32)
        np.testing.assert_allclose(after, want, rtol=0, atol=1e-6)
    assert stale >= 3  # the slow nodes' updates came in, stale


def test_a_round_closes_at_k_and_the_slow_arrive_later_down_weighted() -> None:
    trainer = problem()
    speeds = [FAST, FAST, FAST, SLOW, SLOW, SLOW]
    stats, _, _ = run_plaintext(trainer, params(4, buffer=3), speeds)
    first = stats[0].closed
    assert first.included == tuple(ids(3)) and first.staleness == (0, 0, 0)
    # Closed once three were in: well before the slow nodes' 0.87 s of local work.
    assert stats[0].closed_at < 0.6
    slow = set(ids(6)[3:])
    late = [
        (node, tau, s.closed.round)
        for s in stats
        for node, tau in zip(s.closed.included, s.closed.staleness, strict=True)
        if node in slow
    ]
    assert late and all(tau >= 1 for _, tau, _ in late)
    assert {node for node, tau, r in late if r - tau == 0} == slow  # each one's round-0 work
    for i in range(3, 6):  # asked by later rounds while training: they did not start over
        assert trainer.bases[i][0] == 0 and 1 not in trainer.bases[i]


def test_past_max_staleness_the_update_is_dropped_and_the_node_retrains() -> None:
    trainer = problem()
    speeds = [FAST, FAST, FAST, SLOW, SLOW, SLOW]
    stats, _, _ = run_plaintext(trainer, params(6, buffer=3, max_staleness=1), speeds)
    assert all(t <= 1 for s in stats for t in s.closed.staleness)
    for i in range(3, 6):  # round 2 asked while it trained from round 0: 2 > 1, afresh
        assert trainer.bases[i][:2] == [0, 2]
    used = {
        (node, s.closed.round - tau)
        for s in stats
        for node, tau in zip(s.closed.included, s.closed.staleness, strict=True)
    }
    # Nodes 3 and 4 were still training from round 0 then: that work was dropped.
    assert ("node-000003", 0) not in used and ("node-000004", 0) not in used
    assert ("node-000005", 0) in used  # the quickest slow node made it, one round stale


def test_a_buffer_of_the_whole_cohort_without_staleness_is_synchronous_bit_for_bit() -> None:
    speeds = [FAST, FAST, FAST, SLOW, SLOW, SLOW]
    sync, _, sync_final = run_plaintext(problem(), params(4, buffer=None), speeds)
    buffered, _, buffered_final = run_plaintext(problem(), params(4, 6, max_staleness=0), speeds)
    assert sync_final.tobytes() == buffered_final.tobytes()
    assert [s.closed.included for s in sync] == [s.closed.included for s in buffered]
    assert [s.closed_at for s in sync] == [s.closed_at for s in buffered]
    assert all(s.closed.staleness == () for s in sync)
    assert all(s.closed.staleness == (0,) * 6 for s in buffered)


# -- secure rounds ---------------------------------------------------------------------


def secure_params(n: int) -> SecureParams:
    return SecureParams(
        tree=TreeParams(k=2, group_size=4, fan_in=3, min_group=2, backups=1),
        clip=10.0,
        max_weight=1000.0,  # over every node's records: weights stay proportional to them
    )


def run_secure(
    trainer: QuadraticTrainer,
    p: RoundParams,
    speeds: list[float],
    deadline: Deadline | None = None,
) -> tuple[list[RoundStats], list[Vector], Vector]:
    n, dim = trainer.samples.shape[0], trainer.optima.shape[1]
    stats: list[RoundStats] = []
    models = [np.zeros(dim, np.float32)]

    def on_round(s: RoundStats) -> None:
        stats.append(s)
        models.append(s.closed.weights.copy())

    coordinator, machines = build_secure(
        ids(n),
        params=p,
        secure=secure_params(n),
        initial_weights=models[0],
        strategy=make_strategy("fedavg"),
        seed=0,
    )
    final = Simulation(
        coordinator,
        ids(n),
        trainer,
        devices(speeds),
        trainer.samples,
        local_epochs=1,
        seed=0,
        machines=machines,
        on_round=on_round,
        deadline=deadline,
    ).run()
    return stats, models, final


def test_secure_buffered_rounds_apply_the_mean_of_the_updates_they_name() -> None:
    trainer = problem(n=8)
    speeds = [FAST] * 5 + [SLOW] * 3
    stats, models, _ = run_secure(trainer, params(5, buffer=4), speeds)
    assert len(stats) == 5
    stale = 0
    for s, before, after in zip(stats, models, models[1:], strict=False):
        closed = s.closed
        assert not closed.skipped and closed.participants >= 4
        assert len(closed.staleness) == len(closed.included)
        stale += sum(t > 0 for t in closed.staleness)
        mean = expected_mean(trainer, closed, lambda i: float(trainer.samples[i]))
        want = (before + mean.astype(np.float32)).astype(np.float32)
        np.testing.assert_allclose(after, want, rtol=0, atol=1e-3)  # the ring's rounding
    assert stale >= 1
    # Each round closed its training once four were in: before the slow nodes finished.
    assert "node-000007" not in stats[0].closed.included


def test_secure_rounds_without_a_buffer_are_unchanged() -> None:
    speeds = [FAST] * 5 + [SLOW] * 3
    trainer = problem(n=8)
    stats, _, _ = run_secure(trainer, params(2, buffer=None), speeds)
    assert all(s.closed.participants == 8 and s.closed.staleness == () for s in stats)


def test_a_secure_deadline_round_does_not_wait_for_a_straggler() -> None:
    trainer = problem(n=8)
    speeds = [FAST] * 7 + [0.001]  # node 7 cannot do one step in 2 s: a straggler
    p = RoundParams(job_id=JobId("dl"), rounds=2, round_timeout=600.0, report_after=2.0 + 1.0)
    stats, _, _ = run_secure(trainer, p, speeds, deadline=Deadline(2.0, 32, partial_work=False))
    for s in stats:
        assert s.closed.participants == 7 and not s.closed.skipped
        assert s.stragglers == 1
        assert s.virtual_round_seconds < 10.0  # the deadline and its margin, not 600 s

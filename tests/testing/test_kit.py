"""The public testing kit works as docs/testing.md says, and its adversaries are caught."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tessera.ids import COORDINATOR, NodeId
from tessera.protocol.events import LocalUpdateReady
from tessera.protocol.messages import TrainRequest, UpdateSubmission
from tessera.protocol.secure_coordinator import SecureParams
from tessera.protocol.topology import TreeParams
from tessera.testing import (
    InMemoryNetwork,
    ManualClock,
    MiniFederation,
    SilentAggregator,
    TruncatingContributor,
    chem97_job,
    fixed_updates,
    partition,
    plaintext_federation,
    replay,
    secure_federation,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def test_a_plaintext_round_is_the_weighted_mean_of_the_updates() -> None:
    fed = plaintext_federation(nodes=4, dim=3, rounds=1)
    fed.begin()
    fed.run()
    tasks = dict(fed.tasks)
    updates = {n: fixed_updates(fed, seed=2)(n, t) for n, t in tasks.items()}
    fed.answer(fixed_updates(fed, seed=2))
    fed.run()
    assert fed.finished is not None and fed.closed[0].participants == 4
    w = np.array([u.num_samples for u in updates.values()], np.float64)  # type: ignore[union-attr]
    mean = sum(u.delta * n for u, n in zip(updates.values(), w, strict=True)) / w.sum()  # type: ignore[union-attr]
    np.testing.assert_allclose(fed.finished.weights, mean, rtol=1e-6)


def test_the_deadline_closes_a_round_with_whoever_answered() -> None:
    fed = plaintext_federation(nodes=4, dim=3, rounds=1, round_timeout=5.0)
    fed.begin()
    fed.run()
    first = sorted(fed.tasks)[:2]
    fed.answer(fixed_updates(fed), nodes=first)
    fed.run()
    assert fed.closed == []
    assert fed.advance(4.0) == 0  # not yet
    assert fed.advance(5.0) == 1
    assert fed.closed[0].included == tuple(first)


def test_a_partition_loses_messages_across_it() -> None:
    cut = {NodeId("node-000"), NodeId("node-001")}
    network = InMemoryNetwork(drop=partition({COORDINATOR}, cut))
    base = plaintext_federation(nodes=4, dim=2, rounds=1)
    fed = MiniFederation(base.coordinator, base.nodes, network=network, clock=ManualClock())
    fed.begin()
    assert {w.recipient for w in network.dropped} == cut
    assert all(isinstance(w.message, TrainRequest) for w in network.dropped)


def test_a_truncated_update_is_refused_and_the_round_goes_on() -> None:
    fed = plaintext_federation(nodes=3, dim=4, rounds=1)
    bad = NodeId("node-001")
    fed.hosts[bad].machine = TruncatingContributor(bad, fed.coordinator.params.job_id)  # type: ignore[attr-defined]
    fed.begin()
    fed.run()
    fed.answer(fixed_updates(fed))
    fed.run()
    assert [(a, r.sender) for a, r in fed.refused] == [(COORDINATOR, bad)]
    assert "layout" in fed.refused[0][1].reason
    fed.advance(10.0)
    assert bad not in fed.closed[0].included and len(fed.closed[0].included) == 2


def test_a_replayed_update_is_refused() -> None:
    fed = plaintext_federation(nodes=2, dim=2, rounds=2)
    fed.begin()
    fed.run()
    fed.answer(fixed_updates(fed))
    update = next(w for w in fed.network.queue if isinstance(w.message, UpdateSubmission))
    fed.run()
    effects = replay(fed, update)
    assert any("already answered" in r.reason or "not open" in r.reason for _, r in fed.refused)
    assert all(not isinstance(e, LocalUpdateReady) for e in effects)


def test_a_silent_aggregator_is_replaced_and_the_round_is_complete() -> None:
    secure = SecureParams(
        tree=TreeParams(k=3, group_size=4, fan_in=3, min_group=2),
        clip=1.0,
        max_weight=10.0,
        phase_timeout=1.0,
    )
    fed = secure_federation(9, secure=secure, dim=3, trainer=None)
    fed.begin()
    seat = next(
        w.recipient
        for w in fed.network.queue
        if w.recipient != COORDINATOR and type(w.message).__name__ == "AggregateRequest"
    )
    node = fed.nodes[seat]
    node.aggregator = SilentAggregator(seat, node.aggregator.job_id, node.aggregator.keys, {})  # type: ignore[attr-defined]
    fed.run()
    fed.answer(fixed_updates(fed))
    fed.run()
    for t in np.arange(1.0, 40.0, 0.5):  # let the deadlines do their work
        fed.advance(float(t))
        fed.run()
        if fed.closed:
            break
    assert fed.closed and not fed.closed[0].skipped
    assert fed.closed[0].participants >= 8  # the silent node may have lost its own shares


def test_chem97_is_real_and_offline() -> None:
    job = chem97_job(nodes=5, rounds=2)
    assert job.n_nodes == 5 and len(job.y) > 5 and job.config.federation.rounds == 2


def test_the_documented_example_runs() -> None:
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert code is not None, "docs/testing.md has no example"
    exec(compile(code.group(1), str(DOC), "exec"), {})  # its own asserts must hold

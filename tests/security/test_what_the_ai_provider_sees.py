"""No code path hands the AI provider an individual update or an under-sized group sum.

What leaves the coordinator's machine for the AI provider is its ``RoundClosed``
effects: the new model (a mean over the included), and, in a job with
``[contributions]``, the leaf groups' sums. Whatever the network does (nodes
drop out, aggregators fail) and whoever the policy left out (a group thinned
below the floor by exclusions), every round's disclosure must hold: each group
sum covers at least the floor of contributors, is exactly their sum, and the
disclosed sums partition the round's included set (else the total less the
disclosed sums would be the sum of a set below the floor). Nothing else in the
effect is model-sized. Hypothesis draws the failures and the exclusions.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.ids import JobId, NodeId
from tessera.protocol import RoundParams, make_strategy
from tessera.protocol.effects import RoundClosed
from tessera.protocol.events import ContributorsRated
from tessera.protocol.secure_coordinator import SecureParams
from tessera.protocol.topology import TreeParams
from tessera.runtime.sim import DeviceModel, RoundStats, Simulation
from tessera.runtime.sim.secure import build_secure
from tessera.testing import TableTrainer

N, P, FLOOR = 30, 3, 3
NODES = [NodeId(f"node-{i:06d}") for i in range(N)]
SECURE = SecureParams(
    tree=TreeParams(k=2, group_size=5, fan_in=3, min_group=2, backups=1),
    clip=100.0,
    max_weight=4.0,
    group_sums=True,
    group_floor=FLOOR,
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dropout=st.sampled_from([0.0, 0.2, 0.4]),
    failure=st.sampled_from([0.0, 0.05]),
    excluded=st.sets(st.integers(0, N - 1), max_size=8),
    seed=st.integers(0, 2**16),
)
def test_every_disclosure_covers_the_floor_and_is_exactly_its_members_sum(
    dropout: float, failure: float, excluded: set[int], seed: int
) -> None:
    samples = np.random.default_rng(seed).integers(1, 6, N)
    trainer = TableTrainer(samples, dim=P, seed=seed)
    coordinator, machines = build_secure(
        NODES,
        params=RoundParams(job_id=JobId("sees"), rounds=3, round_timeout=1e4, min_updates=2),
        secure=SECURE,
        initial_weights=np.zeros(P, np.float32),
        strategy=make_strategy("fedavg"),
        seed=seed,
    )
    coordinator.handle(ContributorsRated(excluded={NODES[i]: "harm" for i in excluded}), 0.0)
    stats: list[RoundStats] = []
    devices = DeviceModel.sample(
        N,
        dropout=dropout,
        speed_sigma=0.5,
        samples_per_second=50,
        seed=seed,
        aggregator_failure=failure,
    )
    Simulation(
        coordinator,
        NODES,
        trainer,
        devices,
        samples,
        local_epochs=1,
        seed=seed,
        on_round=stats.append,
        machines=machines,
    ).run()
    index = {node: i for i, node in enumerate(NODES)}
    for s in stats:
        closed = s.closed
        assert not {NODES[i] for i in excluded} & set(closed.included)
        _nothing_else_is_model_sized(closed)
        if not closed.group_sums:
            continue
        members = [m for g in closed.group_sums for m in g.members]
        assert sorted(members) == sorted(closed.included)  # a partition of the included
        for group in closed.group_sums:
            assert len(group.members) >= FLOOR
            rows = [index[NodeId(m)] for m in group.members]
            w = np.minimum(samples[rows], SECURE.max_weight) / SECURE.max_weight
            expected = (w[:, None] * trainer.table[rows]).sum(axis=0)
            np.testing.assert_allclose(group.update(P), expected, atol=1e-3)
            np.testing.assert_allclose(group.weight, w.sum(), atol=1e-3)


def _nothing_else_is_model_sized(closed: RoundClosed) -> None:
    """Besides the new model and the group sums, the effect holds ids, counts and text."""
    for f in fields(closed):
        value = getattr(closed, f.name)
        if f.name in ("weights", "group_sums"):
            continue
        assert not isinstance(value, np.ndarray), f.name
        if isinstance(value, tuple):
            assert all(isinstance(v, str | tuple) for v in value), f.name

"""Secure rounds act on the policy's verdicts with no update seen: an excluded
contributor holds no seat, a weight factor travels to the contributor, and the
total is the factor-weighted mean of the rest's updates."""

from __future__ import annotations

import numpy as np

from tessera.ids import NodeId
from tessera.protocol.events import ContributorsRated
from tessera.protocol.secure_coordinator import SecureParams
from tessera.protocol.topology import TreeParams
from tessera.testing import TableTrainer, table_rounds

N, P = 24, 4
NODES = [NodeId(f"node-{i:06d}") for i in range(N)]
SECURE = SecureParams(
    tree=TreeParams(k=2, group_size=4, fan_in=3, min_group=2, backups=1),
    clip=100.0,
    max_weight=1.0,
)


def test_secure_rounds_leave_out_the_excluded_and_weigh_the_rest() -> None:
    trainer = TableTrainer(np.ones(N, np.int64), dim=P, seed=5)
    out, factors = [3, 11], {NODES[i]: 0.25 * (1 + i % 4) for i in range(N)}
    verdict = ContributorsRated(
        excluded={NODES[i]: "harm" for i in out},
        weights={n: f for n, f in factors.items() if f < 1},
    )
    # Before the start: it holds from round 0.
    stats = table_rounds(
        trainer, SECURE, rounds=2, job_id="policy", before=lambda c, _: c.handle(verdict, 0.0)
    )
    first = stats[0].closed
    kept = [i for i in range(N) if i not in out]
    assert sorted(first.included) == [NODES[i] for i in kept]
    assert first.excluded == tuple((NODES[i], "harm") for i in out)
    assert stats[1].closed.excluded == ()  # named once, in the first round without them
    f = np.array([factors[NODES[i]] for i in kept])
    expected = (f[:, None] * trainer.table[kept]).sum(axis=0) / f.sum()
    np.testing.assert_allclose(first.weights, expected, atol=1e-4)

"""A contributor that skips its clip: the sum shows it, and nobody's update is seen.

Every honest update is clipped to ``clip``, so a sum of ``n`` of them weighing
``W`` has an update part of norm at most ``clip * W`` (``protocol.bounds``). The
attack: one contributor shares its update unclipped, to weigh far more than its
share in the mean. The defence: the coordinator checks the decoded total; with
group sums it drops the group whose sum breaks the bound and keeps the rest,
naming the group; without them it drops the round. Honest rounds pass.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tessera.ids import NodeId
from tessera.protocol.effects import RoundClosed
from tessera.protocol.node import Node
from tessera.protocol.secure_coordinator import SecureParams
from tessera.protocol.topology import TreeParams
from tessera.testing import TableTrainer, UnclippedContributor, table_rounds

N, P, CLIP, HOSTILE = 24, 1000, 10.0, 7
NODES = [NodeId(f"node-{i:06d}") for i in range(N)]
SECURE = SecureParams(
    tree=TreeParams(k=2, group_size=4, fan_in=3, min_group=2, backups=1), clip=CLIP, max_weight=1.0
)


def one_round(secure: SecureParams, *, hostile: bool) -> tuple[RoundClosed, TableTrainer]:
    trainer = TableTrainer(np.ones(N, np.int64), dim=P, seed=11)
    # Each coordinate within what the ring carries (about the clip), the norm 285: over
    # the bound of its group of 4 (clip x 4 = 40) and of the whole round (clip x 24 = 240).
    trainer.table[HOSTILE] = 9.0

    def swap(_: object, machines: list[Node]) -> None:
        honest = machines[HOSTILE].contributor
        machines[HOSTILE].contributor = UnclippedContributor(
            honest.node, honest.job_id, honest.secure
        )

    (stats,) = table_rounds(trainer, secure, job_id="unclipped", before=swap if hostile else None)
    return stats.closed, trainer


def clipped(row: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(row))
    return row * (CLIP * (1 - 1e-9) / norm) if norm > CLIP else row


@pytest.mark.parametrize("secure", [SECURE, replace(SECURE, group_sums=True)])
def test_an_honest_round_passes_the_bound(secure: SecureParams) -> None:
    closed, trainer = one_round(secure, hostile=False)
    assert not closed.skipped and closed.blamed == () and closed.participants == N
    expected = np.mean([clipped(r.astype(np.float64)) for r in trainer.table], axis=0)
    np.testing.assert_allclose(closed.weights, expected, atol=1e-4)


def test_without_group_sums_the_round_is_dropped_and_says_why() -> None:
    closed, _ = one_round(SECURE, hostile=True)
    assert closed.skipped
    assert len(closed.blamed) == 1 and "the round's total" in closed.blamed[0]
    assert "over the clip bound" in closed.blamed[0]
    np.testing.assert_array_equal(closed.weights, np.zeros(P, np.float32))


def test_with_group_sums_only_the_hostiles_group_is_dropped() -> None:
    closed, trainer = one_round(replace(SECURE, group_sums=True), hostile=True)
    assert not closed.skipped
    (why,) = closed.blamed
    assert NODES[HOSTILE] in why and "over the clip bound" in why
    assert NODES[HOSTILE] not in closed.included
    kept = [int(n.split("-")[1]) for n in closed.included]
    assert len(kept) < N - 1  # its whole group went: nobody's own update is known
    expected = np.mean([clipped(trainer.table[i].astype(np.float64)) for i in kept], axis=0)
    np.testing.assert_allclose(closed.weights, expected, atol=1e-4)
    assert {m for g in closed.group_sums for m in g.members} == set(closed.included)

"""Federated statistics in the simulator: each node's table, totalled by secure aggregation.

The job's statistics round (``StatisticsRound``) runs alone: the real
coordinator, contributor and aggregator machines, real keys and sealed
shares, over the simulated network. Each node counts its own records by the
public ``StatisticsPlan``; only the total comes out, decoded by the
coordinator. A deployment runs the same round over HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd

from tessera.config import JobConfig
from tessera.data.federated import TotalsOf, plain_totals
from tessera.data.statistics import TERM_BOUND, StatisticsPlan, Totals
from tessera.errors import DataError
from tessera.ids import JobId, NodeId
from tessera.protocol import RoundParams, make_strategy
from tessera.protocol.noise import PrivacyParams
from tessera.protocol.params import StatisticsRound
from tessera.protocol.secure_coordinator import SecureParams
from tessera.protocol.topology import TreeParams
from tessera.runtime.sim.devices import DeviceModel
from tessera.runtime.sim.secure import build_secure
from tessera.runtime.sim.simulator import Simulation


@dataclass(frozen=True)
class SecureTotals:
    """The statistics round's outcome: the totals, the raw total, who is in it."""

    totals: Totals
    total: npt.NDArray[np.float64]
    included: tuple[str, ...]
    ring_step: float  # each node's real sums are off by less than this in the total
    spent: tuple[float, ...] = ()  # a private round's noise variance (the job's ledger)

    @property
    def nodes(self) -> int:
        return len(self.included)


class _NoTraining:
    """The trainer of a statistics-only run: it is never asked to train."""

    def train(self, *_: object, **__: object) -> object:
        raise AssertionError("a statistics-only job trains nothing")


def secure_totals(
    plan: StatisticsPlan,
    tables: Sequence[pd.DataFrame],
    *,
    job_id: str = "statistics",
    seed: int = 0,
    tree: TreeParams | None = None,
    min_nodes: int = 1,
) -> SecureTotals:
    """Total ``plan``'s statistics of every node's table (``tables[i]`` is node i's), each
    node counting its own (``plan.vector``: a node that cannot declines, saying why).

    Raises DataError when the round totals fewer than ``min_nodes`` nodes.
    """
    return _total(
        plan,
        lambda i: plan.vector(tables[i]),
        [len(t) for t in tables],
        job_id=job_id,
        seed=seed,
        tree=tree,
        min_nodes=min_nodes,
    )


def secure_vector_totals(
    plan: StatisticsPlan,
    vectors: npt.NDArray[np.float64],
    *,
    job_id: str = "statistics",
    seed: int = 0,
    tree: TreeParams | None = None,
    min_nodes: int = 1,
    privacy: PrivacyParams | None = None,
    clip: float = 1.0,
) -> SecureTotals:
    """As ``secure_totals``, the nodes' vectors counted beforehand (``plan.vectors``).
    With ``privacy`` (its ``statistics_clip`` set), each node adds its share of the
    noise to its vector, scaled down to the job's update ``clip`` (a training round's
    release: ``protocol.noise.private_statistics``); ``SecureTotals.spent`` says what
    the round's noise held, for the job's ledger."""
    return _total(
        plan,
        lambda i: vectors[i],
        [1] * len(vectors),
        job_id=job_id,
        seed=seed,
        tree=tree,
        min_nodes=min_nodes,
        privacy=privacy,
        clip=clip,
    )


def _total(
    plan: StatisticsPlan,
    count: Callable[[int], npt.NDArray[np.float64]],
    sizes: Sequence[int],
    *,
    job_id: str,
    seed: int,
    tree: TreeParams | None,
    min_nodes: int,
    privacy: PrivacyParams | None = None,
    clip: float = 1.0,
) -> SecureTotals:
    n = len(sizes)
    if n == 0:
        raise DataError("federated statistics need at least one node")
    nodes = [NodeId(f"node-{i:06d}") for i in range(n)]
    params = RoundParams(
        job_id=JobId(job_id), rounds=1, min_updates=min_nodes, round_timeout=1e4, seed=seed
    )
    tree = tree or TreeParams(k=3, group_size=16, fan_in=8, min_group=min(2, n), backups=1)
    secure = SecureParams(
        tree=tree,
        clip=clip,  # no training round follows: only a private job's scaling reads it
        max_weight=1.0,
        statistics=StatisticsRound(lengths=(plan.length,), bound=TERM_BOUND, only=True),
        privacy=privacy,
    )
    coordinator, machines = build_secure(
        nodes,
        params=params,
        secure=secure,
        initial_weights=np.zeros(1, np.float32),
        strategy=make_strategy("fedavg"),
        seed=seed,
    )
    sim = Simulation(
        coordinator,
        nodes,
        _NoTraining(),  # type: ignore[arg-type]
        DeviceModel.sample(n, dropout=0.0, speed_sigma=0.0, samples_per_second=1.0, seed=seed),
        np.array(sizes, np.int64),
        local_epochs=1,
        seed=seed,
        machines=machines,
        statistics=lambda node, _round: count(node),
    )
    sim.run()
    closed = sim.statistics_closed_with
    if closed is None:
        refused = sim.statistics_round.rejected if sim.statistics_round else []
        raise DataError(
            f"federated statistics failed: {sim.error or 'the round did not close'}"
            + (f" ({refused[0]})" if refused else "")
        )
    ring = coordinator.ring_of_statistics
    budget = coordinator.budget
    return SecureTotals(
        totals=plan.totals(closed.total),
        total=closed.total,
        included=closed.included,
        ring_step=ring.step if ring is not None else 0.0,
        spent=tuple(budget.spent) if budget is not None else (),
    )


@dataclass
class SecureTotalsOf:
    """A job's statistics rounds in the simulator: up its own tree, and, once
    ``make_private`` (``prepare_job`` for a job with ``[privacy] statistics``), with
    each node's share of the noise as a deployed node adds it (``data.federated.PrivateTotals``)."""

    job_id: str
    seed: int
    tree: TreeParams
    privacy: PrivacyParams | None = None
    clip: float = 1.0
    spent: list[float] = field(default_factory=list)

    def make_private(self, privacy: PrivacyParams, clip: float) -> None:
        self.privacy, self.clip = privacy, clip

    @property
    def noised(self) -> bool:
        return self.privacy is not None and self.privacy.statistics_clip is not None

    def __call__(self, plan: StatisticsPlan, vectors: npt.NDArray[np.float64]) -> Totals:
        out = secure_vector_totals(
            plan,
            vectors,
            job_id=self.job_id,
            seed=self.seed,
            tree=self.tree,
            privacy=self.privacy,
            clip=self.clip,
        )
        self.spent.extend(out.spent)
        return out.totals


def totals_for(cfg: JobConfig, *, secure: bool) -> TotalsOf:
    """How ``prepare_job`` totals the nodes' statistics for this job: up the job's own
    tree (its [secure] k, group sizes, backups) when secure, else in the clear."""
    if not secure:
        return plain_totals
    s = cfg.secure
    tree = TreeParams(
        k=s.k, group_size=s.group_size, fan_in=s.fan_in, min_group=s.min_group, backups=s.backups
    )
    return SecureTotalsOf(job_id=cfg.job.name, seed=cfg.job.seed, tree=tree)

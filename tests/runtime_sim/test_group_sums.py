"""Leaf groups' sums in the simulator: each disclosed sum is exactly its members' weighted
vectors, whatever drops out or fails, and a group below the floor is never disclosed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.config import ContributionsSection
from tessera.crypto.envelope import peek
from tessera.ids import JobId, NodeId
from tessera.jobs.prepared import prepare_job
from tessera.protocol import RoundParams, make_strategy
from tessera.protocol.contributor import weighted_vector
from tessera.protocol.coordinator import round_cohort
from tessera.protocol.effects import GroupSum, Send
from tessera.protocol.kinds import Kind
from tessera.protocol.limits import TAIL
from tessera.protocol.messages import Sealed
from tessera.protocol.secure_coordinator import SecureParams
from tessera.protocol.topology import Tree, TreeParams, derive_tree
from tessera.runtime.sim import DeviceModel, RoundStats, Simulation
from tessera.runtime.sim.job import simulate
from tessera.runtime.sim.secure import build_secure
from tessera.testing import TableTrainer, TamperingAggregator, example_config

P = 5
CLIP = 10.0
JOB = "groups-test"


class _Counting(Simulation):
    """The simulator, counting the envelopes of each kind it carries."""

    kinds: Counter[int]

    def send(self, sender: NodeId, effect: Send) -> None:
        if isinstance(effect.message, Sealed):
            self.kinds[peek(effect.message.data).kind] += 1
        super().send(sender, effect)


@dataclass
class Run:
    stats: list[RoundStats]
    trainer: TableTrainer
    devices: DeviceModel
    samples: npt.NDArray[np.int64]
    secure: SecureParams
    params: RoundParams
    nodes: list[NodeId]
    kinds: Counter[int]

    def tree(self, round: int) -> Tree:
        return derive_tree(
            job_id=JOB,
            round=round,
            nodes=dict.fromkeys(self.nodes),
            contributors=round_cohort(self.params, self.nodes, round),
            params=self.secure.tree,
        )

    def plain(self, members: tuple[str, ...]) -> npt.NDArray[np.float64]:
        """The plaintext sum of ``members``' clipped, weighted vectors."""
        total = np.zeros(P + TAIL)
        for m in members:
            i = self.nodes.index(NodeId(m))
            total += weighted_vector(
                self.trainer.table[i],
                int(self.samples[i]),
                float(self.trainer.loss[i]),
                clip=self.secure.clip,
                max_weight=self.secure.max_weight,
                loss_cap=self.secure.loss_cap,
            )
        return total


def run(
    *,
    n: int,
    k: int = 3,
    group_size: int = 4,
    min_group: int = 1,
    floor: int | None = None,
    backups: int = 1,
    dropout: float = 0.0,
    rounds: int = 1,
    seed: int = 0,
    fail: Callable[[int, list[NodeId]], npt.NDArray[np.bool_]] | None = None,
    group_sums: bool = True,
    tamper: tuple[str, int, bool] | None = None,
) -> Run:
    """A secure simulated job over ``TableTrainer`` updates; ``tamper`` names the (leaf
    group, position) of round 0 whose aggregator lies, and whether only to the coordinator."""
    samples = np.random.default_rng(seed + 1).integers(1, 30, size=n).astype(np.int64)
    nodes = [NodeId(f"node-{i:06d}") for i in range(n)]
    params = RoundParams(job_id=JobId(JOB), rounds=rounds, round_timeout=1e4, seed=seed)
    secure = SecureParams(
        tree=TreeParams(k=k, group_size=group_size, fan_in=3, min_group=min_group, backups=backups),
        clip=CLIP,
        max_weight=float(samples.max()),
        group_sums=group_sums,
        group_floor=floor,
    )
    coordinator, machines = build_secure(
        nodes,
        params=params,
        secure=secure,
        initial_weights=np.zeros(P, np.float32),
        strategy=make_strategy("fedavg"),
        seed=seed,
    )
    trainer = TableTrainer(samples, dim=P, seed=seed)
    devices = DeviceModel.sample(
        n, dropout=dropout, speed_sigma=0.5, samples_per_second=50, seed=seed
    )
    stats: list[RoundStats] = []
    result = Run(stats, trainer, devices, samples, secure, params, nodes, Counter())
    if tamper is not None:
        group, position, disclosed = tamper
        bad = result.tree(0).group(group).aggregators[position]
        honest = machines[nodes.index(bad)].aggregator
        machines[nodes.index(bad)].aggregator = TamperingAggregator(
            bad,
            honest.job_id,
            honest.keys,
            honest.directory,
            honest.tree_check,
            targets=(group,),
            disclosed=disclosed,
        )
    sim = _Counting(
        coordinator,
        nodes,
        trainer,
        devices,
        samples,
        local_epochs=1,
        seed=seed,
        on_round=stats.append,
        machines=machines,
        fail_aggregators=fail,
    )
    sim.kinds = result.kinds
    sim.run()
    return result


def check_round(r: Run, round: int) -> None:
    """Every disclosed group: the plaintext sum of exactly its committed, surviving
    members, at least the floor of them, disjoint from the others; all of them add up
    to the round's total."""
    stats = r.stats[round]
    closed, tree = stats.closed, r.tree(round)
    assert stats.group_sums == closed.group_sums
    if closed.skipped:
        assert closed.group_sums == ()
        return
    assert closed.groups_withheld is None  # honest aggregators: the parts add up
    alive = {n for n, gone in zip(r.nodes, r.devices.dropped(round), strict=True) if not gone}
    floor = r.secure.disclosure
    seen: set[str] = set()
    for disclosed in closed.group_sums:
        group = tree.group(disclosed.group)
        assert group.level == 0
        assert set(disclosed.members) == set(group.members) & alive  # the committed set
        assert len(disclosed.members) >= floor
        assert not seen & set(disclosed.members)
        seen |= set(disclosed.members)
        # within one ring step per member (stochastic rounding), as totals are checked
        step = 2.0**-r.secure.min_frac_bits
        atol = len(disclosed.members) * step + 1e-9
        np.testing.assert_allclose(disclosed.total, r.plain(disclosed.members), rtol=0, atol=atol)
    # Every included group was disclosed (smaller ones left the round): they make the total.
    assert seen == set(closed.included)
    totals = np.sum([g.total for g in closed.group_sums], axis=0)
    before = r.stats[round - 1].closed.weights if round else np.zeros(P, np.float32)
    step = closed.weights - before  # FedAvg adds the round's mean update
    np.testing.assert_allclose(step, totals[:-TAIL] / totals[-1], rtol=0, atol=1e-5)
    for group in tree.leaves:
        if len(set(group.members) & alive) < floor:
            assert not set(group.members) & set(closed.included)  # never under the floor


def failing(seed: int, share: float) -> Callable[[int, list[NodeId]], npt.NDArray[np.bool_]]:
    """Each round, about ``share`` of the nodes' aggregators go silent."""

    def fail(round: int, nodes: list[NodeId]) -> npt.NDArray[np.bool_]:
        return np.random.default_rng([seed, round, 7]).random(len(nodes)) < share

    return fail


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(8, 40),
    k=st.integers(2, 4),
    group_size=st.integers(2, 6),
    min_group=st.integers(1, 3),
    floor=st.sampled_from([None, 2, 3, 4]),
    dropout=st.sampled_from([0.0, 0.3]),
    failed=st.sampled_from([0.0, 0.1]),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_every_disclosed_group_is_its_committed_members_sum(
    n: int,
    k: int,
    group_size: int,
    min_group: int,
    floor: int | None,
    dropout: float,
    failed: float,
    seed: int,
    data: st.DataObject,
) -> None:
    min_group = min(min_group, group_size)
    floor = None if floor is None else min(floor, group_size)
    backups = data.draw(st.integers(0, k - 1), label="backups")
    r = run(
        n=n,
        k=k,
        group_size=group_size,
        min_group=min_group,
        floor=floor,
        backups=backups,
        dropout=dropout,
        rounds=2,
        seed=seed,
        fail=failing(seed, failed) if failed else None,
    )
    for round in range(2):
        check_round(r, round)


def test_a_job_without_the_switch_discloses_nothing_and_sends_no_group_sum() -> None:
    off = run(n=24, rounds=2, group_sums=False)
    assert all(s.group_sums == () and s.closed.group_sums == () for s in off.stats)
    assert off.kinds[Kind.GROUP_SUM] == 0 and off.kinds[Kind.PARTIAL] > 0
    on = run(n=24, rounds=2)
    leaves = sum(len(on.tree(r).leaves) for r in range(2))
    assert on.kinds[Kind.GROUP_SUM] == 3 * leaves  # every leaf seat, once a round
    for round in range(2):
        check_round(on, round)
    # The protocol is otherwise the same: the same model, bit for bit.
    assert on.stats[-1].closed.weights.tobytes() == off.stats[-1].closed.weights.tobytes()


def test_dropouts_below_the_floor_leave_the_round() -> None:
    """A floor above min_group: groups thinned below it by dropouts are neither disclosed
    nor in the total (the total less the others' sums would be theirs)."""
    r = run(n=40, group_size=5, min_group=2, floor=4, dropout=0.3, rounds=3, seed=11)
    thinned = 0
    for round in range(3):
        check_round(r, round)
        alive = ~r.devices.dropped(round)
        for group in r.tree(round).leaves:
            left = sum(alive[r.nodes.index(m)] for m in group.members)
            thinned += 2 <= left < 4
    assert thinned > 0  # the scenario really has groups between min_group and the floor


def test_a_seat_that_tells_the_coordinator_other_words_withholds_the_round() -> None:
    """The consistency check: the leaf groups' sums must add up to the audited total."""
    honest = run(n=24)
    leaf = honest.tree(0).leaves[1].id
    lied = run(n=24, tamper=(leaf, 1, True))
    closed = lied.stats[0].closed
    assert closed.group_sums == ()
    assert closed.groups_withheld is not None and "do not add up" in closed.groups_withheld
    # The total it passed up was honest: the round itself is unchanged.
    assert not closed.blamed
    assert closed.weights.tobytes() == honest.stats[0].closed.weights.tobytes()


def test_a_seat_that_forges_its_sum_up_is_named_and_the_rest_disclosed() -> None:
    """Forging the sum it passes up (and telling the coordinator the same words): the
    audit names it, its group leaves the round, and the other groups still add up."""
    r = run(n=24, tamper=("L1", 1, False))
    closed = r.stats[0].closed
    assert any("L1" in entry for entry in closed.blamed), closed.blamed
    assert closed.groups_withheld is None
    assert "L1" not in {g.group for g in closed.group_sums}
    check_round(r, 0)


def test_simulate_hands_each_rounds_group_sums_and_starting_model_to_on_groups() -> None:
    """``simulate(on_groups=...)``: what group-level valuation is built on."""
    cfg = example_config()
    cfg = cfg.model_copy(
        update={
            "federation": cfg.federation.model_copy(
                update={"rounds": 2, "fraction": 1.0, "min_participants": 1}
            ),
            "secure": cfg.secure.model_copy(update={"group_size": 5}),
            "baseline": cfg.baseline.model_copy(update={"enabled": False}),
            "contributions": ContributionsSection(),
        }
    )
    job = prepare_job(cfg).first_nodes(20)
    seen: list[tuple[int, tuple[GroupSum, ...], np.ndarray]] = []
    models: list[np.ndarray] = []
    result = simulate(
        job,
        on_round=lambda _, weights: models.append(weights.copy()),
        on_groups=lambda r, sums, start: seen.append((r, sums, start.copy())),
    )
    assert [r for r, _, _ in seen] == [0, 1]
    np.testing.assert_array_equal(seen[0][2], job.initial_weights)
    np.testing.assert_array_equal(seen[1][2], models[0])
    for (_, sums, _), record in zip(seen, result.rounds, strict=True):
        assert len(sums) > 1  # several leaf groups, each disclosed
        assert sorted(m for g in sums for m in g.members) == sorted(record.included)
        assert all(len(g.members) >= 2 and g.total[-1] > 0 for g in sums)
        # The summed updates, the quality words (3 + the classes), the tail.
        words = job.layout.size + 3 + len(job.classes) + TAIL
        assert all(g.total.shape == (words,) for g in sums)
    # A job without the section: the callback sees rounds, never a group sum.
    plain = prepare_job(cfg.model_copy(update={"contributions": None})).first_nodes(20)
    empty: list[int] = []
    simulate(plain, on_groups=lambda r, sums, _: empty.extend([r] * (not sums)))
    assert empty == [0, 1]

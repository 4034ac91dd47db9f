"""Federated statistics through the secure tree: the plaintext total, and nothing else.

Each node's statistics vector is secret-shared up the same tree as a training
update; the coordinator decodes only the total. Counts (present, missing,
category and sketch buckets) are whole numbers and come out exactly; real
sums are rounded into the ring and come out within one ring step per node.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.data.statistics import StatisticsPlan
from tessera.errors import DataError, RemoteProtocolError
from tessera.ids import JobId, NodeId
from tessera.protocol.messages import SecureAssignment, TrainRequest
from tessera.protocol.topology import TreeParams
from tessera.runtime.sim.statistics import secure_totals

PLAN = StatisticsPlan(("score", "hours"), (("school", ("a", "b", "c")),))


@st.composite
def node_tables(draw: st.DrawFn) -> list[pd.DataFrame]:
    n_nodes = draw(st.integers(6, 14))  # k = 3 aggregators outside a group of 2 or 3
    tables = []
    for _ in range(n_nodes):
        rows = draw(st.integers(1, 8))
        score = draw(
            st.lists(
                st.one_of(st.integers(-500, 500).map(float), st.just(np.nan)),
                min_size=rows,
                max_size=rows,
            )
        )
        hours = draw(
            st.lists(st.integers(0, 10_000).map(lambda v: v / 8), min_size=rows, max_size=rows)
        )
        school = draw(
            st.lists(st.sampled_from(["a", "b", "c", "z", None]), min_size=rows, max_size=rows)
        )
        tables.append(pd.DataFrame({"score": score, "hours": hours, "school": school}))
    return tables


@settings(max_examples=25, deadline=None)
@given(node_tables(), st.integers(0, 3))
def test_secure_totals_equal_the_plaintext_totals_exactly(
    tables: list[pd.DataFrame], seed: int
) -> None:
    """Whole numbers and eighths (the ring keeps at least 3 fractional bits here)
    encode without rounding, so every word of the total is the plaintext sum."""
    result = secure_totals(
        PLAN,
        tables,
        seed=seed,
        tree=TreeParams(k=3, group_size=2, fan_in=3, min_group=2, backups=1),
    )
    plain = sum(PLAN.vector(t) for t in tables)
    assert result.nodes == len(tables)
    assert result.ring_step <= 1 / 8
    assert np.array_equal(result.total, plain)
    pooled = PLAN.totals(PLAN.vector(pd.concat(tables)))
    assert result.totals.categorical == pooled.categorical
    assert result.totals.numeric["score"].count == pooled.numeric["score"].count


def test_real_sums_are_within_one_ring_step_per_node() -> None:
    rng = np.random.default_rng(0)
    tables = [
        pd.DataFrame({"score": rng.normal(50, 10, 20), "hours": rng.random(20), "school": "a"})
        for _ in range(30)
    ]
    result = secure_totals(PLAN, tables)
    plain = sum(PLAN.vector(t) for t in tables)
    assert np.abs(result.total - plain).max() <= len(tables) * result.ring_step
    counts = PLAN.totals(plain).numeric["score"]
    assert result.totals.numeric["score"].count == counts.count == 600
    assert result.totals.numeric["score"].std == pytest.approx(counts.std, rel=1e-6)


def test_a_node_that_cannot_count_is_left_out_and_the_rest_are_totalled() -> None:
    good = pd.DataFrame({"score": [1.0, 2.0], "hours": [0.5, 1.0], "school": ["a", "b"]})
    bad = good.assign(score=["x", "y"])  # not numeric: this node declines
    tables = [good] * 6 + [bad]
    tree = TreeParams(k=3, group_size=2, fan_in=3, min_group=1)  # a group of one still counts
    result = secure_totals(PLAN, tables, tree=tree)
    assert result.nodes == 6
    assert result.totals.numeric["score"].count == 12


def test_too_few_nodes_is_an_error_not_a_total() -> None:
    good = pd.DataFrame({"score": [1.0], "hours": [0.5], "school": ["a"]})
    bad = good.assign(score=["x"])
    tree = TreeParams(k=3, group_size=2, fan_in=3, min_group=1)
    with pytest.raises(DataError, match="totalled 6 node"):
        secure_totals(PLAN, [good] * 6 + [bad], min_nodes=7, tree=tree)


def seats(*aggregators: str) -> SecureAssignment:
    """A position in a group served by ``aggregators`` (a 64-bit ring, 8 fraction bits)."""
    return SecureAssignment(
        group="L0",
        clip=1.0,
        aggregators=tuple(NodeId(a) for a in aggregators),
        backups=(),
        full_position=0,
        ring_bits=64,
        frac_bits=8,
        ring_terms=6,
        max_weight=1.0,
        loss_cap=20.0,
        tree_digest="0" * 64,
    )


def test_a_statistics_request_carries_no_weights_and_is_secure() -> None:
    assignment = seats("a", "b")
    with pytest.raises(RemoteProtocolError, match="no weights"):
        TrainRequest(
            job_id=JobId("j"),
            round=0,
            weights=np.zeros(3, np.float32),  # a model where only counting is asked
            deadline=1.0,
            secure=assignment,
            statistics=True,
        )
    with pytest.raises(RemoteProtocolError, match="is secure"):
        TrainRequest(
            job_id=JobId("j"),
            round=0,
            weights=np.zeros(0, np.float32),
            deadline=1.0,
            statistics=True,
        )


def test_a_node_counts_only_in_the_statistics_round_its_job_declares() -> None:
    """A coordinator cannot turn a training round into a count of a node's records,
    nor skip a count the job declares (the node checks against its own TreeCheck, which
    knows how many statistics rounds open the job)."""
    from tessera.crypto.keys import NodeKeys
    from tessera.ids import COORDINATOR
    from tessera.protocol.contributor import Contributor, SecureContext
    from tessera.protocol.effects import Rejected
    from tessera.protocol.events import MessageReceived
    from tessera.protocol.params import RoundParams
    from tessera.protocol.treecheck import TreeCheck

    nodes = [NodeId(f"n{i}") for i in range(6)]
    params = RoundParams(job_id=JobId("j"), rounds=2)
    tree = TreeParams(k=3, group_size=2, fan_in=3)
    cases = [(0, 0, True), (1, 1, True), (1, 0, False), (2, 2, True), (2, 1, False)]
    for declared, round, statistics in cases:
        check = TreeCheck(params, nodes, tree, statistics=declared)
        keys = NodeKeys.from_seed(bytes(32))
        node = Contributor(nodes[0], JobId("j"), SecureContext(keys, {}, check))
        request = TrainRequest(
            job_id=JobId("j"),
            round=round,
            weights=np.zeros(0 if statistics else 2, np.float32),
            deadline=9.0,
            secure=seats(*nodes[1:4]),
            statistics=statistics,
        )
        [refused] = node.handle(MessageReceived(sender=COORDINATOR, message=request), 0.0)
        assert isinstance(refused, Rejected)
        assert "only in the statistics rounds the job declares" in refused.reason


def test_a_lying_count_word_cannot_fail_the_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node may craft any words it shares: who is in the total is what the committed
    groups say, not the total's count word (else one node could stop every job)."""
    from tessera.protocol import contributor

    monkeypatch.setattr(contributor, "_counted", lambda v: np.concatenate([v, [0.0, 0.0, 5.0]]))
    good = pd.DataFrame({"score": [1.0, 2.0], "hours": [0.5, 1.0], "school": ["a", "b"]})
    result = secure_totals(PLAN, [good] * 7, tree=TreeParams(k=3, group_size=2, fan_in=3))
    assert result.nodes == 7
    assert result.totals.numeric["score"].count == 14


def test_a_learning_rate_schedule_counts_training_rounds_not_statistics_rounds() -> None:
    """With two statistics rounds, round 2 is the job's first training round: a schedule
    must read round 0 there (else a cosine schedule would run past its end)."""
    from dataclasses import replace

    from tessera.crypto.keys import NodeKeys
    from tessera.ids import COORDINATOR
    from tessera.protocol.contributor import Contributor, SecureContext
    from tessera.protocol.effects import RequestLocalTraining
    from tessera.protocol.events import MessageReceived
    from tessera.protocol.params import RoundParams
    from tessera.protocol.treecheck import TreeCheck
    from tessera.runtime.host import training_task

    nodes = [NodeId(f"n{i}") for i in range(6)]
    params = RoundParams(job_id=JobId("j"), rounds=2)
    for declared in (0, 2):
        check = TreeCheck(
            params, nodes, TreeParams(k=3, group_size=2, fan_in=3), statistics=declared
        )
        round = declared  # the first training round
        tree = check.tree(round)
        group = next(g for g in tree.groups if g.level == 0)
        node = Contributor(
            group.members[0], JobId("j"), SecureContext(NodeKeys.from_seed(bytes(32)), {}, check)
        )
        assignment = replace(seats(*group.aggregators), group=group.id, tree_digest=tree.digest())
        request = TrainRequest(
            job_id=JobId("j"),
            round=round,
            weights=np.zeros(2, np.float32),
            deadline=9.0,
            secure=replace(assignment, backups=group.backups),
        )
        [train] = node.handle(MessageReceived(sender=COORDINATOR, message=request), 0.0)
        assert isinstance(train, RequestLocalTraining), train
        assert (train.round, train.schedule_round) == (declared, 0)
        assert training_task(train, 7).schedule_round == 0

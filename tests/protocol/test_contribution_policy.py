"""The coordinator acts on the contribution policy's verdicts (``ContributorsRated``):
excluded contributors are not asked again and the round record says why; weight
factors scale a contributor's part of the mean; both survive a snapshot."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.errors import LocalProtocolError
from tessera.ids import JobId, NodeId
from tessera.protocol import Coordinator, RoundParams, make_strategy
from tessera.protocol.effects import Rejected, RoundClosed, Send
from tessera.protocol.events import ContributorsRated, JobStarted, MessageReceived
from tessera.protocol.messages import UpdateSubmission

JOB = JobId("job")
NODES = [NodeId(f"n{i}") for i in range(5)]


def coordinator(rounds: int = 3) -> Coordinator:
    params = RoundParams(job_id=JOB, rounds=rounds, round_timeout=10.0)
    return Coordinator(params, NODES, np.zeros(2, np.float32), make_strategy("fedavg"))


def answer(c: Coordinator, round: int, nodes: list[NodeId], deltas: dict[NodeId, float]) -> list:
    out: list = []
    for node in nodes:
        message = UpdateSubmission(
            job_id=JOB,
            round=round,
            delta=np.full(2, deltas.get(node, 1.0), np.float32),
            num_samples=2,
            loss=1.0,
        )
        out = c.handle(MessageReceived(sender=node, message=message), 1.0 + round)
    return out


def asked(effects: list) -> set[NodeId]:
    return {e.recipient for e in effects if isinstance(e, Send)}


def closed(effects: list) -> RoundClosed:
    (rc,) = [e for e in effects if isinstance(e, RoundClosed)]
    return rc


def test_an_excluded_contributor_is_not_asked_again_and_the_record_says_why() -> None:
    c = coordinator()
    c.handle(JobStarted(), 0.0)
    verdict = ContributorsRated(excluded={NODES[1]: "score 3.1 deviations below the median"})
    assert c.handle(verdict, 0.5) == []
    out = answer(c, 0, NODES, {})  # round 0 was in flight: everybody still counts
    assert closed(out).participants == 5 and closed(out).excluded == ()
    assert asked(out) == set(NODES) - {NODES[1]}
    out = answer(c, 1, [n for n in NODES if n != NODES[1]], {})
    rc = closed(out)
    assert rc.excluded == ((NODES[1], "score 3.1 deviations below the median"),)
    assert NODES[1] not in rc.included and rc.participants == 4
    again = ContributorsRated(excluded={NODES[1]: "a later reason"})
    c.handle(again, 2.5)  # the first verdict stands
    assert c.excluded[NODES[1]] == (1, "score 3.1 deviations below the median")


@settings(max_examples=40, deadline=None)
@given(
    factors=st.lists(st.floats(0.01, 1.0), min_size=5, max_size=5),
    deltas=st.lists(st.floats(-10, 10), min_size=5, max_size=5),
)
def test_weight_factors_scale_each_contributors_part_of_the_mean(
    factors: list[float], deltas: list[float]
) -> None:
    c = coordinator(rounds=1)
    c.handle(ContributorsRated(weights=dict(zip(NODES, factors, strict=True))), 0.0)
    c.handle(JobStarted(), 0.0)  # a verdict before the start holds from round 0
    rc = closed(answer(c, 0, NODES, dict(zip(NODES, deltas, strict=True))))
    f, d = np.array(factors), np.array(deltas, np.float32).astype(np.float64)
    expected = np.full(2, (f * d).sum() / f.sum())
    np.testing.assert_allclose(rc.weights, expected, rtol=1e-5, atol=1e-5)
    assert rc.num_samples == 10  # the records counted are the records, not their weights


def test_verdicts_about_strangers_are_refused_and_a_bad_factor_is_a_local_error() -> None:
    c = coordinator()
    c.handle(JobStarted(), 0.0)
    out = c.handle(ContributorsRated(excluded={NodeId("stranger"): "no"}), 0.5)
    assert isinstance(out[0], Rejected) and c.excluded == {}
    with pytest.raises(LocalProtocolError, match=r"\(0, 1\]"):
        c.handle(ContributorsRated(weights={NODES[0]: 0.0}), 0.5)


def test_verdicts_survive_a_snapshot_and_a_snapshot_waits_for_the_next_opening() -> None:
    c = coordinator()
    c.handle(JobStarted(), 0.0)
    c.handle(ContributorsRated(excluded={NODES[2]: "harm"}, weights={NODES[3]: 0.5}), 0.5)
    with pytest.raises(LocalProtocolError, match="as a round opens"):
        c.snapshot()  # the verdicts would open this round differently on restore
    out = answer(c, 0, NODES, {})
    snap = c.snapshot()
    assert snap.excluded == {NODES[2]: (1, "harm")} and snap.ratings == {NODES[3]: 0.5}
    params = RoundParams(job_id=JOB, rounds=3, round_timeout=10.0)
    restored = Coordinator.restore(
        snap, params, NODES, np.zeros(2, np.float32), make_strategy("fedavg")
    )
    deltas = {NODES[3]: 3.0}
    left = [n for n in NODES if n != NODES[2]]
    assert asked(out) == set(left)
    again = closed(answer(restored, 1, left, deltas)).weights
    np.testing.assert_array_equal(again, closed(answer(c, 1, left, deltas)).weights)

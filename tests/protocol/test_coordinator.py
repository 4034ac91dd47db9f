"""The coordinator and contributor machines, driven by hand: no I/O, no mocks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.errors import LocalProtocolError, RemoteProtocolError
from tessera.ids import COORDINATOR, JobId, NodeId
from tessera.protocol import Contributor, Coordinator, RoundParams, make_strategy, select_cohort
from tessera.protocol.effects import (
    CancelTimer,
    JobFinished,
    Rejected,
    RequestLocalTraining,
    RoundClosed,
    Send,
    StartTimer,
)
from tessera.protocol.events import (
    JobStarted,
    LocalTrainingFailed,
    LocalUpdateReady,
    MessageReceived,
    TimerFired,
)
from tessera.protocol.messages import TrainingDeclined, TrainRequest, UpdateSubmission
from tessera.protocol.states import ContributorState, CoordinatorState
from tessera.protocol.timers import RoundDeadline

JOB = JobId("job")
NODES = [NodeId(f"n{i}") for i in range(5)]


def coordinator(rounds: int = 1, **kw: float) -> Coordinator:
    params = RoundParams(job_id=JOB, rounds=rounds, round_timeout=10.0, **kw)  # type: ignore[arg-type]
    return Coordinator(params, NODES, np.zeros(3, np.float32), make_strategy("fedavg"))


def update(round: int, delta: list[float], n: int, job: JobId = JOB) -> UpdateSubmission:
    return UpdateSubmission(
        job_id=job, round=round, delta=np.array(delta, np.float32), num_samples=n, loss=1.0
    )


def closed(effects: list) -> RoundClosed:
    (rc,) = [e for e in effects if isinstance(e, RoundClosed)]
    return rc


def test_round_is_the_sample_weighted_mean_of_updates() -> None:
    c = coordinator()
    effects = c.handle(JobStarted(), 0.0)
    sends = [e for e in effects if isinstance(e, Send)]
    assert {s.recipient for s in sends} == set(NODES)
    assert any(isinstance(e, StartTimer) and e.at == 10.0 for e in effects)
    out: list = []
    for i, node in enumerate(NODES):
        out = c.handle(MessageReceived(sender=node, message=update(0, [i, 1, -i], i + 1)), 1.0)
    rc = closed(out)
    w = np.arange(1, 6, dtype=np.float64)
    expected = np.array([(w * np.arange(5)).sum(), w.sum(), -(w * np.arange(5)).sum()]) / w.sum()
    np.testing.assert_allclose(rc.weights, expected, rtol=1e-6)
    assert rc.participants == 5 and not rc.skipped and rc.num_samples == 15
    assert rc.skip_reason is None
    assert any(isinstance(e, CancelTimer) for e in out)
    assert any(isinstance(e, JobFinished) for e in out)
    assert c.state is CoordinatorState.FINISHED


@settings(max_examples=50, deadline=None)
@given(
    delta=st.lists(st.floats(-100, 100, width=32), min_size=1, max_size=8),
    counts=st.lists(st.integers(1, 10_000), min_size=1, max_size=5),
)
def test_fedavg_of_identical_updates_is_that_update(delta: list[float], counts: list[int]) -> None:
    nodes = [NodeId(f"n{i}") for i in range(len(counts))]
    params = RoundParams(job_id=JOB, rounds=1)
    c = Coordinator(params, nodes, np.zeros(len(delta), np.float32), make_strategy("fedavg"))
    c.handle(JobStarted(), 0.0)
    out: list = []
    for node, n in zip(nodes, counts, strict=True):
        out = c.handle(MessageReceived(sender=node, message=update(0, delta, n)), 0.0)
    np.testing.assert_allclose(
        closed(out).weights, np.array(delta, np.float32), rtol=1e-5, atol=1e-4
    )


@settings(max_examples=50, deadline=None)
@given(
    deltas=st.lists(st.floats(-10, 10, width=32), min_size=2, max_size=6),
    counts=st.lists(st.integers(1, 1000), min_size=6, max_size=6),
)
def test_fedavg_respects_sample_weights(deltas: list[float], counts: list[int]) -> None:
    nodes = [NodeId(f"n{i}") for i in range(len(deltas))]
    c = Coordinator(
        RoundParams(job_id=JOB, rounds=1), nodes, np.zeros(1, np.float32), make_strategy("fedavg")
    )
    c.handle(JobStarted(), 0.0)
    out: list = []
    for node, d, n in zip(nodes, deltas, counts, strict=False):
        out = c.handle(MessageReceived(sender=node, message=update(0, [d], n)), 0.0)
    n = np.array(counts[: len(deltas)], np.float64)
    expected = (np.array(deltas, np.float64) * n).sum() / n.sum()
    np.testing.assert_allclose(closed(out).weights[0], expected, rtol=1e-5, atol=1e-5)


def test_deadline_closes_with_the_answers_in_hand() -> None:
    c = coordinator(rounds=2)
    c.handle(JobStarted(), 0.0)
    c.handle(MessageReceived(sender=NODES[0], message=update(0, [1, 1, 1], 4)), 1.0)
    c.handle(
        MessageReceived(
            sender=NODES[1], message=TrainingDeclined(job_id=JOB, round=0, reason="battery")
        ),
        1.0,
    )
    out = c.handle(TimerFired(timer=RoundDeadline(round=0)), 10.0)
    rc = closed(out)
    assert rc.participants == 1 and rc.selected == 5
    np.testing.assert_allclose(rc.weights, [1, 1, 1])
    # the next round opened at once, with a new deadline
    assert any(isinstance(e, StartTimer) and e.at == 20.0 for e in out)
    assert c.round == 1


def test_round_below_minimum_is_skipped_not_fatal() -> None:
    c = coordinator(rounds=2, min_updates=3)
    c.handle(JobStarted(), 0.0)
    c.handle(MessageReceived(sender=NODES[0], message=update(0, [5, 5, 5], 4)), 1.0)
    rc = closed(c.handle(TimerFired(timer=RoundDeadline(round=0)), 10.0))
    assert rc.skipped and rc.participants == 1
    assert rc.skip_reason == "1 of 5 selected nodes' updates arrived, 3 needed"  # the record says
    np.testing.assert_array_equal(rc.weights, np.zeros(3))
    assert c.state is CoordinatorState.COLLECTING


@pytest.mark.parametrize(
    ("sender", "message", "reason"),
    [
        (NODES[0], update(0, [1, 1, 1], 1, job=JobId("other")), "unknown job"),
        (NODES[0], update(3, [1, 1, 1], 1), "not open"),
        (NodeId("stranger"), update(0, [1, 1, 1], 1), "not selected"),
        (NODES[0], update(0, [1, 1], 1), "layout"),
        (
            NODES[0],
            TrainRequest(job_id=JOB, round=0, weights=np.zeros(3, np.float32), deadline=1.0),
            "only the coordinator",
        ),
    ],
)
def test_bad_messages_are_refused_and_change_nothing(sender, message, reason) -> None:
    c = coordinator()
    c.handle(JobStarted(), 0.0)
    out = c.handle(MessageReceived(sender=sender, message=message), 1.0)
    assert len(out) == 1 and isinstance(out[0], Rejected) and reason in out[0].reason
    # the round still aggregates exactly the honest updates
    for node in NODES:
        out = c.handle(MessageReceived(sender=node, message=update(0, [2, 0, 0], 1)), 2.0)
    np.testing.assert_allclose(closed(out).weights, [2, 0, 0])


def test_duplicate_update_is_refused() -> None:
    c = coordinator()
    c.handle(JobStarted(), 0.0)
    c.handle(MessageReceived(sender=NODES[0], message=update(0, [1, 1, 1], 1)), 1.0)
    out = c.handle(MessageReceived(sender=NODES[0], message=update(0, [9, 9, 9], 1)), 1.0)
    assert isinstance(out[0], Rejected) and "already answered" in out[0].reason


def test_messages_after_the_job_are_refused() -> None:
    c = coordinator()
    c.handle(JobStarted(), 0.0)
    c.handle(TimerFired(timer=RoundDeadline(round=0)), 10.0)
    assert c.state is CoordinatorState.FINISHED
    out = c.handle(MessageReceived(sender=NODES[0], message=update(0, [1, 1, 1], 1)), 11.0)
    assert isinstance(out[0], Rejected)
    assert c.handle(TimerFired(timer=RoundDeadline(round=0)), 12.0) == []


def test_starting_twice_is_a_local_error_and_fails_the_machine() -> None:
    c = coordinator()
    c.handle(JobStarted(), 0.0)
    with pytest.raises(LocalProtocolError):
        c.handle(JobStarted(), 0.0)
    assert c.state is CoordinatorState.FAILED


def test_cohort_is_seeded_and_sized() -> None:
    params = RoundParams(job_id=JOB, rounds=3, fraction=0.25, min_participants=2, seed=4)
    nodes = [NodeId(f"n{i:03d}") for i in range(100)]
    a = select_cohort(params, nodes, 1)
    assert a == select_cohort(params, list(reversed(nodes)), 1)  # order of the pool is irrelevant
    assert len(a) == 25 and len(set(a)) == 25
    assert a != select_cohort(params, nodes, 2)
    assert len(select_cohort(params, nodes[:3], 0)) == 2


def test_invalid_messages_cannot_exist() -> None:
    with pytest.raises(RemoteProtocolError):
        update(0, [float("nan")], 1)
    with pytest.raises(RemoteProtocolError):
        update(0, [1.0], 0)
    with pytest.raises(RemoteProtocolError):
        UpdateSubmission(job_id=JOB, round=0, delta=np.zeros(2), num_samples=1, loss=0.0)  # float64


def request(round: int) -> MessageReceived:
    return MessageReceived(
        sender=COORDINATOR,
        message=TrainRequest(
            job_id=JOB, round=round, weights=np.zeros(2, np.float32), deadline=9.0
        ),
    )


def test_contributor_trains_then_answers() -> None:
    k = Contributor(NodeId("n0"), JOB)
    (eff,) = k.handle(request(0), 0.0)
    assert isinstance(eff, RequestLocalTraining) and eff.round == 0
    assert k.state is ContributorState.TRAINING
    ready = LocalUpdateReady(round=0, delta=np.ones(2, np.float32), num_samples=3, loss=0.5)
    (send,) = k.handle(ready, 1.0)
    assert isinstance(send, Send) and send.recipient == COORDINATOR
    assert isinstance(send.message, UpdateSubmission) and send.message.num_samples == 3
    assert k.state is ContributorState.IDLE


def test_contributor_drops_results_of_superseded_rounds() -> None:
    k = Contributor(NodeId("n0"), JOB)
    k.handle(request(0), 0.0)
    k.handle(request(1), 5.0)  # a slow device: round 1 starts before round 0 finished
    stale = LocalUpdateReady(round=0, delta=np.ones(2, np.float32), num_samples=3, loss=0.5)
    assert k.handle(stale, 6.0) == []
    assert k.state is ContributorState.TRAINING
    (send,) = k.handle(LocalTrainingFailed(round=1, reason="out of memory"), 7.0)
    assert isinstance(send.message, TrainingDeclined)


def test_contributor_refuses_foreign_and_replayed_requests() -> None:
    k = Contributor(NodeId("n0"), JOB)
    k.handle(request(2), 0.0)
    (rej,) = k.handle(request(1), 1.0)
    assert isinstance(rej, Rejected) and "not new" in rej.reason
    forged = MessageReceived(sender=NodeId("n9"), message=request(3).message)
    (rej,) = k.handle(forged, 1.0)
    assert isinstance(rej, Rejected)
    assert k.round == 2


def test_contributor_past_the_deadline_declines_instead_of_uploading() -> None:
    k = Contributor(NodeId("n0"), JOB)
    k.handle(request(0), 0.0)  # deadline 9.0
    ready = LocalUpdateReady(round=0, delta=np.ones(2, np.float32), num_samples=3, loss=0.5)
    (send,) = k.handle(ready, 9.5)
    assert isinstance(send.message, TrainingDeclined) and "deadline" in send.message.reason
    assert k.state is ContributorState.IDLE


def test_withdrawn_participant_is_not_asked_from_the_next_round_on() -> None:
    from tessera.protocol.events import ParticipantWithdrawn

    c = coordinator(rounds=2)
    c.handle(JobStarted(), 0.0)
    assert c.handle(ParticipantWithdrawn(node=NODES[0]), 0.5) == []
    out: list = []
    for i, node in enumerate(NODES):  # round 0 is in flight: the withdrawn node still counts
        out = c.handle(MessageReceived(sender=node, message=update(0, [1, 1, 1], i + 1)), 1.0)
    assert closed(out).participants == len(NODES)
    asked = {e.recipient for e in out if isinstance(e, Send)}
    assert asked == set(NODES[1:])
    for node in NODES[1:]:
        out = c.handle(MessageReceived(sender=node, message=update(1, [1, 1, 1], 1)), 2.0)
    rc = closed(out)
    assert rc.participants == len(NODES) - 1 and NODES[0] not in rc.included
    refused = c.handle(ParticipantWithdrawn(node=NodeId("stranger")), 3.0)
    assert isinstance(refused[0], Rejected)

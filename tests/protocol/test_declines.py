"""A contributor that cannot train declines the round, saying why, and the round's
record keeps the reason (issue 17: a node short of memory) in both coordinators."""

from __future__ import annotations

import numpy as np

from tessera.ids import COORDINATOR, JobId, NodeId
from tessera.protocol.effects import Rejected
from tessera.protocol.events import LocalTrainingFailed
from tessera.protocol.messages import TrainingDeclined
from tessera.protocol.secure_coordinator import SecureParams
from tessera.protocol.topology import TreeParams
from tessera.testing import fixed_updates, plaintext_federation, secure_federation

SECURE = SecureParams(
    tree=TreeParams(k=3, group_size=4, fan_in=3, min_group=2),
    clip=1.0,
    max_weight=10.0,
    phase_timeout=1.0,
)
WHY = "training failed: the sandbox exceeded its memory limit of 256 MiB"


def test_a_plaintext_round_closes_on_the_decline_and_records_why() -> None:
    fed = plaintext_federation(nodes=3, rounds=1)
    fed.begin()
    fed.run()
    short, *rest = sorted(fed.tasks)
    fed.handle(short, LocalTrainingFailed(round=0, reason=WHY))
    fed.answer(fixed_updates(fed), nodes=rest)
    fed.run()  # every selected node answered: the round closes without a deadline
    (closed,) = fed.closed
    assert closed.participants == 2 and short not in closed.included
    assert closed.declined == ((short, WHY),)


def test_a_secure_round_records_the_decline_and_closes_without_the_node() -> None:
    fed = secure_federation(9, secure=SECURE, dim=3)
    fed.begin()
    fed.run()
    short, *rest = sorted(fed.tasks)
    fed.handle(short, LocalTrainingFailed(round=0, reason=WHY))
    fed.answer(fixed_updates(fed), nodes=rest)
    fed.run()
    assert fed.refused == []  # the decline taken, no more "take sealed envelopes"
    for t in np.arange(1.0, 60.0, 0.5):  # its shares' deadline: the aggregators give up on it
        fed.advance(float(t))
        fed.run()
        if fed.closed:
            break
    (closed,) = fed.closed
    assert not closed.skipped and short not in closed.included
    assert len(closed.included) == len(rest)
    assert closed.declined == ((short, WHY),)


def test_a_secure_coordinator_takes_declines_only_of_the_open_round_and_its_selected() -> None:
    fed = secure_federation(9, secure=SECURE, dim=3)
    fed.begin()
    fed.run()
    job = JobId("mini-secure")
    stranger, node = NodeId("stranger"), sorted(fed.tasks)[0]
    for sender, decline in [
        (stranger, TrainingDeclined(job_id=job, round=0, reason="not selected")),
        (node, TrainingDeclined(job_id=job, round=1, reason="not open")),
        (node, TrainingDeclined(job_id=JobId("other"), round=0, reason="another job")),
    ]:
        (effect,) = fed.inject(COORDINATOR, decline, sender=sender)
        assert isinstance(effect, Rejected) and "no decline of round" in effect.reason
    taken = TrainingDeclined(job_id=job, round=0, reason="ok")
    assert fed.inject(COORDINATOR, taken, sender=node) == []


def test_a_decline_after_the_round_closed_is_refused() -> None:
    fed = secure_federation(9, secure=SECURE, dim=3, rounds=1)
    fed.begin()
    fed.run()
    node = sorted(fed.tasks)[0]
    fed.answer(fixed_updates(fed))
    fed.run()
    for t in np.arange(1.0, 60.0, 0.5):
        fed.advance(float(t))
        fed.run()
    assert fed.closed  # the job is over: nothing is collected any more
    late = TrainingDeclined(job_id=JobId("mini-secure"), round=0, reason="late")
    (effect,) = fed.inject(COORDINATOR, late, sender=node)
    assert isinstance(effect, Rejected)

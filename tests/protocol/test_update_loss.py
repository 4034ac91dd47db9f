"""One contributor's non-finite loss is refused, not averaged: it would stop the job.

The coordinator stops a job whose round's mean loss is not finite
(divergence, issue 12); a single node sending ``loss = NaN`` with an honest
update must not be able to do that to everyone.
"""

from __future__ import annotations

import math

import numpy as np

from tessera.ids import JobId, NodeId
from tessera.protocol.coordinator import Coordinator
from tessera.protocol.effects import Rejected, RoundClosed
from tessera.protocol.events import JobStarted, MessageReceived
from tessera.protocol.messages import UpdateSubmission
from tessera.protocol.params import RoundParams
from tessera.protocol.strategies import make_strategy

NODES = [NodeId(f"n{i}") for i in range(3)]
JOB = JobId("j")


def test_a_nan_loss_is_refused_and_the_round_closes_on_the_others() -> None:
    params = RoundParams(job_id=JOB, rounds=2, round_timeout=10.0)
    coordinator = Coordinator(params, NODES, np.zeros(4, np.float32), make_strategy("fedavg"))
    coordinator.handle(JobStarted(), 0.0)

    def update(node: NodeId, loss: float) -> list[object]:
        message = UpdateSubmission(
            job_id=JOB, round=0, delta=np.full(4, 0.1, np.float32), num_samples=5, loss=loss
        )
        return list(coordinator.handle(MessageReceived(sender=node, message=message), 1.0))

    refused = update(NODES[0], math.nan)
    assert [e.reason for e in refused if isinstance(e, Rejected)] == [
        "update's training loss is NaN or infinite"
    ]
    update(NODES[0], 0.5)  # its honest answer is still taken (below: 3 participants)
    update(NODES[1], 0.5)
    effects = update(NODES[2], 0.7)
    [closed] = [e for e in effects if isinstance(e, RoundClosed)]
    assert closed.participants == 3 and math.isfinite(closed.mean_loss)
    assert coordinator.round == 1  # it goes on: no divergence


def test_a_contributor_whose_training_diverged_declines_instead_of_crashing() -> None:
    """A NaN update or loss from local training (a learning rate far too high) used to
    raise inside the contributor's machine; it now declines the round, saying why."""
    from tessera.ids import COORDINATOR
    from tessera.protocol.contributor import Contributor
    from tessera.protocol.effects import Send
    from tessera.protocol.events import LocalUpdateReady
    from tessera.protocol.messages import TrainingDeclined, TrainRequest

    for delta, loss, samples, reason in [
        (np.array([np.nan, 0.0], np.float32), 0.5, 5, "diverged"),
        (np.zeros(2, np.float32), math.inf, 5, "diverged"),
        (np.zeros(2, np.float32), 0.5, 0, "no records"),
    ]:
        node = Contributor(NODES[0], JOB)
        request = TrainRequest(job_id=JOB, round=0, weights=np.zeros(2, np.float32), deadline=9.0)
        node.handle(MessageReceived(sender=COORDINATOR, message=request), 0.0)
        ready = LocalUpdateReady(round=0, delta=delta, num_samples=samples, loss=loss)
        [sent] = node.handle(ready, 1.0)
        assert isinstance(sent, Send) and isinstance(sent.message, TrainingDeclined)
        assert reason in sent.message.reason

"""The contributor's machine: one per consenting node.

It holds no model: a train request names the round's shared global weights,
the machine asks its runtime to train (an effect), and turns the result into
an update for the coordinator. A result for a superseded round is dropped,
so a slow device can never submit stale work for the wrong round, and a
result finished after the deadline is not uploaded (only a short decline),
which saves the bandwidth of a model-sized message the coordinator would refuse.
"""

from __future__ import annotations

from tessera.errors import LocalProtocolError
from tessera.ids import COORDINATOR, JobId, NodeId
from tessera.protocol.effects import Effect, Rejected, RequestLocalTraining, Send
from tessera.protocol.events import (
    Event,
    LocalTrainingFailed,
    LocalUpdateReady,
    MessageReceived,
)
from tessera.protocol.messages import TrainingDeclined, TrainRequest, UpdateSubmission
from tessera.protocol.states import CONTRIBUTOR_TRANSITIONS, ContributorInput, ContributorState


class Contributor:
    __slots__ = ("deadline", "job_id", "node", "round", "state")

    def __init__(self, node: NodeId, job_id: JobId) -> None:
        self.node = node
        self.job_id = job_id
        self.state = ContributorState.IDLE
        self.round = -1
        self.deadline = 0.0

    def handle(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, MessageReceived):
            msg = event.message
            if event.sender != COORDINATOR or not isinstance(msg, TrainRequest):
                return [Rejected(sender=event.sender, reason="only train requests are taken")]
            if msg.job_id != self.job_id:
                return [Rejected(sender=event.sender, reason=f"no consent to job {msg.job_id!r}")]
            if msg.round <= self.round:
                return [Rejected(sender=event.sender, reason=f"round {msg.round} is not new")]
            self._transition(ContributorInput.TRAIN_REQUEST)
            self.round, self.deadline = msg.round, msg.deadline
            return [RequestLocalTraining(round=msg.round, weights=msg.weights, config=msg.config)]
        if isinstance(event, LocalUpdateReady | LocalTrainingFailed):
            if not (self.state is ContributorState.TRAINING and event.round == self.round):
                return []  # the result of a superseded round is dropped
            reply: UpdateSubmission | TrainingDeclined
            if isinstance(event, LocalUpdateReady) and now <= self.deadline:
                self._transition(ContributorInput.UPDATE_READY)
                reply = UpdateSubmission(
                    job_id=self.job_id,
                    round=event.round,
                    delta=event.delta,
                    num_samples=event.num_samples,
                    loss=event.loss,
                )
            else:
                self._transition(ContributorInput.TRAINING_FAILED)
                reason = (
                    event.reason if isinstance(event, LocalTrainingFailed) else "missed deadline"
                )
                reply = TrainingDeclined(job_id=self.job_id, round=event.round, reason=reason)
            return [Send(recipient=COORDINATOR, message=reply)]
        raise LocalProtocolError(f"contributor cannot handle {type(event).__name__}")

    def _transition(self, what: ContributorInput) -> None:
        try:
            self.state = CONTRIBUTOR_TRANSITIONS[(self.state, what)]
        except KeyError:
            state, self.state = self.state, ContributorState.FAILED
            msg = f"contributor: {what.value} not allowed in {state.value}"
            raise LocalProtocolError(msg) from None

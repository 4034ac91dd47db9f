"""The coordinator's machine for plaintext federated rounds.

Theory of operation: each round the coordinator selects a cohort from the
consented nodes (seeded, so any party can recompute it), sends them the
global model, and sets a deadline. Updates are folded into a running
sample-weighted sum as they arrive, so memory is one model whatever the
cohort size. The round closes when every selected node has answered or the
deadline fires; with at least ``min_updates`` updates the strategy applies
the mean delta, otherwise the round is skipped and the job goes on.

The machine never reads a clock: ``now`` comes with every event, and the
deadline is a timer the runtime fires back. Messages from unknown, unselected
or duplicate senders, or for another round, are refused with ``Rejected``
and change nothing.

Snapshots bound a restart: right after the step that closed a round (and
opened the next one), ``snapshot()`` is the machine's whole state as plain
data: the weights, the strategy's state, the withdrawn nodes, and the round
just opened with the ``now`` it was opened at. ``restore`` builds a fresh
machine from it by opening that round again at that ``now`` (everything a
round holds is derived from these), discarding the effects, which were
performed when the round first opened. The restored machine answers every
later event exactly as the original would. A snapshot taken at any other
moment would lose the round's progress, so it is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Self

import numpy as np

from tessera.errors import LocalProtocolError
from tessera.ids import NodeId
from tessera.protocol.buffering import staleness_weight
from tessera.protocol.effects import (
    CancelTimer,
    Effect,
    GroupSum,
    JobFinished,
    Rejected,
    RoundClosed,
    Send,
    StartTimer,
)
from tessera.protocol.events import (
    ContributorsRated,
    Event,
    JobStarted,
    MessageReceived,
    ParticipantWithdrawn,
    TimerFired,
)
from tessera.protocol.messages import (
    AggregateRequest,
    Message,
    Sealed,
    SecureAssignment,
    TrainingDeclined,
    TrainRequest,
    UpdateSubmission,
)
from tessera.protocol.params import RoundParams
from tessera.protocol.quality import RoundQuality
from tessera.protocol.states import COORDINATOR_TRANSITIONS, CoordinatorInput, CoordinatorState
from tessera.protocol.strategies import Strategy
from tessera.protocol.timers import RoundDeadline
from tessera.protocol.topology import Tree
from tessera.weights import Vector


def select_cohort(params: RoundParams, nodes: Sequence[NodeId], round: int) -> list[NodeId]:
    """The round's cohort, derived from the public seed and round number."""
    ordered = sorted(nodes)
    k = params.cohort_size(len(ordered))
    rng = np.random.default_rng([params.seed, round])
    picked = np.sort(rng.choice(len(ordered), size=k, replace=False))
    return [ordered[i] for i in picked]


def round_cohort(
    params: RoundParams, nodes: Sequence[NodeId], round: int, *, statistics: int = 0
) -> list[NodeId]:
    """Who contributes to ``round``: every node in one of the ``statistics`` rounds that
    open a job, else the cohort."""
    if round < statistics:
        return list(nodes)  # statistics are of every node's records, not of a sample
    return select_cohort(params, nodes, round)


@dataclass(frozen=True, kw_only=True, slots=True)
class CoordinatorSnapshot:
    """A coordinator machine at a round boundary; see the module docstring."""

    round: int  # the round open at the snapshot, with nothing consumed yet
    opened_at: float  # the ``now`` it was opened at
    weights: Vector
    strategy: Mapping[str, Vector]
    withdrawn: tuple[NodeId, ...]
    # A private job's ledger: the noise variance of every round released so far.
    spent: tuple[float, ...] = ()
    # The contribution policy's verdicts so far: who is left out (from which round,
    # why) and the weight factors of the rest (``ContributorsRated``).
    excluded: Mapping[NodeId, tuple[int, str]] = field(default_factory=lambda: MappingProxyType({}))
    ratings: Mapping[NodeId, float] = field(default_factory=lambda: MappingProxyType({}))
    # Per node, over the rounds that were applied: how often it was asked, and how often
    # its update was included (``Coordinator.answer_rate``).
    asked: Mapping[NodeId, int] = field(default_factory=lambda: MappingProxyType({}))
    heard: Mapping[NodeId, int] = field(default_factory=lambda: MappingProxyType({}))
    weight_total: float = 0.0  # reweighting by availability: the rounds' total weights
    weight_rounds: int = 0


#: The smallest weight factor availability reweighting gives (a node heard 20 times as
#: often as the least-heard one): bounded, so a few rare answers cannot dominate a round.
AVAILABILITY_FLOOR = 0.05


class Coordinator:
    def __init__(
        self,
        params: RoundParams,
        nodes: Sequence[NodeId],
        initial_weights: Vector,
        strategy: Strategy,
    ) -> None:
        if not nodes:
            raise LocalProtocolError("a job needs at least one consented node")
        if len(set(nodes)) != len(nodes):
            raise LocalProtocolError("node ids must be unique")
        self.params = params
        self.nodes = tuple(nodes)
        self.strategy = strategy
        self.weights = initial_weights.astype(np.float32, copy=True)
        self.state = CoordinatorState.IDLE
        self.round = -1
        self._selected: frozenset[NodeId] = frozenset()
        self.withdrawn: set[NodeId] = set()  # revoked consent: never asked to train again
        # Left out by the contribution policy: node -> (first round without it, why).
        self.excluded: dict[NodeId, tuple[int, str]] = {}
        self.ratings: dict[NodeId, float] = {}  # weight factors; 1 when not named
        self._ratings_at_open: Mapping[NodeId, float] = {}
        self.asked: dict[NodeId, int] = {}  # applied rounds a node was selected for
        self.heard: dict[NodeId, int] = {}  # ... and its update was included in
        self._factors: Mapping[NodeId, float] = {}  # the open round's weight factors
        self.weight_total, self.weight_rounds = 0.0, 0  # reweighting: rounds' total weights
        self._answered: set[NodeId] = set()
        self._declined: dict[NodeId, str] = {}  # the open round's declines: node -> why
        self._sum = np.zeros(self.weights.shape, np.float64)
        self._samples = 0
        self._weight = 0.0  # the samples, each times its contributor's rating
        self._steps = 0.0  # FedNova: the weighted sum of local steps
        self._loss_sum = 0.0
        self._updates = 0
        self._opened_at: float | None = None  # when the open round opened
        self._absent_at_open: frozenset[NodeId] = frozenset()

    # -- snapshots ------------------------------------------------------------
    def snapshot(self) -> CoordinatorSnapshot:
        """The machine's state right after a round opened (see the module docstring)."""
        if self.state is not CoordinatorState.COLLECTING or self._opened_at is None:
            raise LocalProtocolError("a snapshot needs an open round")
        if (
            self._round_progressed()
            or self._absent() != self._absent_at_open
            or self.ratings != self._ratings_at_open
        ):
            raise LocalProtocolError("a snapshot is taken only as a round opens")
        return CoordinatorSnapshot(
            round=self.round,
            opened_at=self._opened_at,
            weights=self.weights.copy(),
            strategy=self.strategy.state(),
            withdrawn=tuple(sorted(self.withdrawn)),
            excluded=MappingProxyType(dict(sorted(self.excluded.items()))),
            ratings=MappingProxyType(dict(sorted(self.ratings.items()))),
            asked=MappingProxyType(dict(sorted(self.asked.items()))),
            heard=MappingProxyType(dict(sorted(self.heard.items()))),
            weight_total=self.weight_total,
            weight_rounds=self.weight_rounds,
        )

    @classmethod
    def restore(cls, snapshot: CoordinatorSnapshot, /, *args: Any, **kwargs: Any) -> Self:
        """A machine built with ``cls(*args, **kwargs)``, then brought to ``snapshot``."""
        machine = cls(*args, **kwargs)
        if snapshot.weights.shape != machine.weights.shape:
            raise LocalProtocolError("the snapshot's weights do not match the job's model")
        machine.weights = snapshot.weights.astype(np.float32, copy=True)
        machine.strategy.load_state(snapshot.strategy)
        machine.withdrawn = set(snapshot.withdrawn)
        machine.excluded = dict(snapshot.excluded)
        machine.ratings = dict(snapshot.ratings)
        machine.asked, machine.heard = dict(snapshot.asked), dict(snapshot.heard)
        machine.weight_total, machine.weight_rounds = snapshot.weight_total, snapshot.weight_rounds
        machine._transition(CoordinatorInput.START)
        machine._open_round(snapshot.round, snapshot.opened_at)  # its effects were performed
        return machine

    @property
    def first_training_round(self) -> int:
        """Round 0 trains, unless a secure job's statistics rounds come first."""
        return 0

    # -- the one entry point ------------------------------------------------
    def _round_progressed(self) -> bool:
        """Whether the open round took anything in (a snapshot would lose it)."""
        return bool(self._answered)

    def handle(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, ParticipantWithdrawn):
            return self._withdraw(event.node)
        if isinstance(event, ContributorsRated):
            return self._rate(event)
        if isinstance(event, JobStarted):
            self._transition(CoordinatorInput.START)
            return self._open_round(0, now)
        if isinstance(event, MessageReceived):
            self._transition(CoordinatorInput.MESSAGE)
            return self._on_message(event, now)
        if isinstance(event, TimerFired):
            self._transition(CoordinatorInput.DEADLINE)
            if not isinstance(event.timer, RoundDeadline):
                raise self._failed(f"plaintext rounds set no {type(event.timer).__name__} timers")
            if self.state is CoordinatorState.COLLECTING and event.timer.round == self.round:
                return self._close_round(now, timer_pending=False)
            return []  # a stale timer of a closed round
        raise self._failed(f"cannot handle {type(event).__name__}")

    # -- internals -------------------------------------------------------------
    def _withdraw(self, node: NodeId) -> list[Effect]:
        if node not in self.nodes:
            return [Rejected(sender=node, reason=f"{node} is not a participant of this job")]
        self.withdrawn.add(node)
        return []

    def _absent(self) -> frozenset[NodeId]:
        """Who holds no seat and trains no more: withdrawn or excluded."""
        return frozenset(self.withdrawn | self.excluded.keys())

    def _rate(self, event: ContributorsRated) -> list[Effect]:
        """Take the contribution policy's verdicts; they hold from the next round opened."""
        effects: list[Effect] = []
        for node in sorted({*event.excluded, *event.weights}):
            if node not in self.nodes:
                effects.append(
                    Rejected(sender=node, reason=f"{node} is not a participant of this job")
                )
        for node, factor in event.weights.items():
            if not 0 < factor <= 1:
                raise self._failed(f"a contributor's weight factor must be in (0, 1], got {factor}")
            if node in self.nodes:
                self.ratings[node] = float(factor)
        for node, why in event.excluded.items():
            if node in self.nodes and node not in self.excluded:  # the first verdict stands
                self.excluded[node] = (self.round + 1, why)
        return effects

    def answer_rate(self, node: NodeId) -> float:
        """How often ``node``'s update was included when it was asked, over the applied
        rounds so far, with one heard and one missed round assumed (Laplace), so a node
        never asked yet stands at one half."""
        return (self.heard.get(node, 0) + 1) / (self.asked.get(node, 0) + 2)

    def _weight_factors(self) -> dict[NodeId, float]:
        """The open round's factor on each contributor's weight: its rating, times, when
        the job reweights by availability, the least answer rate over its own (at
        least ``AVAILABILITY_FLOOR``). A node asked in a fraction ``q`` of rounds and
        heard in a fraction ``a_i`` of those is included with probability ``q a_i``;
        weighted by ``1 / a_i`` its expected weight is its samples' whatever its
        availability, so the model does not lean to the nodes that are online most."""
        factors = dict(self.ratings)
        if not self.params.reweight_availability:
            return factors
        rates = {node: self.answer_rate(node) for node in self.nodes}
        least = min(rates.values())
        for node, rate in rates.items():
            factor = max(AVAILABILITY_FLOOR, least / rate)
            if factor < 1.0:
                factors[node] = factors.get(node, 1.0) * factor
        return factors

    def _divisor(self, weight: float) -> float:
        """What the round's weighted sum of updates is divided by: its own total weight,
        or, reweighting by availability, the mean total weight of the rounds so far,
        this one included. Dividing by the round's own total would undo the factors
        whenever only the often-online nodes answered (their mean is then the step);
        an expected total keeps each node's expected pull its samples'."""
        if not self.params.reweight_availability:
            return weight
        self.weight_total += weight
        self.weight_rounds += 1
        return self.weight_total / self.weight_rounds

    def _skip_reason(self, participants: int) -> str:
        """Why a round is skipped, for its record: what arrived against what it needs."""
        return (
            f"{participants} of {len(self._selected)} selected nodes' updates arrived, "
            f"{self.params.min_updates} needed"
        )

    def _count_answers(self, included: Sequence[str]) -> None:
        """An applied training round: each selected node asked once more, each included
        one heard once more."""
        if self.round < self.first_training_round:
            return
        for node in self._selected:
            self.asked[node] = self.asked.get(node, 0) + 1
        for name in included:
            self.heard[NodeId(name)] = self.heard.get(NodeId(name), 0) + 1

    def _transition(self, what: CoordinatorInput) -> None:
        next_state = COORDINATOR_TRANSITIONS.get((self.state, what))
        if next_state is None:
            raise self._failed(f"{what.value} not allowed in {self.state.value}")
        self.state = next_state

    def _failed(self, why: str) -> LocalProtocolError:
        """Our bug (a host fed this machine what it never asked for): it stops for good."""
        self.state = CoordinatorState.FAILED
        return LocalProtocolError(f"coordinator: {why}")

    def _open_round(self, round: int, now: float) -> list[Effect]:
        self.round = round
        self._opened_at, self._absent_at_open = now, self._absent()
        self._ratings_at_open = dict(self.ratings)
        self._factors = self._weight_factors()
        cohort = [
            n
            for n in select_cohort(self.params, self.nodes, round)
            if n not in self._absent_at_open
        ]
        self._selected = frozenset(cohort)
        self._answered = set()
        self._declined = {}
        self._sum[:] = 0.0
        self._samples = 0
        self._weight = 0.0
        self._steps = 0.0
        self._loss_sum = 0.0
        self._updates = 0
        self._included: list[str] = []
        self._staleness: dict[str, int] = {}  # a buffered job's: each update's, by sender
        deadline = now + self.params.round_timeout
        weights = self.weights
        weights.flags.writeable = False  # shared by every request of the round
        config = self.strategy.configure(round)
        effects: list[Effect] = [
            self._train_request(node, weights, deadline, config) for node in cohort
        ]
        effects.append(StartTimer(timer=RoundDeadline(round=round), at=deadline))
        return effects

    def _train_request(
        self,
        node: NodeId,
        weights: Vector,
        deadline: float,
        config: Mapping[str, float],
        secure: SecureAssignment | None = None,
        *,
        statistics: bool = False,
    ) -> Send:
        request = TrainRequest(
            job_id=self.params.job_id,
            round=self.round,
            weights=weights,
            deadline=deadline,
            config=config,
            secure=secure,
            statistics=statistics,
            max_staleness=None if self.params.buffer is None else self.params.max_staleness,
        )
        return Send(recipient=node, message=request)

    def _refusal(self, sender: NodeId, msg: Message) -> str | None:
        """Why a peer's message cannot be taken now, or None if it can."""
        if isinstance(msg, TrainRequest):
            return "only the coordinator sends train requests"
        if isinstance(msg, AggregateRequest | Sealed):
            return "plaintext rounds take only updates and declines"
        if msg.job_id != self.params.job_id:
            return f"unknown job {msg.job_id!r}"
        late = isinstance(msg, UpdateSubmission) and self._late_taken(msg)
        if (self.state is not CoordinatorState.COLLECTING or msg.round != self.round) and not late:
            return f"round {msg.round} is not open"
        if sender not in self._selected:
            return f"{sender} was not selected for round {msg.round}"
        if sender in self._answered:
            return f"{sender} already answered round {msg.round}"
        if isinstance(msg, UpdateSubmission) and msg.delta.shape != self.weights.shape:
            return "update does not match the model layout"
        if isinstance(msg, UpdateSubmission) and not math.isfinite(msg.loss):
            # One node's NaN must not read as the federation's divergence (and stop the job).
            return "update's training loss is NaN or infinite"
        if isinstance(msg, UpdateSubmission) and self.params.fednova and msg.steps < 1:
            return "this job normalises by local steps (FedNova): the update counts none"
        return self._staleness_refusal(msg) if isinstance(msg, UpdateSubmission) else None

    def _staleness_refusal(self, msg: UpdateSubmission) -> str | None:
        if not msg.staleness:
            return None
        if self.params.buffer is None:
            return "this job's rounds are synchronous: no stale update is taken"
        tau, most = self._stale(msg), self.params.max_staleness
        return f"update is {tau} rounds stale (over {most})" if tau > most else None

    def _stale(self, msg: UpdateSubmission) -> int:
        """How many rounds behind the open one the model ``msg`` was trained from is."""
        return self.round - msg.round + msg.staleness

    def _late_taken(self, msg: UpdateSubmission) -> bool:
        """A buffered job takes an update sent in a round that closed meanwhile into the
        open round, that much staler (it crossed the close on the wire)."""
        return (
            self.params.buffer is not None
            and self.state is CoordinatorState.COLLECTING
            and msg.round < self.round
            and self._stale(msg) <= self.params.max_staleness
        )

    def _on_message(self, event: MessageReceived, now: float) -> list[Effect]:
        msg, sender = event.message, event.sender
        reason = self._refusal(sender, msg)
        if reason is not None:
            return [Rejected(sender=sender, reason=reason)]
        if isinstance(msg, UpdateSubmission):
            weight = msg.num_samples * self._factors.get(sender, 1.0)
            tau = self._stale(msg)
            if tau:  # FedBuff: its weight times s(tau), the weight word's too
                weight *= staleness_weight(tau)
            if self.params.fednova:  # w * delta / tau, and w * tau beside it
                self._sum += np.float64(weight / msg.steps) * msg.delta
                self._steps += weight * msg.steps
            else:
                self._sum += np.float64(weight) * msg.delta
            self._samples += msg.num_samples
            self._weight += weight
            self._loss_sum += msg.num_samples * msg.loss
            self._updates += 1
            self._included.append(sender)
            self._staleness[sender] = tau
        else:  # a decline: _refusal lets nothing else through
            assert isinstance(msg, TrainingDeclined)
            self._declined[sender] = msg.reason
        self._answered.add(sender)
        buffered = self.params.buffer is not None and self._updates >= self.params.buffer
        if buffered or len(self._answered) == len(self._selected):
            return self._close_round(now, timer_pending=True)
        return []

    def _close_round(self, now: float, *, timer_pending: bool) -> list[Effect]:
        mean = None
        if self._samples:
            total = self._sum / self._divisor(self._weight)
            if self.params.fednova:  # times tau_eff: the weighted mean of tau
                total = total * (self._steps / self._weight)
            mean = total.astype(np.float32)
        return self._finish_round(
            now,
            mean_delta=mean,
            participants=self._updates,
            samples=self._samples,
            mean_loss=self._loss_sum / self._samples if self._samples else float("nan"),
            timer_pending=timer_pending,
            included=tuple(sorted(self._included)),
            staleness=self._staleness_of(sorted(self._included)),
        )

    def _staleness_of(self, included: Sequence[str]) -> tuple[int, ...]:
        """A buffered job's record of each included update's staleness; () when synchronous."""
        if self.params.buffer is None:
            return ()
        return tuple(self._staleness.get(node, 0) for node in included)

    def _finish_round(
        self,
        now: float,
        *,
        mean_delta: Vector | None,
        participants: int,
        samples: int,
        mean_loss: float,
        timer_pending: bool,
        blamed: tuple[str, ...] = (),
        included: tuple[str, ...] = (),
        capped: int = 0,
        epsilon: float | None = None,
        group_sums: tuple[GroupSum, ...] = (),
        groups_withheld: str | None = None,
        quality: RoundQuality | None = None,
        staleness: tuple[int, ...] = (),
        tree: Tree | None = None,
        silent: tuple[str, ...] = (),
    ) -> list[Effect]:
        """Apply the strategy (unless too few took part), report, open the next round."""
        effects: list[Effect] = []
        if timer_pending:
            effects.append(CancelTimer(timer=RoundDeadline(round=self.round)))
        skipped = mean_delta is None or participants < self.params.min_updates
        diverged = None
        if mean_delta is not None and not skipped:
            self._count_answers(included)
            weights = self.strategy.apply(self.weights, mean_delta)
            diverged = _divergence(self.round, weights, mean_loss)
            if diverged is None:
                self.weights = weights  # else the last finite model is kept, and the job stops
        self._transition(CoordinatorInput.ROUND_DONE)
        effects.append(
            RoundClosed(
                round=self.round,
                weights=self.weights,
                selected=len(self._selected),
                participants=participants,
                num_samples=samples,
                mean_loss=mean_loss,
                skipped=skipped,
                closed_at=now,
                blamed=blamed,
                included=included if not skipped else (),
                capped=capped,
                epsilon=epsilon,
                group_sums=group_sums if not skipped else (),
                groups_withheld=groups_withheld if not skipped else None,
                quality=quality if not skipped else None,
                staleness=staleness if not skipped else (),
                skip_reason=self._skip_reason(participants) if skipped else None,
                declined=tuple(sorted(self._declined.items())),
                tree=tree,
                silent_aggregators=silent,
                excluded=tuple(
                    (node, why)
                    for node, (first, why) in sorted(self.excluded.items())
                    if first == self.round
                ),
            )
        )
        done = self.round + 1 - self.first_training_round  # training rounds so far
        stopped = self._stop_reason() if done < self.params.rounds else None
        if done < self.params.rounds and diverged is None and stopped is None:
            effects.extend(self._open_round(self.round + 1, now))
        else:
            self._transition(CoordinatorInput.JOB_DONE)
            effects.append(
                JobFinished(weights=self.weights, rounds=done, error=diverged, stopped=stopped)
            )
        return effects

    def _stop_reason(self) -> str | None:
        """Why the job ends before its rounds without failing (a spent privacy budget)."""
        return None


#: A weight this large is an explosion, not a model: inputs and targets are standardized.
EXPLODED = 1e6


def _divergence(round: int, weights: Vector, mean_loss: float) -> str | None:
    """Why training diverged this round (a non-finite loss, or an exploded model), or None.

    A diverged model only gets worse, and a non-finite one is lost for good:
    the job stops with the last sound model and a reason people can act on.
    """
    finite = bool(np.isfinite(weights).all())
    largest = float(np.abs(weights).max()) if finite and weights.size else 0.0
    if math.isfinite(mean_loss) and finite and largest <= EXPLODED:
        return None
    if not math.isfinite(mean_loss):
        what = "the mean training loss is not finite"
    elif not finite:
        what = "the aggregated model is not finite"
    else:
        what = f"the aggregated model holds a weight of {largest:.3g} (over {EXPLODED:.0e})"
    return (
        f"training diverged in round {round}: {what}; the likely causes are "
        "a learning rate too high for this model (lower recipe.lr) or a target on a raw "
        "scale (keep data.standardize on); the model of the round before is kept"
    )

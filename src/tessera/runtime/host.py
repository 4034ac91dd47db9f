"""The one loop per role: feed a protocol machine its events, perform its effects, own its timers.

Theory of operation: a protocol machine is a function ``(event, now) ->
effects``. Somebody must deliver its events, carry out what it asks and
keep the timers it sets; if each runtime did that itself, the runtimes
would drift apart (they did: the simulator once read a FedProx term the
node agent did not). So every runtime, the simulator, the node agent and
the coordinator's job driver, wraps each machine in a ``Host`` and differs
only in the adapters it plugs in:

- ``Outbox``: where a ``Send`` goes (the simulated network; the mailbox
  over HTTPS; the driver's transaction, committed with the event).
- ``TrainerPort``: how a ``RequestLocalTraining`` is answered (a simulated
  device that answers later; the sandbox, at once). Every runtime receives
  the same ``TrainingTask``, built here, so the recipe's FedProx term, the
  round's seed and the weights mean the same thing everywhere.
- ``Clock``: what time it is, when to wake the host for its next timer,
  and, for a virtual clock that charges compute, what a call cost.
- ``Observer``: what is done with refusals, closed rounds and the end of
  the job (statistics, logs, the event log). Contribution indicators,
  privacy accounting and reports attach here, never inside the loops.

The host owns the timers: ``StartTimer`` and ``CancelTimer`` change its
table, ``fire_due`` fires what is due in deadline order, and ``replay``
rebuilds the table from a logged history without performing anything.
A training answer that comes back at once is handled after the effects
of the call that asked for it, in order, so no runtime recurses.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from tessera.ids import NodeId
from tessera.protocol.effects import (
    CancelTimer,
    Effect,
    JobFinished,
    Rejected,
    RequestLocalStatistics,
    RequestLocalTraining,
    RoundClosed,
    Send,
    StartTimer,
    StatisticsClosed,
)
from tessera.protocol.events import Event, TimerFired
from tessera.protocol.timers import Timer
from tessera.weights import Vector


def train_seed(job_seed: int, round: int) -> int:
    """The seed of every node's local training in ``round``: public, the same in every runtime.

    A node's shuffles then depend only on this, its data and its shuffle id, so a
    deployed node reproduces the simulator's result for the same node.
    """
    return int(np.random.default_rng([job_seed, 0x7A, round]).integers(2**31))


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainingTask:
    """What every runtime's trainer is asked to do, whoever carries it out."""

    round: int
    weights: Vector
    seed: int  # ``train_seed(job seed, round)``
    prox_mu: float | None  # the strategy's FedProx term; None keeps the recipe's own
    # The learning-rate schedule's round (``RequestLocalTraining.schedule_round``).
    schedule_round: int = 0
    quality: bool = False  # measure the records' quality too (``protocol.quality``)


def training_task(request: RequestLocalTraining, job_seed: int) -> TrainingTask:
    """The one reading of a train request's config, for every runtime."""
    return TrainingTask(
        round=request.round,
        weights=request.weights,
        seed=train_seed(job_seed, request.round),
        prox_mu=_prox_mu(request.config),
        schedule_round=request.round if request.schedule_round is None else request.schedule_round,
        quality=request.quality,
    )


def _prox_mu(config: Mapping[str, float]) -> float | None:
    value = config.get("prox_mu")
    return None if value is None else float(value)


class Machine(Protocol):
    def handle(self, event: Event, now: float) -> list[Effect]: ...


class Outbox(Protocol):
    def send(self, sender: NodeId, effect: Send) -> None: ...


class TrainerPort(Protocol):
    def start(self, actor: NodeId, task: TrainingTask) -> Event | None:
        """Begin training; return the answer if it is ready at once, else answer later."""
        ...


class CounterPort(Protocol):
    def count(self, actor: NodeId, round: int) -> Event | None:
        """Count this node's records by the job's statistics plan (``LocalStatisticsReady``
        or ``LocalTrainingFailed``); return the answer if ready at once, else answer later."""
        ...


class Clock(Protocol):
    def now(self) -> float: ...

    def wake(self, actor: NodeId, at: float) -> None:
        """Call the host's ``fire_due`` at ``at`` (a real clock's loop polls instead)."""
        ...

    def charge(self, actor: NodeId, seconds: float) -> None:
        """A call of ``actor``'s machine took ``seconds`` of CPU (virtual clocks spend it)."""
        ...


class Observer:
    """What a runtime does with the effects that are not I/O; every method is optional."""

    def rejected(self, actor: NodeId, effect: Rejected) -> None:
        """A peer's message was refused."""

    def round_closed(self, actor: NodeId, effect: RoundClosed) -> None:
        """A round closed (coordinators only)."""

    def statistics_closed(self, actor: NodeId, effect: StatisticsClosed) -> None:
        """The statistics round's total is in (coordinators only)."""

    def job_finished(self, actor: NodeId, effect: JobFinished) -> None:
        """The job ended (coordinators only)."""


class WallClock:
    """Real time, for deployed processes: their loops poll ``Host.next_timer``."""

    def __init__(self, source: Callable[[], float] = time.time) -> None:
        self.source = source

    def now(self) -> float:
        return self.source()

    def wake(self, actor: NodeId, at: float) -> None:
        """Nothing to schedule: the process's loop waits until ``next_timer``."""

    def charge(self, actor: NodeId, seconds: float) -> None:
        """Real time passes by itself."""


class Host:
    """One machine with its adapters; see the module docstring."""

    def __init__(
        self,
        actor: NodeId,
        machine: Machine,
        *,
        outbox: Outbox,
        clock: Clock,
        job_seed: int,
        trainer: TrainerPort | None = None,
        counter: CounterPort | None = None,
        observer: Observer | None = None,
        cpu_clock: Callable[[], float] | None = None,
    ) -> None:
        self.actor = actor
        self.machine = machine
        self.outbox = outbox
        self.clock = clock
        self.job_seed = job_seed
        self.trainer = trainer
        self.counter = counter
        self.observer = observer or Observer()
        self.cpu_clock = cpu_clock  # set: every call's CPU time is charged to the clock
        self.timers: dict[Timer, tuple[float, int]] = {}  # timer -> (deadline, order set)
        self._order = itertools.count()

    # -- feeding the machine ------------------------------------------------------
    def handle(self, event: Event, now: float | None = None) -> list[Effect]:
        """Feed ``event`` (at ``now``, else the clock's), perform everything it causes.

        Returns the effects performed, in order (training answers' included), for
        callers that inspect them: tests, logs.
        """
        queue, performed = deque([event]), []
        while queue:
            effects, answers = self._call(queue.popleft(), self.clock.now() if now is None else now)
            performed += effects
            queue.extend(answers)
            now = None  # answers come at the clock's time
        return performed

    def fire(self, timer: Timer, now: float | None = None) -> list[Effect]:
        """Fire one of this host's timers (it must be set); returns what it performed."""
        del self.timers[timer]
        return self.handle(TimerFired(timer=timer), now)

    def due(self, now: float) -> list[Timer]:
        """The timers due at ``now``, earliest deadline first (ties: the order they were set)."""
        ready = [(at, n, t) for t, (at, n) in self.timers.items() if at <= now]
        return [t for _, _, t in sorted(ready, key=lambda x: (x[0], x[1]))]

    def fire_due(self, now: float) -> int:
        """Fire every timer due at ``now``; returns how many fired."""
        fired = 0
        for timer in self.due(now):
            if timer in self.timers and self.timers[timer][0] <= now:  # an earlier one may cancel
                self.fire(timer, now)
                fired += 1
        return fired

    def next_timer(self) -> float:
        return min((at for at, _ in self.timers.values()), default=math.inf)

    def restore_timers(self, timers: Iterable[tuple[Timer, float]]) -> None:
        """Replace the timer table with ``timers`` (from a snapshot), in the order given."""
        self.timers = {timer: (at, next(self._order)) for timer, at in timers}

    def replay(self, event: Event, now: float) -> list[Effect]:
        """Rebuild state from a logged event: the machine and the timers, no effects performed."""
        if isinstance(event, TimerFired):
            self.timers.pop(event.timer, None)
        effects = self.machine.handle(event, now)
        for effect in effects:
            self._time(effect)
        return effects

    # -- performing ------------------------------------------------------------------
    def _call(self, event: Event, now: float) -> tuple[list[Effect], list[Event]]:
        if self.cpu_clock is None:
            effects = self.machine.handle(event, now)
        else:
            start = self.cpu_clock()
            effects = self.machine.handle(event, now)
            # The effects happen when the call ends: a virtual clock moves on first.
            self.clock.charge(self.actor, self.cpu_clock() - start)
        answers: list[Event] = []
        for effect in effects:
            answer = self._perform(effect)
            if answer is not None:
                answers.append(answer)
        return effects, answers

    def _perform(self, effect: Effect) -> Event | None:
        if isinstance(effect, Send):
            self.outbox.send(self.actor, effect)
        elif isinstance(effect, StartTimer | CancelTimer):
            self._time(effect)
        elif isinstance(effect, RequestLocalTraining):
            if self.trainer is None:
                raise TypeError(f"{self.actor} was asked to train but its runtime has no trainer")
            return self.trainer.start(self.actor, training_task(effect, self.job_seed))
        elif isinstance(effect, RequestLocalStatistics):
            if self.counter is None:
                raise TypeError(f"{self.actor} was asked for statistics but its runtime has none")
            return self.counter.count(self.actor, effect.round)
        elif isinstance(effect, StatisticsClosed):
            self.observer.statistics_closed(self.actor, effect)
        elif isinstance(effect, Rejected):
            self.observer.rejected(self.actor, effect)
        elif isinstance(effect, RoundClosed):
            self.observer.round_closed(self.actor, effect)
        elif isinstance(effect, JobFinished):
            self._time(effect)
            self.observer.job_finished(self.actor, effect)
        return None

    def _time(self, effect: Effect) -> None:
        if isinstance(effect, StartTimer):
            self.timers[effect.timer] = (effect.at, next(self._order))
            self.clock.wake(self.actor, effect.at)
        elif isinstance(effect, CancelTimer):
            self.timers.pop(effect.timer, None)
        elif isinstance(effect, JobFinished):
            self.timers.clear()  # nothing is due after the end


class TrainOutput(Protocol):
    @property
    def deltas(self) -> npt.NDArray[np.float32]: ...  # (nodes, P)

    @property
    def num_samples(self) -> npt.NDArray[np.int64]: ...

    @property
    def loss(self) -> npt.NDArray[np.float32]: ...

    # Asked for quality, a trainer also returns ``loss_before``, ``norm`` and ``labels``
    # (``BatchedTrainer``'s ``TrainResult``); one that is never asked need not.


class LocalTrainer(Protocol):
    """The simulator's batched trainer: many nodes from one global model at once."""

    def train(
        self,
        global_weights: Vector,
        nodes: npt.NDArray[np.int64],
        seed: int,
        *,
        prox_mu: float | None = None,
        round: int = 0,
        quality: bool = False,
    ) -> TrainOutput:
        """Train ``nodes`` from ``global_weights``; ``prox_mu`` overrides the recipe's;
        ``round`` sets the recipe's learning rate of that round; ``quality`` measures
        each node's data-quality statistics too."""
        ...

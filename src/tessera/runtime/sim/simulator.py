"""The simulator: N contributor machines and one coordinator in one process.

Theory of operation: a priority queue of timed deliveries on a virtual clock
drives the very same machines the network runtime drives. The simulator
plays every node's runtime: it delivers ``Send`` effects after a latency
plus transfer time, fires timers, and answers ``RequestLocalTraining`` by
scheduling a completion at the device's simulated speed (or never, if the
node drops out this round).

Training itself is deferred until a completion is due, then done for the
next ``chunk`` due nodes of that round at once (they share the round's
global weights, and a node's result depends only on its data, the weights
and the seed). So training holds one chunk of updates at a time, and the
coordinator folds updates into its running sum as they arrive; what remains
is the updates in flight on the simulated network (many, when thousands of
nodes finish within one latency of each other and the model is large).

Compute charging (``charge_compute=True``) models one machine per node: every
``handle`` call is timed on this thread's CPU clock and that cost is spent on
the virtual clock too. Each actor (a node, the coordinator) is one serial CPU:
an event reaching a busy actor waits until it is free, and a call's effects
(sends, training requests, a closed round) happen when it ends. Simulated
training still runs at the device model's speed. Off, no call is timed and
runs are exactly as before; on, virtual times vary with the host's speed.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from tessera.crypto.envelope import peek
from tessera.ids import COORDINATOR, NodeId
from tessera.protocol.codec import Kind
from tessera.protocol.contributor import Contributor
from tessera.protocol.coordinator import Coordinator
from tessera.protocol.effects import (
    CancelTimer,
    Effect,
    JobFinished,
    Rejected,
    RequestLocalTraining,
    RoundClosed,
    Send,
    StartTimer,
)
from tessera.protocol.events import (
    Event,
    JobStarted,
    LocalTrainingFailed,
    LocalUpdateReady,
    MessageReceived,
    TimerFired,
)
from tessera.protocol.messages import (
    Message,
    Sealed,
    TrainingDeclined,
    TrainRequest,
    UpdateSubmission,
)
from tessera.protocol.node import Node
from tessera.runtime.host import LocalTrainer, train_seed
from tessera.runtime.sim.devices import DeviceModel
from tessera.weights import Vector


class Machine(Protocol):
    def handle(self, event: Event, now: float) -> list[Effect]: ...


@dataclass
class RoundStats:
    """What the simulator observed in one round, beside the protocol's RoundClosed."""

    closed: RoundClosed
    seconds: float  # wall-clock time the round took to simulate
    dropped: int = 0
    late: int = 0  # selected and alive, but no update before the deadline
    bytes_down: int = 0  # model broadcast to contributors
    bytes_up: int = 0  # contributors' uploads (updates or sealed shares)
    bytes_aggregation: int = 0  # everything among aggregators and the coordinator
    aggregators_failed: int = 0  # nodes whose aggregator roles were silent this round
    aggregator_messages_lost: int = 0
    rejected: list[str] = field(default_factory=list)
    started_at: float = 0.0  # virtual time the round's requests went out
    closed_at: float = 0.0  # virtual time the round closed (its closing call ended, if charged)
    cpu_seconds: float = 0.0  # compute charged to all actors (0 unless charging)
    coordinator_cpu_seconds: float = 0.0

    @property
    def virtual_round_seconds(self) -> float:
        return self.closed_at - self.started_at


@dataclass(order=True)
class _Pending:
    at: float
    seq: int
    target: NodeId = field(compare=False)
    event: Event | None = field(compare=False, default=None)
    train_round: int = field(compare=False, default=-1)
    armed: float = field(compare=False, default=0.0)  # a timer's time, as it was set


_WAKE = -2  # ``_Pending.train_round`` of an actor's wake-up (charging compute only)


def _cpu_clock() -> Callable[[], float]:
    try:
        time.thread_time()
    except (AttributeError, OSError):  # no per-thread CPU clock on this platform
        return time.perf_counter
    return time.thread_time


class Simulation:
    def __init__(
        self,
        coordinator: Coordinator,
        node_ids: Sequence[NodeId],
        trainer: LocalTrainer,
        devices: DeviceModel,
        node_samples: npt.NDArray[np.int64],
        *,
        local_epochs: int,
        seed: int,
        latency: float = 0.05,
        bandwidth_bytes_per_s: float = 2.5e6,
        chunk: int = 4096,
        on_round: Callable[[RoundStats], None] | None = None,
        machines: Sequence[Machine] | None = None,
        fail_aggregators: Callable[[int, list[NodeId]], npt.NDArray[np.bool_]] | None = None,
        charge_compute: bool = False,
    ) -> None:
        self.coordinator = coordinator
        self.node_ids = list(node_ids)
        self.index = {n: i for i, n in enumerate(self.node_ids)}
        # Plaintext contributors unless the caller brings its own (secure) node machines.
        self.machines: Sequence[Machine] = machines or [
            Contributor(n, coordinator.params.job_id) for n in self.node_ids
        ]
        self.trainer = trainer
        self.devices = devices
        self.node_samples = node_samples
        self.local_epochs = local_epochs
        self.seed = seed
        self.latency = latency
        self.bandwidth = bandwidth_bytes_per_s
        self.chunk = max(1, chunk)
        self.on_round = on_round
        self.now = 0.0
        self.final_weights: Vector | None = None
        self._queue: list[_Pending] = []
        self._seq = itertools.count()
        self._timers: dict[tuple[NodeId, str], float] = {}
        self._due: dict[int, list[tuple[float, int, int]]] = {}  # round -> heap of (at, seq, node)
        self._results: dict[tuple[int, int], tuple[Vector, int, float]] = {}
        self._round_weights: dict[int, tuple[Vector, float]] = {}
        self._dropped_round = -1
        self._failed_round = -1
        self._failed: npt.NDArray[np.bool_] = np.zeros(0, bool)
        self.fail_aggregators = fail_aggregators
        self._dropped: npt.NDArray[np.bool_] = np.zeros(0, bool)
        self._stats = RoundStats(closed=None, seconds=0.0)  # type: ignore[arg-type]
        self._wall = time.perf_counter()
        self.charge_compute = charge_compute
        self._clock = _cpu_clock()
        self._busy_until: dict[NodeId, float] = {}
        self._backlog: dict[NodeId, deque[_Pending]] = {}  # items waiting for a busy actor

    # -- driving ---------------------------------------------------------------
    def run(self) -> Vector:
        """Run the job to its end; returns the final global weights."""
        self._handle(COORDINATOR, self.coordinator, JobStarted())
        self._stats.started_at = self.now
        while self._queue and self.final_weights is None:
            item = heapq.heappop(self._queue)
            self.now = item.at
            target = item.target
            if item.train_round == _WAKE:  # the actor is free: its oldest waiting item runs
                item = self._backlog[target].popleft()
            elif self._busy_until.get(target, item.at) > item.at or target in self._backlog:
                self._wait(item)  # only when charging compute: the actor's CPU is taken
                continue
            self._run_item(item)
            backlog = self._backlog.get(target)
            if backlog is not None:  # more waiting: wake the actor when this call ends
                if backlog:
                    at = max(self.now, self._busy_until.get(target, self.now))
                    heapq.heappush(self._queue, _Pending(at, next(self._seq), target, None, _WAKE))
                else:
                    del self._backlog[target]
        if self.final_weights is None:
            raise RuntimeError("simulation ran out of events before the job finished")
        return self.final_weights

    def _wait(self, item: _Pending) -> None:
        """Queue ``item`` behind its busy actor, in arrival order; one wake-up per actor."""
        backlog = self._backlog.get(item.target)
        if backlog is None:
            backlog = self._backlog[item.target] = deque()
            at = self._busy_until[item.target]
            heapq.heappush(self._queue, _Pending(at, next(self._seq), item.target, None, _WAKE))
        backlog.append(item)

    def _run_item(self, item: _Pending) -> None:
        if item.train_round >= 0:
            self._complete_training(item.target, item.train_round)
            return
        assert item.event is not None
        if isinstance(item.event, TimerFired):
            key = (item.target, item.event.timer)
            if self._timers.get(key) != item.armed:
                return  # cancelled or re-armed
            del self._timers[key]
        self._deliver(item.target, item.event)

    def _deliver(self, target: NodeId, event: Event) -> None:
        if target == COORDINATOR:
            self._handle(target, self.coordinator, event)
            return
        node = self.index[target]
        machine = self.machines[node]
        if isinstance(machine, Node) and Node.for_aggregator(event) and self._aggregator_down(node):
            self._stats.aggregator_messages_lost += 1
            return  # a failed aggregator: whatever reaches it is lost
        self._handle(target, machine, event)

    def _handle(self, actor: NodeId, machine: Machine, event: Event) -> None:
        if not self.charge_compute:
            self._perform(actor, machine.handle(event, self.now))
            return
        start = self._clock()
        effects = machine.handle(event, self.now)
        cost = self._clock() - start
        # The effects (and _send's departure time) happen when the call ends.
        self.now = self._busy_until[actor] = self.now + cost
        self._stats.cpu_seconds += cost
        if actor == COORDINATOR:
            self._stats.coordinator_cpu_seconds += cost
        self._perform(actor, effects)

    def _aggregator_down(self, node: int) -> bool:
        round = self.coordinator.round
        if self._failed_round != round:
            self._failed_round = round
            self._failed = self.devices.aggregator_failed(round)
            if self.fail_aggregators is not None:
                self._failed = self._failed | self.fail_aggregators(round, self.node_ids)
            self._stats.aggregators_failed = int(self._failed.sum())
        return bool(self._failed[node])

    def _push(self, at: float, target: NodeId, event: Event) -> None:
        heapq.heappush(self._queue, _Pending(at, next(self._seq), target, event, armed=at))

    # -- effects ---------------------------------------------------------------
    def _perform(self, actor: NodeId, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                self._send(actor, effect.recipient, effect.message)
            elif isinstance(effect, StartTimer):
                self._timers[(actor, effect.timer)] = effect.at
                self._push(effect.at, actor, TimerFired(timer=effect.timer))
            elif isinstance(effect, CancelTimer):
                self._timers.pop((actor, effect.timer), None)
            elif isinstance(effect, RequestLocalTraining):
                self._schedule_training(self.index[actor], effect)
            elif isinstance(effect, Rejected):
                self._stats.rejected.append(f"{actor} refused {effect.sender}: {effect.reason}")
            elif isinstance(effect, RoundClosed):
                self._finish_round(effect)
            elif isinstance(effect, JobFinished):
                self.final_weights = effect.weights

    def _send(self, sender: NodeId, recipient: NodeId, message: Message) -> None:
        size = message.nbytes
        if isinstance(message, TrainRequest):
            self._stats.bytes_down += size
        elif isinstance(message, UpdateSubmission | TrainingDeclined) or (
            isinstance(message, Sealed) and peek(message.data).kind == Kind.SHARE
        ):
            self._stats.bytes_up += size  # a contributor's upload
        else:
            self._stats.bytes_aggregation += size  # roles, reports, commitments, sums
        at = self.now + self.latency + size / self.bandwidth
        self._push(at, recipient, MessageReceived(sender=sender, message=message))

    def _finish_round(self, closed: RoundClosed) -> None:
        now = time.perf_counter()
        self._stats.closed = closed
        # Selected, not dropped, yet no update in time: a straggler (or a decline).
        self._stats.late = closed.selected - closed.participants - self._stats.dropped
        self._stats.seconds = now - self._wall
        self._stats.closed_at = self.now
        self._wall = now
        self._round_weights.pop(closed.round, None)
        self._due.pop(closed.round, None)
        if self.on_round is not None:
            self.on_round(self._stats)
        self._stats = RoundStats(closed=None, seconds=0.0)  # type: ignore[arg-type]
        # The next round's requests go out with this close, from the same coordinator call.
        self._stats.started_at = self.now

    # -- local training --------------------------------------------------------
    def _schedule_training(self, node: int, request: RequestLocalTraining) -> None:
        if self._dropped_round != request.round:
            self._dropped_round = request.round
            self._dropped = self.devices.dropped(request.round)
        if self._dropped[node]:
            self._stats.dropped += 1
            return  # the node goes away: it never answers this round
        prox_mu = float(request.config.get("prox_mu", 0.0))
        self._round_weights[request.round] = (request.weights, prox_mu)
        seconds = self.devices.training_seconds(
            node, int(self.node_samples[node]), self.local_epochs
        )
        at, seq = self.now + seconds, next(self._seq)
        # The same (at, seq) key as the main queue: chunks follow completion order.
        heapq.heappush(self._due.setdefault(request.round, []), (at, seq, node))
        heapq.heappush(self._queue, _Pending(at, seq, self.node_ids[node], None, request.round))

    def _complete_training(self, node_id: NodeId, round: int) -> None:
        node = self.index[node_id]
        if round not in self._round_weights:  # the round closed while this node trained
            self._deliver(node_id, LocalTrainingFailed(round=round, reason="round already closed"))
            return
        while (round, node) not in self._results:  # once, unless charging deferred others
            self._train_next_chunk(round)
        delta, samples, loss = self._results.pop((round, node))
        event = LocalUpdateReady(round=round, delta=delta, num_samples=samples, loss=loss)
        self._deliver(node_id, event)

    def _train_next_chunk(self, round: int) -> None:
        due = self._due[round]
        nodes = [heapq.heappop(due)[2] for _ in range(min(self.chunk, len(due)))]
        weights, prox_mu = self._round_weights[round]
        batch = np.asarray(nodes, dtype=np.int64)
        result = self.trainer.train(weights, batch, train_seed(self.seed, round), prox_mu=prox_mu)
        for row, node in enumerate(nodes):
            self._results[(round, node)] = (
                result.deltas[row],
                int(result.num_samples[row]),
                float(result.loss[row]),
            )

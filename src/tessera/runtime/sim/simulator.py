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
"""

from __future__ import annotations

import heapq
import itertools
import time
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


@dataclass(order=True)
class _Pending:
    at: float
    seq: int
    target: NodeId = field(compare=False)
    event: Event | None = field(compare=False, default=None)
    train_round: int = field(compare=False, default=-1)


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

    # -- driving ---------------------------------------------------------------
    def run(self) -> Vector:
        """Run the job to its end; returns the final global weights."""
        self._perform(COORDINATOR, self.coordinator.handle(JobStarted(), self.now))
        while self._queue and self.final_weights is None:
            item = heapq.heappop(self._queue)
            self.now = item.at
            if item.train_round >= 0:
                self._complete_training(item.target, item.train_round)
                continue
            assert item.event is not None
            if isinstance(item.event, TimerFired):
                key = (item.target, item.event.timer)
                if self._timers.get(key) != item.at:
                    continue  # cancelled or re-armed
                del self._timers[key]
            self._deliver(item.target, item.event)
        if self.final_weights is None:
            raise RuntimeError("simulation ran out of events before the job finished")
        return self.final_weights

    def _deliver(self, target: NodeId, event: Event) -> None:
        if target == COORDINATOR:
            self._perform(target, self.coordinator.handle(event, self.now))
            return
        node = self.index[target]
        machine = self.machines[node]
        if isinstance(machine, Node) and Node.for_aggregator(event) and self._aggregator_down(node):
            self._stats.aggregator_messages_lost += 1
            return  # a failed aggregator: whatever reaches it is lost
        self._perform(target, machine.handle(event, self.now))

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
        heapq.heappush(self._queue, _Pending(at, next(self._seq), target, event))

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
        self._wall = now
        self._round_weights.pop(closed.round, None)
        self._due.pop(closed.round, None)
        if self.on_round is not None:
            self.on_round(self._stats)
        self._stats = RoundStats(closed=None, seconds=0.0)  # type: ignore[arg-type]

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
        if (round, node) not in self._results:
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

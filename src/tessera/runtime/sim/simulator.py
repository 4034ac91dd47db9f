"""The simulator: N contributor machines and one coordinator in one process.

Theory of operation: a priority queue of timed deliveries on a virtual clock
drives the very same machines the network runtime drives. The simulator
plays every node's runtime: it delivers ``Send`` effects after a latency
plus transfer time, fires timers, and answers ``RequestLocalTraining`` by
scheduling a completion at the device's simulated speed (or never, if the
node drops out this round, or is offline when the request reaches it).

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

A ``backend`` (``runtime.sim.backends``: local processes, Ray) does the
contributors' sharing step and their aggregators' openings of those shares
on other cores, ahead: each trained chunk is queued for it in completion
order, a bounded window of batches is in flight, and a node's result is
collected when its training completes on the virtual clock. The machines
take that work only if it is exactly what they would do, so the aggregate
and the model are those of a run without a backend (``inprocess``).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from tessera.crypto.envelope import peek
from tessera.errors import DataError
from tessera.ids import COORDINATOR, NodeId
from tessera.protocol.contributor import Contributor
from tessera.protocol.coordinator import Coordinator
from tessera.protocol.effects import (
    GroupSum,
    JobFinished,
    Rejected,
    RoundClosed,
    Send,
    StatisticsClosed,
)
from tessera.protocol.events import (
    Event,
    JobStarted,
    LocalStatisticsReady,
    LocalTrainingFailed,
    LocalUpdateReady,
    MessageReceived,
)
from tessera.protocol.kinds import Kind
from tessera.protocol.limits import MAX_ENVELOPE_BYTES
from tessera.protocol.messages import (
    Sealed,
    TrainingDeclined,
    TrainRequest,
    UpdateSubmission,
)
from tessera.protocol.node import Node
from tessera.protocol.quality import LocalQuality
from tessera.protocol.sharing_job import SharedUpdate, ShareJob
from tessera.protocol.wire import Openings
from tessera.runtime.host import Host, LocalTrainer, Machine, Observer, TrainingTask, TrainOutput
from tessera.runtime.sim.backends import Backend, Pending, WorkerContext
from tessera.runtime.sim.deadline import Deadline
from tessera.runtime.sim.devices import DeviceModel
from tessera.runtime.sim.downlink import Downlink, Mode
from tessera.runtime.sim.links import Links
from tessera.weights import Vector


@dataclass
class RoundStats:
    """What the simulator observed in one round, beside the protocol's RoundClosed."""

    closed: RoundClosed
    seconds: float  # wall-clock time the round took to simulate
    dropped: int = 0  # went away, or offline when its request arrived
    late: int = 0  # selected and alive, but no update before the deadline
    stragglers: int = 0  # a deadline round's: could not do one local step in time
    partial: int = 0  # a deadline round's: did part of their local work
    steps: int = 0  # local steps of the updates trained this round, summed
    trained: int = 0  # updates trained this round (their steps counted)
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
    group_sums: tuple[GroupSum, ...] = ()  # the leaf groups' sums the round disclosed

    @property
    def virtual_round_seconds(self) -> float:
        return self.closed_at - self.started_at

    @property
    def mean_steps(self) -> float:
        """The mean local steps of the updates trained this round (NaN: none, or uncounted)."""
        return self.steps / self.trained if self.trained and self.steps else float("nan")


@dataclass(order=True)
class _Pending:
    at: float
    seq: int
    target: NodeId = field(compare=False)
    event: Event | None = field(compare=False, default=None)
    train_round: int = field(compare=False, default=-1)


_UNCAPPED = 1 << 62  # a node's step cap when its whole local work fits the deadline
_WAKE = -2  # ``_Pending.train_round`` of an actor's wake-up (charging compute only)
_TIMERS = -3  # ``_Pending.train_round`` of a host's timer deadline


def _cpu_clock() -> Callable[[], float]:
    try:
        time.thread_time()
    except (AttributeError, OSError):  # no per-thread CPU clock on this platform
        return time.perf_counter
    return time.thread_time


class Simulation(Observer):
    """Plays every node's runtime: the network, the devices and the virtual clock.

    Each machine sits in a ``runtime.host.Host``, the same host the deployed
    processes use; the simulation is its outbox (a simulated network), its
    clock (virtual, optionally charging compute), its trainer (simulated
    devices over a batched trainer) and its observer (round statistics).
    """

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
        coordinator_bandwidth_bytes_per_s: float | None = None,
        contention: bool = False,
        chunk: int = 4096,
        on_round: Callable[[RoundStats], None] | None = None,
        machines: Sequence[Machine] | None = None,
        fail_aggregators: Callable[[int, list[NodeId]], npt.NDArray[np.bool_]] | None = None,
        charge_compute: bool = False,
        statistics: Callable[[int, int], npt.NDArray[np.float64]] | None = None,
        backend: Backend | None = None,
        backend_batch: int = 64,
        deadline: Deadline | None = None,
        downlink: Mode = "full",
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
        self.deadline = deadline
        self._caps: dict[tuple[int, int], int] = {}  # (round, node) -> its steps, if cut short
        self.links = Links(
            latency,
            bandwidth_bytes_per_s,
            coordinator_rate=coordinator_bandwidth_bytes_per_s,
            contention=contention,
            up_rates=_per_node(self.node_ids, devices.up_rate),
            down_rates=_per_node(self.node_ids, devices.down_rate),
        )
        self.chunk = max(1, chunk)
        self.downlink = Downlink(downlink)  # what a model broadcast costs on the wire
        self.on_round = on_round
        self.now = 0.0
        self.final_weights: Vector | None = None
        self.error: str | None = None  # why the job stopped early (JobFinished.error)
        self.stopped: str | None = None  # why it ended before its rounds (JobFinished.stopped)
        self.statistics = statistics  # (node index, round) -> its statistics vector
        self.statistics_closed_with: StatisticsClosed | None = None
        self.statistics_round: RoundStats | None = None
        self._queue: list[_Pending] = []
        self._seq = itertools.count()
        self._due: dict[int, list[tuple[float, int, int]]] = {}  # round -> heap of (at, seq, node)
        self._results: dict[
            tuple[int, int], tuple[Vector, int, float, LocalQuality | None, int]
        ] = {}
        self._round_tasks: dict[int, TrainingTask] = {}
        self._dropped_round = -1
        self._failed_round = -1
        self._failed: npt.NDArray[np.bool_] = np.zeros(0, bool)
        self.fail_aggregators = fail_aggregators
        self._dropped: npt.NDArray[np.bool_] = np.zeros(0, bool)
        self._stats = RoundStats(closed=None, seconds=0.0)  # type: ignore[arg-type]
        self._wall = time.perf_counter()
        self.charge_compute = charge_compute
        self._busy_until: dict[NodeId, float] = {}
        self._backlog: dict[NodeId, deque[_Pending]] = {}  # items waiting for a busy actor
        cpu = _cpu_clock() if charge_compute else None
        if backend is not None and charge_compute:
            raise ValueError("charging compute counts this thread's CPU: use no backend")
        self._backend_started = False
        self._init_backend(backend, backend_batch)
        self.hosts: dict[NodeId, Host] = {
            actor: Host(
                actor,
                machine,
                outbox=self,
                clock=_VirtualClock(self),
                job_seed=seed,
                trainer=self,
                counter=self if statistics is not None else None,
                observer=self,
                cpu_clock=cpu,
            )
            for actor, machine in [
                (COORDINATOR, coordinator),
                *zip(self.node_ids, self.machines, strict=True),
            ]
        }

    # -- driving ---------------------------------------------------------------
    def run(self) -> Vector:
        """Run the job to its end; returns the final global weights."""
        try:
            return self._run()
        finally:
            if self.backend is not None and self._backend_started:
                self.backend.close()
                self._backend_started = False

    def _run(self) -> Vector:
        self.hosts[COORDINATOR].handle(JobStarted(), self.now)
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

    def tell(self, target: NodeId, event: Event) -> None:
        """Deliver a runtime's own ``event`` (a policy's verdict) to ``target`` now,
        after the call in progress: no machine is entered twice."""
        heapq.heappush(self._queue, _Pending(self.now, next(self._seq), target, event))

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
        elif item.train_round == _TIMERS:
            self._fire_timers(item.target)
        else:
            assert item.event is not None
            self._deliver(item.target, item.event)

    def _fire_timers(self, target: NodeId) -> None:
        host = self.hosts[target]
        if self._silenced(target, None):
            for timer in host.due(self.now):  # a failed aggregator's timers go nowhere
                del host.timers[timer]
                self._stats.aggregator_messages_lost += 1
            return
        host.fire_due(self.now)

    def _deliver(self, target: NodeId, event: Event) -> None:
        if self._open_awaited and isinstance(event, MessageReceived):
            message = event.message
            if isinstance(message, Sealed) and (target, message.data) in self._open_awaited:
                self._opened((target, message.data))
        if self._silenced(target, event):
            self._stats.aggregator_messages_lost += 1
            return  # a failed aggregator: whatever reaches it is lost
        self.hosts[target].handle(event, self.now)

    def _silenced(self, target: NodeId, event: Event | None) -> bool:
        """Whether ``event`` (None: a timer) is for a node's aggregator that failed this round."""
        if target == COORDINATOR:
            return False
        node = self.index[target]
        if not isinstance(self.machines[node], Node):
            return False
        if event is not None and not Node.for_aggregator(event):
            return False
        return self._aggregator_down(node)

    def _aggregator_down(self, node: int) -> bool:
        round = self.coordinator.round
        if self._failed_round != round:
            self._failed_round = round
            self._failed = self.devices.aggregator_failed(round)
            if self.fail_aggregators is not None:
                self._failed = self._failed | self.fail_aggregators(round, self.node_ids)
            self._stats.aggregators_failed = int(self._failed.sum())
        return bool(self._failed[node])

    # -- the hosts' network ---------------------------------------------------------
    def send(self, sender: NodeId, effect: Send) -> None:
        message = effect.message
        size = message.nbytes
        if isinstance(message, TrainRequest):
            size = self.downlink.size(effect.recipient, message)
            self._stats.bytes_down += size
        elif isinstance(message, UpdateSubmission | TrainingDeclined) or (
            isinstance(message, Sealed) and self._is_share(message.data)
        ):
            self._stats.bytes_up += size  # a contributor's upload
            if not isinstance(message, TrainingDeclined):
                self.downlink.used(sender)
        else:
            self._stats.bytes_aggregation += size  # roles, reports, commitments, sums
            if isinstance(message, Sealed) and self._backend_started:
                self._open_ahead(effect.recipient, message.data)
        at = self.links.arrival(self.now, sender, effect.recipient, size)
        event = MessageReceived(sender=sender, message=message)
        heapq.heappush(self._queue, _Pending(at, next(self._seq), effect.recipient, event))

    def _is_share(self, data: bytes) -> bool:
        """Whether ``data`` is a contributor's share: known if the backend sealed it."""
        if data in self._share_boxes:
            self._share_boxes.discard(data)
            return True
        return peek(data).kind == Kind.SHARE

    # -- the hosts' observer ------------------------------------------------------------
    def rejected(self, actor: NodeId, effect: Rejected) -> None:
        self._stats.rejected.append(f"{actor} refused {effect.sender}: {effect.reason}")

    def job_finished(self, actor: NodeId, effect: JobFinished) -> None:  # noqa: ARG002
        self.final_weights = effect.weights
        self.error = effect.error
        self.stopped = effect.stopped

    def round_closed(self, actor: NodeId, effect: RoundClosed) -> None:  # noqa: ARG002
        now = time.perf_counter()
        self._stats.closed = effect
        self._stats.group_sums = effect.group_sums
        # Selected, not dropped, yet no update in time: late (or declined).
        s = self._stats
        s.late = effect.selected - effect.participants - s.dropped - s.stragglers
        self._stats.seconds = now - self._wall
        self._stats.closed_at = self.now
        self._wall = now
        # A buffered job's nodes still training keep training: their rounds' work is
        # delivered up to the job's staleness bound (``protocol.buffering``).
        params = self.coordinator.params
        gone = effect.round if params.buffer is None else effect.round - params.max_staleness
        for round in [effect.round] if params.buffer is None else list(self._round_tasks):
            if round <= gone:
                self._round_tasks.pop(round, None)
                self._due.pop(round, None)
        if self._caps:  # of nodes still training when the round closed
            self._caps = {k: v for k, v in self._caps.items() if k[0] > gone}
        self._forget_ahead(gone)
        if self.on_round is not None:
            self.on_round(self._stats)
        self._stats = RoundStats(closed=None, seconds=0.0)  # type: ignore[arg-type]
        # The next round's requests go out with this close, from the same coordinator call.
        self._stats.started_at = self.now

    def statistics_closed(self, actor: NodeId, effect: StatisticsClosed) -> None:  # noqa: ARG002
        self.statistics_closed_with = effect
        self._stats.closed_at = self.now
        self.statistics_round, self._stats = self._stats, RoundStats(closed=None, seconds=0.0)  # type: ignore[arg-type]
        self._stats.started_at = self.now

    def _away(self, node: int, round: int) -> bool:
        """Whether node ``node`` does not answer ``round``'s request, reaching it now:
        it drops this round, or it is offline (its device profile's availability)."""
        if self._dropped_round != round:
            self._dropped_round = round
            self._dropped = self.devices.dropped(round)
        if self._dropped[node] or not self.devices.online(node, self.now):
            self._stats.dropped += 1
            return True
        return False

    # -- the hosts' counter: statistics are counted at once -----------------------------
    def count(self, actor: NodeId, round: int) -> Event | None:
        node = self.index[actor]
        if self._away(node, round):
            return None
        assert self.statistics is not None
        try:
            vector = self.statistics(node, round)
        except DataError as exc:  # the node declines, with the reason
            return LocalTrainingFailed(round=round, reason=str(exc))
        return LocalStatisticsReady(round=round, vector=vector)

    # -- the hosts' trainer: simulated devices ----------------------------------------
    def start(self, actor: NodeId, task: TrainingTask) -> Event | None:
        node = self.index[actor]
        if self._away(node, task.round):
            return None  # the node goes away (or is offline): it never answers this round
        samples = int(self.node_samples[node])
        if self.deadline is None:
            seconds = self.devices.training_seconds(node, samples, self.local_epochs)
        else:
            work = self.deadline.work(self.devices, node, samples, self.local_epochs)
            if work is None:  # a straggler: it says so at once, nobody waits for it
                self._stats.stragglers += 1
                if isinstance(self.machines[node], Node):
                    return None  # a secure round takes no plaintext decline
                reason = f"straggler: no local step fits the {self.deadline.seconds:g} s deadline"
                return LocalTrainingFailed(round=task.round, reason=reason)
            seconds = work.seconds
            if work.steps is not None:
                self._stats.partial += 1
                self._caps[(task.round, node)] = work.steps
        self._round_tasks[task.round] = task
        at, seq = self.now + seconds, next(self._seq)
        # The same (at, seq) key as the main queue: chunks follow completion order.
        heapq.heappush(self._due.setdefault(task.round, []), (at, seq, node))
        heapq.heappush(self._queue, _Pending(at, seq, actor, None, task.round))
        return None

    def _complete_training(self, node_id: NodeId, round: int) -> None:
        node = self.index[node_id]
        if round not in self._round_tasks:  # the round closed while this node trained
            self._deliver(node_id, LocalTrainingFailed(round=round, reason="round already closed"))
            return
        while (round, node) not in self._results:  # once, unless charging deferred others
            self._train_next_chunk(round)
        delta, samples, loss, quality, steps = self._results.pop((round, node))
        self._stats.steps += steps
        self._stats.trained += 1
        event = LocalUpdateReady(
            round=round,
            delta=delta,
            num_samples=samples,
            loss=loss,
            quality=quality,
            shared=self._collect(round, node) if self.backend is not None else None,
            steps=steps,
        )
        self._deliver(node_id, event)

    def _train_next_chunk(self, round: int) -> None:
        due = self._due[round]
        nodes = [heapq.heappop(due)[2] for _ in range(min(self.chunk, len(due)))]
        task = self._round_tasks[round]
        batch = np.asarray(nodes, dtype=np.int64)
        # Asked only of a job that measures quality (or cuts work short): a trainer that
        # never does need not know.
        asked: dict[str, Any] = {"quality": True} if task.quality else {}
        caps = [self._caps.pop((round, node), _UNCAPPED) for node in nodes]
        if min(caps, default=_UNCAPPED) < _UNCAPPED:
            asked["max_steps"] = np.asarray(caps, np.int64)
        result = self.trainer.train(
            task.weights, batch, task.seed, prox_mu=task.prox_mu, round=task.schedule_round, **asked
        )
        steps = getattr(result, "steps", None)  # a trainer that counts its steps
        for row, node in enumerate(nodes):
            self._results[(round, node)] = (
                result.deltas[row],
                int(result.num_samples[row]),
                float(result.loss[row]),
                _quality(result, row),
                0 if steps is None else int(steps[row]),
            )
        if self.backend is not None and self._backend_nodes:
            self._to_share.extend((round, node) for node in nodes)
            self._awaited.update((round, node) for node in nodes)
            self._pump()

    # -- node work done ahead by the backend ---------------------------------------------
    def _init_backend(self, backend: Backend | None, batch: int) -> None:
        """Node work done ahead by the backend (see the module docstring)."""
        self.backend = backend
        self._backend_nodes = False
        self._batch = max(1, batch)
        self._to_share: deque[tuple[int, int]] = deque()  # (round, node), completion order
        self._in_flight: deque[tuple[Pending, list[tuple[int, int, ShareJob]]]] = deque()
        self._awaited: set[tuple[int, int]] = set()  # queued or in flight
        self._shared: dict[tuple[int, int], SharedUpdate] = {}  # done, not yet delivered
        self._openings = Openings()
        self._share_boxes: set[bytes] = set()  # sealed by the backend, not yet sent
        # Other sealed messages to nodes, opened ahead too: queued, then in flight.
        self._to_open: list[tuple[NodeId, bytes, str]] = []
        self._open_flight: deque[tuple[Pending, list[tuple[NodeId, bytes, str]]]] = deque()
        self._open_awaited: set[tuple[NodeId, bytes]] = set()
        if backend is not None:
            self._backend_nodes = self._share_ahead(self.machines)

    def _share_ahead(self, machines: Sequence[Machine]) -> bool:
        """Give every secure node's aggregator the openings table; False: no secure nodes."""
        nodes = [m for m in machines if isinstance(m, Node) and m.contributor.secure is not None]
        for node in nodes:
            if node.aggregator is not None:
                node.aggregator.wire.opened = self._openings
        if nodes:
            secure = nodes[0].contributor.secure
            assert secure is not None
            self._context = WorkerContext(seed=self.seed, directory=dict(secure.directory))
        return bool(nodes)

    def _pump(self) -> None:
        """Keep a window of batches in flight (four per worker), in completion order."""
        assert self.backend is not None
        if not self._backend_started:
            self.backend.start(self._context)
            self._backend_started = True
        while self._to_share and len(self._in_flight) < 4 * self.backend.workers:
            batch: list[tuple[int, int, ShareJob]] = []
            while self._to_share and len(batch) < self._batch:
                round, node = key = self._to_share.popleft()
                job = self._share_job(round, node)
                if job is None:  # nothing to share (a bad result): the machine says why
                    self._awaited.discard(key)
                else:
                    batch.append((round, node, job))
            if batch:
                pending = self.backend.submit([job for _, _, job in batch])
                self._in_flight.append((pending, batch))

    def _share_job(self, round: int, node: int) -> ShareJob | None:
        result = self._results.get((round, node))
        machine = self.machines[node]
        if result is None or not isinstance(machine, Node):
            return None
        delta, samples, loss, quality, steps = result
        ready = LocalUpdateReady(
            round=round, delta=delta, num_samples=samples, loss=loss, quality=quality, steps=steps
        )
        return machine.contributor.share_job(ready)

    def _collect(self, round: int, node: int) -> SharedUpdate | None:
        """Node ``node``'s sharing done ahead, waiting for its batch if need be."""
        key = (round, node)
        while key in self._awaited and key not in self._shared:
            if not self._in_flight:
                self._pump()
                if not self._in_flight:
                    break
            pending, batch = self._in_flight.popleft()
            for (r, n, job), (envelopes, opened) in zip(batch, pending.result(), strict=True):
                self._awaited.discard((r, n))
                if r not in self._round_tasks:
                    continue  # its round closed meanwhile
                self._shared[(r, n)] = SharedUpdate(job=job, envelopes=envelopes)
                self._share_boxes.update(envelopes)
                for aggregator, data, envelope in zip(
                    job.aggregators, envelopes, opened, strict=True
                ):
                    if envelope is not None:
                        self._openings.put(aggregator, data, MAX_ENVELOPE_BYTES, envelope)
            self._pump()
        self._awaited.discard(key)
        return self._shared.pop(key, None)

    def _open_ahead(self, recipient: NodeId, data: bytes) -> None:
        """Queue a sealed message to a node for opening ahead, in batches."""
        if recipient == COORDINATOR or not self._backend_nodes:
            return
        self._to_open.append((recipient, data, self.coordinator.params.job_id))
        self._open_awaited.add((recipient, data))
        if len(self._to_open) >= self._batch:
            self._submit_opens()

    def _submit_opens(self) -> None:
        assert self.backend is not None
        batch, self._to_open = self._to_open, []
        self._open_flight.append((self.backend.submit_opens(batch), batch))

    def _opened(self, key: tuple[NodeId, bytes]) -> None:
        """Wait until the message ``key`` was opened ahead (or could not be)."""
        while key in self._open_awaited:
            if not self._open_flight:
                self._submit_opens()
            pending, batch = self._open_flight.popleft()
            for (recipient, data, _), envelope in zip(batch, pending.result(), strict=True):
                self._open_awaited.discard((recipient, data))
                if envelope is not None:
                    self._openings.put(recipient, data, MAX_ENVELOPE_BYTES, envelope)

    def _forget_ahead(self, round: int) -> None:
        """Round ``round`` closed: what was done ahead for it will not be delivered."""
        if self.backend is None:
            return
        self._to_share = deque(k for k in self._to_share if k[0] > round)
        self._awaited = {k for k in self._awaited if k[0] > round}
        self._shared = {k: v for k, v in self._shared.items() if k[0] > round}
        self._openings.forget_through(round)
        self._share_boxes.clear()  # a later round's are sealed after its requests went out


def _per_node(
    node_ids: Sequence[NodeId], rates: npt.NDArray[np.float64] | None
) -> dict[NodeId, float]:
    """Each node's own link rate (a device profile's), by id; none without a profile."""
    if rates is None:
        return {}
    return {node: float(rate) for node, rate in zip(node_ids, rates, strict=True)}


def _quality(result: TrainOutput, row: int) -> LocalQuality | None:
    """Node ``row``'s data-quality statistics, if its trainer measured them."""
    before, norm, labels = (getattr(result, a, None) for a in ("loss_before", "norm", "labels"))
    if before is None or norm is None or labels is None:
        return None
    return LocalQuality(
        loss_before=float(before[row]),
        norm=float(norm[row]),
        labels=tuple(int(c) for c in labels[row]),
    )


class _VirtualClock:
    """The hosts' clock: the simulation's virtual time, which charged compute moves on."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def now(self) -> float:
        return self.sim.now

    def wake(self, actor: NodeId, at: float) -> None:
        sim = self.sim
        heapq.heappush(sim._queue, _Pending(at, next(sim._seq), actor, None, _TIMERS))

    def charge(self, actor: NodeId, seconds: float) -> None:
        # The effects (and a send's departure time) happen when the call ends.
        sim = self.sim
        sim.now = sim._busy_until[actor] = sim.now + seconds
        sim._stats.cpu_seconds += seconds
        if actor == COORDINATOR:
            sim._stats.coordinator_cpu_seconds += seconds

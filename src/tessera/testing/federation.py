"""A federation in one test: real machines in real hosts, joined by an in-memory network.

``MiniFederation`` wraps every machine (a coordinator, and each node's
machine) in the same ``runtime.host.Host`` the simulator and the deployed
parties use, with a ``ManualClock`` and an ``InMemoryNetwork``: nothing
moves until the test says so. ``step`` delivers one queued message, ``run``
delivers until the queue is dry, ``advance`` moves the clock (to a time, or
to the next deadline) and fires every timer due, in deadline order;
``settle`` alternates the two until the federation is quiet; ``inject``
hands a machine any message at all. Training requests are recorded
(``tasks``) and answered by the test, with fixed updates (``train``) or a
function of the task (``answer``), or at once by a ``trainer`` function.
Refusals, closed rounds and the end of the job are recorded for assertions.

    fed = plaintext_federation(nodes=5, strategy="fedadam")
    fed.begin()                                  # round 0's train requests are queued
    fed.run()                                    # ...and delivered: tasks recorded
    fed.answer(fixed_updates(fed, seed=1))       # every node's update goes out
    fed.run()                                    # round 0 closes, round 1's requests arrive
    assert fed.closed[0].participants == 5

    fed.train({n: Update(delta=np.ones(4, np.float32)) for n in fed.nodes})
    fed.settle()                                 # deliver, fire deadlines: the job ends
    assert fed.finished is not None
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tessera.ids import COORDINATOR, JobId, NodeId
from tessera.protocol.coordinator import Coordinator
from tessera.protocol.effects import Effect, JobFinished, Rejected, RoundClosed
from tessera.protocol.events import Event, JobStarted, LocalUpdateReady, MessageReceived
from tessera.protocol.messages import Message
from tessera.protocol.params import RoundParams
from tessera.protocol.secure_coordinator import SecureParams
from tessera.protocol.strategies import make_strategy
from tessera.protocol.timers import Timer
from tessera.runtime.host import Host, Machine, Observer, TrainingTask
from tessera.runtime.sim.secure import build_secure
from tessera.testing.clock import ManualClock
from tessera.testing.network import InMemoryNetwork, Wire

Trainer = Callable[[NodeId, TrainingTask], Event | None]
"""Answers a node's training task at once (an event), or leaves it to the test (None)."""


@dataclass(frozen=True, kw_only=True)
class Update:
    """A node's training result, as a test writes it down (``MiniFederation.train``)."""

    delta: npt.NDArray[np.float32]
    num_samples: int = 1
    loss: float = 0.0


class MiniFederation(Observer):
    """Real machines in real hosts on an in-memory network; see the module docstring."""

    def __init__(
        self,
        coordinator: Machine,
        nodes: Mapping[NodeId, Machine],
        *,
        job_seed: int = 0,
        trainer: Trainer | None = None,
        clock: ManualClock | None = None,
        network: InMemoryNetwork | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.nodes = dict(nodes)
        self.clock = clock or ManualClock()
        self.network = network or InMemoryNetwork()
        self.trainer = trainer
        self.tasks: dict[NodeId, TrainingTask] = {}  # each node's latest training request
        self.refused: list[tuple[NodeId, Rejected]] = []
        self.closed: list[RoundClosed] = []
        self.finished: JobFinished | None = None
        self.delivered: list[Wire] = []
        machines: list[tuple[NodeId, Machine]] = [(COORDINATOR, coordinator), *self.nodes.items()]
        self.hosts = {
            actor: Host(
                actor,
                machine,
                outbox=self.network,
                clock=self.clock,
                job_seed=job_seed,
                trainer=self,
                observer=self,
            )
            for actor, machine in machines
        }

    # -- the hosts' trainer and observer ----------------------------------------------
    def start(self, actor: NodeId, task: TrainingTask) -> Event | None:
        self.tasks[actor] = task
        return None if self.trainer is None else self.trainer(actor, task)

    def rejected(self, actor: NodeId, effect: Rejected) -> None:
        self.refused.append((actor, effect))

    def round_closed(self, actor: NodeId, effect: RoundClosed) -> None:  # noqa: ARG002
        self.closed.append(effect)

    def job_finished(self, actor: NodeId, effect: JobFinished) -> None:  # noqa: ARG002
        self.finished = effect

    # -- driving ---------------------------------------------------------------------------
    def handle(self, actor: NodeId, event: Event) -> list[Effect]:
        """Feed ``actor``'s machine one event now; returns what its host performed."""
        return self.hosts[actor].handle(event, self.clock.time)

    def begin(self) -> list[Effect]:
        """The job starts: the coordinator opens round 0."""
        return self.handle(COORDINATOR, JobStarted())

    def deliver(self, wire: Wire) -> list[Effect]:
        self.delivered.append(wire)
        return self.handle(
            wire.recipient, MessageReceived(sender=wire.sender, message=wire.message)
        )

    def inject(self, recipient: NodeId, message: Message, *, sender: NodeId) -> list[Effect]:
        """Hand ``recipient`` a message no honest machine produced."""
        return self.handle(recipient, MessageReceived(sender=sender, message=message))

    def step(self) -> bool:
        """Deliver the oldest queued message; False when none is queued."""
        if not self.network.queue:
            return False
        self.deliver(self.network.queue.popleft())
        return True

    def run(self, until: Callable[[], bool] | None = None, max_steps: int = 1_000_000) -> None:
        """Deliver queued messages in order until the queue is dry (or ``until`` holds)."""
        for _ in range(max_steps):
            if (until is not None and until()) or not self.step():
                break
        if until is not None and not until():
            raise AssertionError("the federation went quiet before the condition held")

    def advance(self, to: float | None = None) -> int:
        """Move the clock to ``to`` (default: the next deadline) and fire every due timer,
        earliest first; how many fired. Messages the timers send are queued, not delivered."""
        if to is None:
            if not self.timers:
                return 0
            to = max(self.clock.time, min(self.timers.values()))
        self.clock.advance(to)
        fired = 0
        while True:
            due = [(h.timers[t][0], a, t) for a, h in self.hosts.items() for t in h.due(to)]
            if not due:
                return fired
            _, actor, timer = min(due, key=lambda d: d[0])
            self.hosts[actor].fire(timer, to)
            fired += 1

    def settle(self, until: Callable[[], bool] | None = None, max_timers: int = 10_000) -> None:
        """Deliver everything, then fire the next deadline, and again, until nothing is
        queued or pending (or ``until`` holds): what the deadlines of a stalled round do."""
        for _ in range(max_timers):
            self.run()
            if (until is not None and until()) or not self.advance():
                break
        if until is not None and not until():
            raise AssertionError("the federation settled before the condition held")

    def train(self, updates: Mapping[NodeId, Update]) -> None:
        """Each named node's recorded training task finishes with its ``Update``."""
        for node, update in updates.items():
            task = self.tasks.pop(node, None)
            if task is None:
                raise LookupError(f"{node} has no training task to finish")
            self.handle(
                node,
                LocalUpdateReady(
                    round=task.round,
                    delta=update.delta,
                    num_samples=update.num_samples,
                    loss=update.loss,
                ),
            )

    def answer(self, trainer: Trainer, nodes: Sequence[NodeId] | None = None) -> None:
        """Answer the recorded training tasks (of ``nodes``, default all) with ``trainer``."""
        for node in list(nodes if nodes is not None else self.tasks):
            task = self.tasks.pop(node)
            event = trainer(node, task)
            if event is not None:
                self.handle(node, event)

    @property
    def timers(self) -> dict[tuple[NodeId, Timer], float]:
        """Every pending timer: (actor, timer) -> deadline."""
        return {(a, t): at for a, h in self.hosts.items() for t, (at, _) in h.timers.items()}


def fixed_updates(fed: MiniFederation, *, seed: int = 0, scale: float = 0.1) -> Trainer:
    """A trainer whose update for each node is fixed by ``seed`` and the node's position."""
    index = {n: i for i, n in enumerate(sorted(fed.nodes))}

    def train(node: NodeId, task: TrainingTask) -> Event:
        rng = np.random.default_rng([seed, index[node], task.round])
        delta = (rng.uniform(-1, 1, task.weights.shape) * scale).astype(np.float32)
        return LocalUpdateReady(
            round=task.round, delta=delta, num_samples=5 + index[node], loss=0.5
        )

    return train


def plaintext_federation(
    nodes: int = 5,
    *,
    dim: int = 4,
    rounds: int = 2,
    strategy: str = "fedavg",
    round_timeout: float = 10.0,
    seed: int = 0,
    trainer: Trainer | None = None,
) -> MiniFederation:
    """A plaintext job over ``nodes`` contributors of a ``dim``-parameter model."""
    from tessera.protocol.contributor import Contributor

    ids = [NodeId(f"node-{i:03d}") for i in range(nodes)]
    params = RoundParams(
        job_id=JobId("mini"), rounds=rounds, round_timeout=round_timeout, seed=seed
    )
    coordinator = Coordinator(params, ids, np.zeros(dim, np.float32), make_strategy(strategy))
    return MiniFederation(
        coordinator,
        {n: Contributor(n, params.job_id) for n in ids},
        job_seed=seed,
        trainer=trainer,
    )


def secure_federation(
    nodes: int,
    *,
    secure: SecureParams,
    dim: int = 4,
    rounds: int = 1,
    strategy: str = "fedavg",
    round_timeout: float = 10.0,
    seed: int = 0,
    trainer: Trainer | None = None,
) -> MiniFederation:
    """A secure job: real keys, sealing and bytes (``runtime.sim.secure.build_secure``)."""
    ids = [NodeId(f"node-{i:03d}") for i in range(nodes)]
    params = RoundParams(
        job_id=JobId("mini-secure"), rounds=rounds, round_timeout=round_timeout, seed=seed
    )
    coordinator, machines = build_secure(
        ids,
        params=params,
        secure=secure,
        initial_weights=np.zeros(dim, np.float32),
        strategy=make_strategy(strategy),
        seed=seed,
    )
    return MiniFederation(
        coordinator, dict(zip(ids, machines, strict=True)), job_seed=seed, trainer=trainer
    )

"""A small secure federation driven by hand: real machines, keys, sealing and bytes.

``Federation`` wires one ``SecureCoordinator`` and eight ``Node`` machines
(a ``Contributor`` with a ``SecureContext`` plus an ``Aggregator``) and routes
their ``Send`` effects through a FIFO queue. There are no sockets, threads,
clocks or mocks: a test delivers messages one at a time (``step``), runs the
queue dry (``run``), or hands a machine any bytes it likes (``inject``).
Timers are recorded but never fired unless a test fires them, so an honest
round closes on message flow alone (every input arrives) and a stalled round
shows up as no ``RoundClosed`` at all.

Contributors' stochastic rounding is seeded, so two federations built with
the same ``seed`` and fed the same updates close with bit-identical
aggregates whatever the masks (fresh OS randomness) were: that is how a test
proves a refused message changed nothing.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from functools import cache

import numpy as np

from tessera.crypto.envelope import Envelope, ReplayGuard, open_envelope, seal
from tessera.crypto.fixedpoint import Ring, max_error
from tessera.crypto.keys import NodeKeys, PublicKeys
from tessera.crypto.sharing import SeedShare, Share
from tessera.ids import COORDINATOR, JobId, NodeId
from tessera.protocol.aggregator import Aggregator
from tessera.protocol.codec import Report, encode_report, encode_share
from tessera.protocol.contributor import Contributor, SecureContext
from tessera.protocol.coordinator import Coordinator
from tessera.protocol.effects import (
    Effect,
    Rejected,
    RoundClosed,
)
from tessera.protocol.events import Event, JobStarted, LocalUpdateReady
from tessera.protocol.kinds import Kind
from tessera.protocol.messages import AggregateRequest, Sealed, TrainRequest
from tessera.protocol.node import Node
from tessera.protocol.params import RoundParams
from tessera.protocol.secure_coordinator import SecureCoordinator, SecureParams
from tessera.protocol.strategies import make_strategy
from tessera.protocol.timers import Timer
from tessera.protocol.topology import TreeParams
from tessera.protocol.wire import Wire as PartyWire
from tessera.runtime.host import TrainingTask
from tessera.testing import MiniFederation, Wire

JOB = JobId("secure-job")
DIM = 6  # model size; every share and sum carries DIM + 2 words (loss and weight)
NODES = tuple(NodeId(f"n{i}") for i in range(8))
TREE = TreeParams(k=3, group_size=4, fan_in=3, min_group=2)
SECURE = SecureParams(tree=TREE, clip=1.0, max_weight=100.0)
ROUND_TIMEOUT = 60.0
TRAINED_AT = 1.0  # when every contributor's local training finishes


def node_keys(name: str) -> NodeKeys:
    """Deterministic test keys (``from_seed`` is for tests and simulations only)."""
    return NodeKeys.from_seed(f"tessera-tests|secure|{name}".encode())


#: A node that holds keys but is in no directory.
MALLORY = NodeId("mallory")


@dataclass(frozen=True)
class Update:
    delta: np.ndarray
    num_samples: int
    loss: float


def honest_updates(nodes: tuple[NodeId, ...] = NODES) -> dict[NodeId, Update]:
    """One update per node, inside the clip bound, with distinct weights below saturation."""
    out = {}
    for i, node in enumerate(nodes):
        delta = np.random.default_rng([7, i]).uniform(-0.3, 0.3, DIM).astype(np.float32)
        out[node] = Update(delta=delta, num_samples=10 * (i + 1), loss=0.5 + 0.1 * i)
    return out


class Federation:
    """One secure job of one round over ``NODES``, routed by hand."""

    def __init__(self, *, seed: int = 0, nodes: tuple[NodeId, ...] = NODES) -> None:
        self.node_ids = nodes
        self.keys = {n: node_keys(n) for n in nodes}
        self.keys[COORDINATOR] = node_keys(COORDINATOR)
        self.directory: dict[NodeId, PublicKeys] = {n: k.public for n, k in self.keys.items()}
        self.coordinator = SecureCoordinator(
            RoundParams(job_id=JOB, rounds=1, round_timeout=ROUND_TIMEOUT),
            nodes,
            np.zeros(DIM, np.float32),
            make_strategy("fedavg"),
            secure=SECURE,
            keys=self.keys[COORDINATOR],
            directory=self.directory,
        )
        self.nodes = {
            n: Node(
                Contributor(
                    n,
                    JOB,
                    SecureContext(
                        keys=self.keys[n],
                        directory=self.directory,
                    ),
                ),
                Aggregator(n, JOB, self.keys[n], self.directory),
            )
            for i, n in enumerate(nodes)
        }
        # Real hosts on an in-memory network: the kit routes, records and never fires a
        # timer unless a test does.
        self.fed = MiniFederation(self.coordinator, self.nodes)

    # -- machines and routing (the kit's) -------------------------------------------
    @property
    def now(self) -> float:
        return self.fed.clock.time

    @now.setter
    def now(self, value: float) -> None:
        self.fed.clock.time = value

    @property
    def queue(self) -> deque[Wire]:
        return self.fed.network.queue

    @property
    def delivered(self) -> list[Wire]:
        return self.fed.delivered

    @property
    def rejected(self) -> list[tuple[NodeId, Rejected]]:
        return self.fed.refused

    @property
    def closed(self) -> list[RoundClosed]:
        return self.fed.closed

    @property
    def timers(self) -> dict[tuple[NodeId, Timer], float]:
        return self.fed.timers

    @property
    def training(self) -> dict[NodeId, TrainingTask]:
        return self.fed.tasks

    @property
    def requests(self) -> dict[tuple[str, int], tuple[NodeId, AggregateRequest]]:
        """Every role the coordinator handed out, by seat (replacements last)."""
        return {
            (w.message.group, w.message.position): (w.recipient, w.message)
            for w in self.fed.network.sent
            if isinstance(w.message, AggregateRequest)
        }

    def machine(self, name: NodeId) -> SecureCoordinator | Node:
        return self.coordinator if name == COORDINATOR else self.nodes[name]

    def handle(self, owner: NodeId, event: Event) -> list[Effect]:
        """Feed one event to ``owner``'s machine; what it performed."""
        return self.fed.handle(owner, event)

    def deliver(self, wire: Wire) -> list[Effect]:
        return self.fed.deliver(wire)

    def inject(self, recipient: NodeId, data: bytes, *, sender: NodeId) -> list[Effect]:
        """Hand ``recipient`` a ``Sealed`` that no honest machine produced."""
        return self.fed.inject(recipient, Sealed(data), sender=sender)

    def step(self) -> bool:
        return self.fed.step()

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Deliver queued messages in order until the queue is dry (or ``until`` holds)."""
        self.fed.run(until)

    def take(self, pred: Callable[[Wire], bool]) -> Wire:
        """Remove and return the first queued message matching ``pred``."""
        try:
            return self.fed.network.take(pred)
        except LookupError:
            raise AssertionError("no queued message matches") from None

    # -- the honest round -------------------------------------------------------
    def start(self) -> None:
        """Open round 0 and deliver every assignment and train request."""
        self.handle(COORDINATOR, JobStarted())
        self.run()
        assert set(self.training) == set(self.node_ids)

    def train(self, updates: Mapping[NodeId, Update] | None = None) -> None:
        """Every contributor's training finishes: its k sealed shares join the queue."""
        self.now = TRAINED_AT
        for node, u in (updates or honest_updates()).items():
            event = LocalUpdateReady(
                round=self.training[node].round,
                delta=u.delta,
                num_samples=u.num_samples,
                loss=u.loss,
            )
            self.handle(node, event)

    def closed_round(self) -> RoundClosed:
        assert len(self.closed) == 1, "the round did not close (exactly once)"
        return self.closed[0]

    # -- what the round looks like (read off the coordinator's messages) -------------
    def seat(self, group: str, position: int) -> NodeId:
        return self.requests[(group, position)][0]

    def request(self, group: str, position: int) -> AggregateRequest:
        return self.requests[(group, position)][1]

    def leaves(self) -> list[str]:
        return sorted({g for (g, _), (_, r) in self.requests.items() if r.leaf})

    def root(self) -> str:
        (root,) = {g for (g, _), (_, r) in self.requests.items() if r.parent == COORDINATOR}
        return root

    def members(self, group: str) -> tuple[NodeId, ...]:
        req = self.request(group, 0)
        assert req.leaf
        return tuple(NodeId(i) for i in req.inputs)

    def ring(self) -> Ring:
        req = next(iter(self.requests.values()))[1]
        return Ring(bits=req.ring_bits, frac_bits=req.frac_bits, terms=req.ring_terms)

    def length(self) -> int:
        return next(iter(self.requests.values()))[1].length

    def train_requests(self) -> list[TrainRequest]:
        return [w.message for w in self.delivered if isinstance(w.message, TrainRequest)]

    # -- forging ----------------------------------------------------------------
    def seal(
        self,
        kind: int,
        payload: bytes,
        *,
        sender: NodeId,
        recipient: NodeId,
        signer: NodeKeys | None = None,
        encrypt_for: NodeId | None = None,
        clear: bool = False,
        job: str = JOB,
        round: int = 0,
    ) -> bytes:
        """An envelope as ``sender`` (signed by ``signer``, default its own keys).

        Encrypted for ``encrypt_for`` (default ``recipient``) unless ``clear``.
        """
        target = encrypt_for or recipient
        return seal(
            kind=kind,
            job_id=job,
            round=round,
            sender=sender,
            recipient=recipient,
            payload=payload,
            sender_keys=signer or self.keys[sender],
            recipient_public=None if clear else self.directory[target],
        )

    def open_clear(self, data: bytes) -> Envelope:
        """Read a clear, signed envelope (a report or commitment) without side effects."""
        return open_envelope(
            data,
            recipient_keys=None,
            directory=self.directory,
            expect_job=JOB,
            expect_round=None,
            expect_recipient=None,
            max_bytes=len(data),
            replay=None,
        )


def share_payload(
    group: str,
    position: int,
    ring: Ring,
    length: int,
    share: Share | None = None,
) -> bytes:
    return encode_share(group, position, ring, length, share or SeedShare(os.urandom(32)))


def report_payload(group: str, position: int, received: Iterable[str]) -> bytes:
    return encode_report(Report(group, position, tuple(received)))


def is_report(wire: Wire) -> bool:
    return wire.recipient == COORDINATOR and wire.kind == Kind.REPORT


# -- the honest reference ------------------------------------------------------------


@cache
def baseline() -> RoundClosed:
    """The honest round, undisturbed: what every disturbed round must still produce."""
    fed = Federation()
    fed.start()
    fed.train()
    fed.run()
    assert not fed.rejected
    return fed.closed_round()


def assert_same_round(got: RoundClosed, want: RoundClosed) -> None:
    """Bit-identical aggregate and the same accounting."""
    assert not got.skipped
    assert got.weights.dtype == want.weights.dtype
    assert got.weights.tobytes() == want.weights.tobytes()
    assert (got.participants, got.num_samples, got.selected) == (
        want.participants,
        want.num_samples,
        want.selected,
    )
    assert got.mean_loss == want.mean_loss


def expected_mean(updates: Mapping[NodeId, Update]) -> tuple[np.ndarray, float, float]:
    """The weighted mean delta, mean loss and total weight the round should release."""
    w = np.array(
        [min(u.num_samples, SECURE.max_weight) / SECURE.max_weight for u in updates.values()]
    )
    deltas = np.stack([u.delta.astype(np.float64) for u in updates.values()])
    losses = np.array([min(max(u.loss, 0.0), SECURE.loss_cap) for u in updates.values()])
    total = float(w.sum())
    return (w @ deltas) / total, float(w @ losses) / total, total


def quantization_bound(ring: Ring, terms: int, mean: np.ndarray, total: float) -> np.ndarray:
    """How far the decoded mean S'/W' may be from S/W: |dS| + |S/W| |dW| over W - |dW|."""
    e = max_error(ring, terms)
    bound: np.ndarray = (e + np.abs(mean) * e) / (total - e)
    return bound


# -- state snapshots -------------------------------------------------------------------


def freeze(value: object) -> object:
    """A deep, comparable snapshot of machine state (arrays by their bytes).

    Replay guards are left out: they are compared by ``replay_sizes``, since a
    message refused *after* it was authenticated is rightly remembered.
    """
    if isinstance(value, ReplayGuard):
        return "replay-guard"
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, np.random.Generator):
        return ("rng", repr(value.bit_generator.state))
    if is_dataclass(value) and not isinstance(value, type):
        return (
            type(value).__name__,
            tuple((f.name, freeze(getattr(value, f.name))) for f in fields(value)),
        )
    if isinstance(value, Mapping):
        return ("map", tuple(sorted((repr(k), freeze(v)) for k, v in value.items())))
    if isinstance(value, list | tuple | deque):
        return tuple(freeze(v) for v in value)
    if isinstance(value, set | frozenset):
        return ("set", tuple(sorted(repr(freeze(v)) for v in value)))
    return value


def _attributes(obj: object) -> dict[str, object]:
    names = list(getattr(obj, "__dict__", {}))
    for cls in type(obj).__mro__:
        names += [s for s in getattr(cls, "__slots__", ()) if hasattr(obj, s)]
    return {n: getattr(obj, n) for n in dict.fromkeys(names)}


def machine_state(machine: Node | Coordinator) -> dict[str, object]:
    """Every attribute of the machine (for a node, of its two parts), frozen, by name."""
    parts: dict[str, object] = (
        {"contributor": machine.contributor, "aggregator": machine.aggregator}
        if isinstance(machine, Node)
        else {"coordinator": machine}
    )
    return {
        f"{part}.{name}": freeze(value)
        for part, obj in parts.items()
        for name, value in _attributes(obj).items()
    }


def changed(before: Mapping[str, object], after: Mapping[str, object]) -> list[str]:
    """The names of the attributes that differ between two ``machine_state`` snapshots."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def replay_sizes(machine: Node | Coordinator) -> tuple[int, ...]:
    parts: list[object] = (
        [machine.contributor, machine.aggregator] if isinstance(machine, Node) else [machine]
    )
    guards = [
        v.replay if isinstance(v, PartyWire) else v
        for p in parts
        for v in _attributes(p).values()
        if isinstance(v, ReplayGuard | PartyWire)
    ]
    assert guards, "every secure machine keeps a replay guard"
    return tuple(len(g) for g in guards)

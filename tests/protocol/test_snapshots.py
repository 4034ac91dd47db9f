"""A coordinator restored from a snapshot answers every later event as the original would."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.crypto.envelope import open_envelope
from tessera.crypto.keys import NodeKeys
from tessera.errors import LocalProtocolError
from tessera.ids import COORDINATOR, JobId, NodeId
from tessera.protocol import Coordinator, RoundParams, make_strategy
from tessera.protocol.coordinator import CoordinatorSnapshot
from tessera.protocol.effects import Effect, RoundClosed, Send
from tessera.protocol.events import (
    Event,
    JobStarted,
    MessageReceived,
    ParticipantWithdrawn,
    TimerFired,
)
from tessera.protocol.kinds import Kind
from tessera.protocol.messages import Sealed, UpdateSubmission
from tessera.protocol.node import Node
from tessera.protocol.secure_coordinator import SecureCoordinator, SecureParams
from tessera.protocol.timers import RoundDeadline
from tessera.protocol.topology import TreeParams
from tessera.runtime.sim import DeviceModel, RoundStats, Simulation
from tessera.runtime.sim.secure import build_secure

from .secure_kit import Federation, changed, is_report, machine_state

P = 5
NODES = [NodeId(f"n{i}") for i in range(6)]
STRATEGIES = ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"]


def plain(value: object) -> object:
    """Effects made comparable bit for bit: arrays by dtype, shape and bytes, floats by
    their bits (a skipped round's NaN mean loss is then equal to itself)."""
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, float):
        return ("float", value.hex())
    if is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, tuple(plain(getattr(value, f.name)) for f in fields(value)))
    if isinstance(value, tuple | list):
        return tuple(plain(v) for v in value)
    if hasattr(value, "items"):
        return tuple(sorted((k, plain(v)) for k, v in value.items()))
    return value


def assert_same_state(original: Coordinator, restored: Coordinator) -> None:
    """Every attribute equal, the open round's derived state included; the strategy by its
    state. Keys are construction arguments (equal, but other objects here)."""
    skip = {"coordinator.strategy", "coordinator.keys", "coordinator.wire"}
    assert [
        a for a in changed(machine_state(original), machine_state(restored)) if a not in skip
    ] == []
    assert plain(restored.strategy.state()) == plain(original.strategy.state())


def machine(strategy: str, rounds: int) -> Coordinator:
    params = RoundParams(job_id=JobId("j"), rounds=rounds, fraction=0.7, round_timeout=10.0, seed=3)
    return Coordinator(params, NODES, np.zeros(P, np.float32), make_strategy(strategy))


def round_events(
    coordinator: Coordinator, rng: np.random.Generator, now: float
) -> list[tuple[Event, float]]:
    """Updates from some of the round's cohort, a withdrawal now and then, then the deadline."""
    events: list[tuple[Event, float]] = []
    for node in sorted(coordinator._selected):
        if rng.random() < 0.8:
            update = UpdateSubmission(
                job_id=JobId("j"),
                round=coordinator.round,
                delta=rng.normal(size=P).astype(np.float32),
                num_samples=int(rng.integers(1, 50)),
                loss=float(rng.random()),
            )
            events.append((MessageReceived(sender=node, message=update), now))
    if rng.random() < 0.3:
        events.append((ParticipantWithdrawn(node=NODES[int(rng.integers(len(NODES)))]), now))
    deadline = RoundDeadline(round=coordinator.round)
    events.append((TimerFired(timer=deadline), now + 10.0))
    return events


@settings(max_examples=30, deadline=None)
@given(
    strategy=st.sampled_from(STRATEGIES),
    rounds=st.integers(2, 6),
    cut=st.integers(0, 4),
    seed=st.integers(0, 2**16),
)
def test_restored_plaintext_coordinator_is_the_original(
    strategy: str, rounds: int, cut: int, seed: int
) -> None:
    cut = min(cut, rounds - 2)
    original = machine(strategy, rounds)
    rng = np.random.default_rng(seed)
    original.handle(JobStarted(), 0.0)
    now, restored = 0.0, None
    while original.state.value == "collecting":
        for event, at in round_events(original, rng, now):
            ours = original.handle(event, at)
            if restored is not None:
                assert plain(restored.handle(event, at)) == plain(ours)
            elif any(isinstance(e, RoundClosed) and e.round == cut for e in ours):
                snap = original.snapshot()  # the step that closed ``cut`` opened the next
                restored = Coordinator.restore(snap, *_args(strategy, rounds))
                assert snap.round == cut + 1
                assert_same_state(original, restored)
            now = at
    assert restored is not None
    assert np.array_equal(restored.weights, original.weights)


def _args(strategy: str, rounds: int) -> tuple[object, ...]:
    m = machine(strategy, rounds)
    return (m.params, m.nodes, np.zeros(P, np.float32), make_strategy(strategy))


def test_a_round_nobody_answered_is_restored_too() -> None:
    """Skipped rounds close with a NaN mean loss; the restored machine's must match it."""
    original = machine("fedadam", 4)
    original.handle(JobStarted(), 0.0)
    closed = original.handle(TimerFired(timer=RoundDeadline(round=0)), 10.0)
    assert [e.skipped for e in closed if isinstance(e, RoundClosed)] == [True]
    restored = Coordinator.restore(original.snapshot(), *_args("fedadam", 4))
    for r in (1, 2, 3):
        deadline = TimerFired(timer=RoundDeadline(round=r))
        assert plain(restored.handle(deadline, 10.0 * (r + 1))) == plain(
            original.handle(deadline, 10.0 * (r + 1))
        )
    assert original.state.value == restored.state.value == "finished"


def test_a_snapshot_mid_round_is_refused() -> None:
    coordinator = machine("fedavg", 3)
    with pytest.raises(LocalProtocolError, match="open round"):
        coordinator.snapshot()
    coordinator.handle(JobStarted(), 0.0)
    coordinator.snapshot()  # round 0 just opened: fine
    node = sorted(coordinator._selected)[0]
    update = UpdateSubmission(
        job_id=JobId("j"), round=0, delta=np.ones(P, np.float32), num_samples=1, loss=0.0
    )
    coordinator.handle(MessageReceived(sender=node, message=update), 1.0)
    with pytest.raises(LocalProtocolError, match="as a round opens"):
        coordinator.snapshot()  # its progress would be lost


def test_a_secure_snapshot_mid_round_is_refused() -> None:
    fed = Federation()
    fed.start()
    fed.coordinator.snapshot()  # round 0 just opened: fine
    fed.train()
    fed.run(until=lambda: any(is_report(w) for w in fed.delivered))
    with pytest.raises(LocalProtocolError, match="as a round opens"):
        fed.coordinator.snapshot()  # the report would be lost
    fed.run()
    assert fed.closed_round().round == 0  # the job's one round: nothing is open
    with pytest.raises(LocalProtocolError, match="open round"):
        fed.coordinator.snapshot()


def test_a_snapshot_for_another_model_is_refused() -> None:
    snap = CoordinatorSnapshot(
        round=1, opened_at=0.0, weights=np.zeros(P + 1, np.float32), strategy={}, withdrawn=()
    )
    with pytest.raises(LocalProtocolError, match="weights"):
        Coordinator.restore(snap, *_args("fedavg", 3))


def test_strategy_state_is_checked_on_load() -> None:
    adam = make_strategy("fedadam")
    with pytest.raises(ValueError, match="m and v"):
        adam.load_state({"velocity": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match="state holds"):
        make_strategy("fedavg").load_state({"m": np.zeros(2, np.float32)})


class _Fixed:
    """Node i's update is a fixed vector (the secure run needs no real training)."""

    def __init__(self, n: int, p: int) -> None:
        self.table = np.random.default_rng(1).normal(size=(n, p)).astype(np.float32) * 0.1

    def train(
        self,
        weights: object,
        nodes: np.ndarray,
        seed: int,
        *,
        prox_mu: object = None,
        round: int = 0,
    ):  # type: ignore[no-untyped-def]
        class Out:
            deltas = self.table[nodes]
            num_samples = np.full(len(nodes), 5, np.int64)
            loss = np.ones(len(nodes), np.float32)

        return Out()


@pytest.mark.parametrize("cut", [0, 2])
def test_restored_secure_coordinator_finishes_with_the_same_model(cut: int) -> None:
    """Through the whole secure protocol, with dropouts and failing aggregators."""
    nodes = [NodeId(f"node-{i:03d}") for i in range(30)]
    params = RoundParams(job_id=JobId("s"), rounds=5, fraction=1.0, round_timeout=5.0, seed=2)
    secure = SecureParams(
        tree=TreeParams(k=3, group_size=6, fan_in=3, min_group=2), clip=1.0, max_weight=10.0
    )

    def run(swap_after: int | None) -> np.ndarray:
        coordinator, machines = build_secure(
            nodes,
            params=params,
            secure=secure,
            initial_weights=np.zeros(P, np.float32),
            strategy=make_strategy("fedadam"),
            seed=4,
        )
        devices = DeviceModel.sample(
            len(nodes),
            dropout=0.15,
            speed_sigma=0.3,
            samples_per_second=100.0,
            seed=9,
            aggregator_failure=0.1,
        )

        def on_round(stats: object) -> None:
            closed: RoundClosed = stats.closed  # type: ignore[attr-defined]
            if closed.round != swap_after:
                return
            host = sim.hosts[COORDINATOR]
            snap = host.machine.snapshot()  # type: ignore[attr-defined]
            fresh, _ = build_secure(
                nodes,
                params=params,
                secure=secure,
                initial_weights=np.zeros(P, np.float32),
                strategy=make_strategy("fedadam"),
                seed=4,
            )
            restored = type(fresh).restore(
                snap,
                fresh.params,
                fresh.nodes,
                np.zeros(P, np.float32),
                make_strategy("fedadam"),
                secure=fresh.secure,
                keys=fresh.keys,
                directory=fresh.directory,
                organisations=fresh.organisations,
            )
            host.machine = restored
            sim.coordinator = restored

        sim = Simulation(
            coordinator,
            nodes,
            _Fixed(len(nodes), P),
            devices,
            np.full(len(nodes), 5, np.int64),
            local_epochs=1,
            seed=4,
            on_round=on_round,
            machines=machines,
        )
        return sim.run()

    assert np.array_equal(run(None), run(cut))


class _Shadowed:
    """The original secure coordinator, shadowed by a copy restored from its snapshot.

    The simulation's coordinator host feeds this in place of the original; every
    event goes to both, and what the two ask for must mean the same: sealing
    draws fresh nonces, so envelopes are compared opened (kind, job, round,
    sender, recipient, payload), everything else bit for bit.
    """

    def __init__(
        self,
        original: SecureCoordinator,
        restored: SecureCoordinator,
        keys: Mapping[NodeId, NodeKeys],
    ) -> None:
        self.original, self.restored, self.keys = original, restored, keys
        self.steps = 0
        self.kinds: set[str] = set()

    def handle(self, event: Event, now: float) -> list[Effect]:
        ours = self.original.handle(event, now)
        theirs = self.restored.handle(event, now)
        assert [self.meaning(e) for e in theirs] == [self.meaning(e) for e in ours], event
        self.steps += 1
        self.kinds.update(type(e).__name__ for e in ours)
        return ours

    def meaning(self, effect: Effect) -> object:
        if isinstance(effect, Send) and isinstance(effect.message, Sealed):
            env = open_envelope(
                effect.message.data,
                recipient_keys=self.keys[effect.recipient],
                directory=self.original.directory,
                expect_job=self.original.params.job_id,
                expect_round=None,
                expect_recipient=effect.recipient,
                max_bytes=len(effect.message.data),
                replay=None,
            )
            self.kinds.add(Kind(env.kind).name)
            opened = (env.kind, env.job_id, env.round, env.sender, env.recipient, env.sealed)
            return ("Send", effect.recipient, opened, env.payload)
        return plain(effect)


@pytest.mark.parametrize(
    ("strategy", "cut", "audit_fraction"),
    [("fedadam", 0, 1.0), ("fedavgm", 1, 0.5), ("fedyogi", 2, 1.0)],
)
def test_restored_secure_coordinator_answers_every_later_event_as_the_original(
    strategy: str, cut: int, audit_fraction: float
) -> None:
    """Effect by effect, through dropouts, failing aggregators (replacements, final
    commits, deadlines) and withdrawals before and after the snapshot."""
    nodes = [NodeId(f"node-{i:03d}") for i in range(30)]
    params = RoundParams(job_id=JobId("s"), rounds=cut + 3, fraction=1.0, round_timeout=5.0, seed=2)
    secure = SecureParams(
        tree=TreeParams(k=3, group_size=6, fan_in=3, min_group=2),
        clip=1.0,
        max_weight=10.0,
        audit_fraction=audit_fraction,
    )

    def build() -> tuple[SecureCoordinator, list[Node]]:
        return build_secure(
            nodes,
            params=params,
            secure=secure,
            initial_weights=np.zeros(P, np.float32),
            strategy=make_strategy(strategy),
            seed=4,
        )

    coordinator, machines = build()
    keys = {n: m.aggregator.keys for n, m in zip(nodes, machines, strict=True) if m.aggregator}
    keys[COORDINATOR] = coordinator.keys
    shadow: list[_Shadowed] = []

    def on_round(stats: RoundStats) -> None:
        closed, host = stats.closed, sim.hosts[COORDINATOR]
        if closed.round in (cut - 1, cut + 1):  # one withdrawal each side of the snapshot
            host.handle(ParticipantWithdrawn(node=nodes[closed.round + 3]), stats.closed_at)
        if closed.round != cut:
            return
        snap = coordinator.snapshot()
        assert snap.round == cut + 1
        fresh, _ = build()
        restored = SecureCoordinator.restore(
            snap,
            fresh.params,
            fresh.nodes,
            np.zeros(P, np.float32),
            make_strategy(strategy),
            secure=fresh.secure,
            keys=fresh.keys,
            directory=fresh.directory,
            organisations=fresh.organisations,
        )
        assert plain(restored.snapshot()) == plain(snap)
        assert_same_state(coordinator, restored)
        shadow.append(_Shadowed(coordinator, restored, keys))
        host.machine = shadow[0]

    sim = Simulation(
        coordinator,
        nodes,
        _Fixed(len(nodes), P),
        DeviceModel.sample(
            len(nodes),
            dropout=0.15,
            speed_sigma=0.3,
            samples_per_second=100.0,
            seed=9,
            aggregator_failure=0.1,
        ),
        np.full(len(nodes), 5, np.int64),
        local_epochs=1,
        seed=4,
        on_round=on_round,
        machines=machines,
    )
    final = sim.run()
    (twin,) = shadow
    assert final.tobytes() == twin.restored.weights.tobytes()
    withdrawn = {nodes[r + 3] for r in (cut - 1, cut + 1) if r >= 0}
    assert twin.restored.withdrawn == coordinator.withdrawn == withdrawn
    # The comparison saw the whole protocol, not just an idle tail.
    assert twin.steps > 50
    assert {"RoundClosed", "JobFinished", "StartTimer", "CancelTimer"} <= twin.kinds
    assert {"COMMIT", "RESEND_SHARE", "RESEND_PARTIAL", "REASSIGN", "AUDIT_REQUEST"} <= twin.kinds

"""A coordinator restored from a snapshot answers every later event as the original would."""

from __future__ import annotations

from dataclasses import fields, is_dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.errors import LocalProtocolError
from tessera.ids import COORDINATOR, JobId, NodeId
from tessera.protocol import Coordinator, RoundParams, make_strategy
from tessera.protocol.coordinator import CoordinatorSnapshot
from tessera.protocol.effects import RoundClosed
from tessera.protocol.events import (
    Event,
    JobStarted,
    MessageReceived,
    ParticipantWithdrawn,
    TimerFired,
)
from tessera.protocol.messages import UpdateSubmission
from tessera.protocol.timers import RoundDeadline
from tessera.runtime.sim import DeviceModel, Simulation
from tessera.runtime.sim.secure import build_secure

P = 5
NODES = [NodeId(f"n{i}") for i in range(6)]
STRATEGIES = ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"]


def plain(value: object) -> object:
    """Effects made comparable: arrays by dtype, shape and bytes."""
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, tuple(plain(getattr(value, f.name)) for f in fields(value)))
    if isinstance(value, tuple | list):
        return tuple(plain(v) for v in value)
    if hasattr(value, "items"):
        return tuple(sorted((k, plain(v)) for k, v in value.items()))  # type: ignore[attr-defined]
    return value


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
            now = at
    assert restored is not None
    assert np.array_equal(restored.weights, original.weights)


def _args(strategy: str, rounds: int) -> tuple[object, ...]:
    m = machine(strategy, rounds)
    return (m.params, m.nodes, np.zeros(P, np.float32), make_strategy(strategy))


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

    def train(self, weights: object, nodes: np.ndarray, seed: int, *, prox_mu: object = None):  # type: ignore[no-untyped-def]
        class Out:
            deltas = self.table[nodes]
            num_samples = np.full(len(nodes), 5, np.int64)
            loss = np.ones(len(nodes), np.float32)

        return Out()


@pytest.mark.parametrize("cut", [0, 2])
def test_restored_secure_coordinator_finishes_with_the_same_model(cut: int) -> None:
    """Through the whole secure protocol, with dropouts and failing aggregators."""
    from tessera.protocol.secure_coordinator import SecureParams
    from tessera.protocol.topology import TreeParams

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

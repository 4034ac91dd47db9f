"""Compute charging: measured protocol CPU time spent on the virtual clock, one CPU per actor."""

from __future__ import annotations

import time
from functools import cache

import numpy as np
import pytest

from tessera.config import parse_config
from tessera.ids import COORDINATOR, JobId, NodeId
from tessera.jobs.prepared import PreparedJob, prepare_job
from tessera.jobs.records import SimulationResult
from tessera.protocol.effects import Effect, JobFinished, Send, StartTimer
from tessera.protocol.events import Event, JobStarted, MessageReceived, TimerFired
from tessera.protocol.messages import TrainingDeclined
from tessera.protocol.timers import AuditDue
from tessera.runtime.sim import DeviceModel, Simulation
from tessera.runtime.sim.job import simulate

BURN = 0.02  # CPU seconds each busy-node call burns
LATENCY = 0.01


@cache
def small_job(secure: bool) -> PreparedJob:
    """16 nodes, no dropouts, deadlines far beyond any charged compute."""
    raw = {
        "job": {"name": "charge", "task": "classification", "seed": 4},
        "data": {"source": "sklearn", "dataset": "digits", "target": "target"},
        "partition": {"scheme": "iid", "nodes": 16},
        "model": {"kind": "linear"},
        "recipe": {"clip_norm": 10.0},
        "federation": {"rounds": 2, "round_timeout": 1e4},
        "simulation": {"dropout": 0.0},
        "secure": {"enabled": secure, "k": 2, "group_size": 4, "phase_timeout": 1e3},
        "baseline": {"enabled": False},
    }
    return prepare_job(parse_config(raw))


def virtual(result: SimulationResult) -> list[tuple[float, float, int]]:
    return [(r.virtual_seconds, r.virtual_round_seconds, r.participants) for r in result.rounds]


@pytest.mark.parametrize("secure", [False, True])
def test_charging_off_is_the_default_run(secure: bool) -> None:
    job = small_job(secure)
    default, off = simulate(job), simulate(job, charge_compute=False)
    np.testing.assert_array_equal(default.weights, off.weights)
    assert virtual(default) == virtual(off)
    assert all(r.cpu_seconds == r.coordinator_cpu_seconds == 0.0 for r in off.rounds)
    # rounds tile the job: each starts when the previous one closed
    assert sum(r.virtual_round_seconds for r in off.rounds) == pytest.approx(
        off.rounds[-1].virtual_seconds
    )


@pytest.mark.parametrize("secure", [False, True])
def test_charged_rounds_take_part_alike_and_last_longer(secure: bool) -> None:
    job = small_job(secure)
    plain, charged = simulate(job), simulate(job, charge_compute=True)
    assert [r.included for r in charged.rounds] == [r.included for r in plain.rounds]
    assert all(r.participants == job.n_nodes for r in charged.rounds)
    for p, c in zip(plain.rounds, charged.rounds, strict=True):
        assert c.virtual_round_seconds >= p.virtual_round_seconds
        assert c.virtual_seconds >= p.virtual_seconds
        assert c.cpu_seconds >= c.coordinator_cpu_seconds > 0
    # quantization aside, charging never changes the model
    np.testing.assert_allclose(charged.weights, plain.weights, atol=1e-6)


def burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def ping(round: int) -> TrainingDeclined:
    return TrainingDeclined(job_id=JobId("j"), round=round, reason="")


class BusyNode:
    """Burns ``BURN`` CPU seconds per message, answers it, and arms one timer."""

    def __init__(self) -> None:
        self.started: list[float] = []
        self.timer_at: float | None = None

    def handle(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, TimerFired):
            self.timer_at = now
            return []
        assert isinstance(event, MessageReceived)
        self.started.append(now)
        burn(BURN)
        effects: list[Effect] = [Send(recipient=COORDINATOR, message=event.message)]
        if len(self.started) == 1:  # due while this node is still busy: it must wait
            effects.append(StartTimer(timer=AuditDue(round=0), at=now + BURN / 10))
        return effects


class PingCoordinator:
    """Sends the node two messages at once; the job ends when both come back."""

    def __init__(self, node: NodeId) -> None:
        self.node = node
        self.answered: list[float] = []

    def handle(self, event: Event, now: float) -> list[Effect]:
        if isinstance(event, JobStarted):
            return [Send(recipient=self.node, message=ping(r)) for r in range(2)]
        self.answered.append(now)
        if len(self.answered) < 2:
            return []
        return [JobFinished(weights=np.zeros(1, np.float32), rounds=0)]


def run_busy(charge: bool) -> tuple[BusyNode, PingCoordinator]:
    node_id = NodeId("node-a")
    node, coordinator = BusyNode(), PingCoordinator(node_id)
    sim = Simulation(
        coordinator,  # type: ignore[arg-type]
        [node_id],
        trainer=None,  # type: ignore[arg-type]
        devices=DeviceModel.sample(1, dropout=0, speed_sigma=0, samples_per_second=1, seed=0),
        node_samples=np.ones(1, np.int64),
        local_epochs=1,
        seed=0,
        latency=LATENCY,
        bandwidth_bytes_per_s=1e15,  # transfer time negligible
        machines=[node],
        charge_compute=charge,
    )
    sim.run()
    return node, coordinator


def test_a_busy_actor_sends_late_and_serializes_its_events() -> None:
    node, coordinator = run_busy(charge=True)
    first, second = node.started
    assert first >= LATENCY  # the pings left after the coordinator's own (tiny) charged call
    assert second >= first + BURN  # the second ping waited for the first's charged end
    answered_first, answered_second = coordinator.answered
    assert answered_first >= first + BURN + LATENCY  # the answer departs when the call ends
    assert answered_second >= second + BURN + LATENCY
    assert node.timer_at is not None and node.timer_at >= second + BURN  # deferred, not lost


def test_uncharged_calls_take_no_virtual_time() -> None:
    node, coordinator = run_busy(charge=False)
    assert node.started == pytest.approx([LATENCY, LATENCY])
    assert coordinator.answered == pytest.approx([2 * LATENCY, 2 * LATENCY])
    assert node.timer_at == pytest.approx(LATENCY + BURN / 10)

"""The one host per role: timers, effects, training tasks, and the FedProx term everywhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.config import load_config
from tessera.ids import COORDINATOR, NodeId
from tessera.jobs.prepared import prepare_job
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
    LocalUpdateReady,
    MessageReceived,
    TimerFired,
)
from tessera.protocol.messages import TrainingDeclined
from tessera.protocol.timers import AuditDue
from tessera.runtime.host import Host, Observer, TrainingTask, WallClock, train_seed, training_task
from tessera.runtime.sim.job import simulate

NODE = NodeId("n1")
# Timers are values the machine chooses; the host only keys and orders them.
T = {
    name: AuditDue(round=k)
    for name, k in {"late": 9, "early": 2, "gone": 1, "tie": 3, "t": 0}.items()
}
EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "tessera" / "examples"


@dataclass
class Script:
    """A machine that answers each event with effects from a script, and logs what it saw."""

    script: dict[type, list[Effect]] = field(default_factory=dict)
    seen: list[tuple[Event, float]] = field(default_factory=list)

    def handle(self, event: Event, now: float) -> list[Effect]:
        self.seen.append((event, now))
        if isinstance(event, TimerFired):
            return [Rejected(sender=NODE, reason=f"fired {event.timer}")]
        return list(self.script.get(type(event), []))


@dataclass
class Ports(Observer):
    sent: list[Send] = field(default_factory=list)
    tasks: list[TrainingTask] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    closed: list[RoundClosed] = field(default_factory=list)
    woken: list[float] = field(default_factory=list)
    answer: Event | None = None
    t: float = 0.0

    def send(self, sender: NodeId, effect: Send) -> None:
        self.sent.append(effect)

    def start(self, actor: NodeId, task: TrainingTask) -> Event | None:
        self.tasks.append(task)
        return self.answer

    def rejected(self, actor: NodeId, effect: Rejected) -> None:
        self.refused.append(effect.reason)

    def round_closed(self, actor: NodeId, effect: RoundClosed) -> None:
        self.closed.append(effect)

    def now(self) -> float:
        return self.t

    def wake(self, actor: NodeId, at: float) -> None:
        self.woken.append(at)

    def charge(self, actor: NodeId, seconds: float) -> None:
        self.t += seconds


def host(machine: Script, ports: Ports, **kw: object) -> Host:
    return Host(
        NODE,
        machine,
        outbox=ports,
        clock=ports,
        job_seed=7,
        trainer=ports,
        observer=ports,
        **kw,  # type: ignore[arg-type]
    )


def request(config: dict[str, float]) -> RequestLocalTraining:
    return RequestLocalTraining(round=3, weights=np.zeros(2, np.float32), config=config)


def test_a_train_request_without_a_fedprox_term_keeps_the_recipes() -> None:
    # The simulator once read a missing prox_mu as 0.0 and so dropped the recipe's term.
    assert training_task(request({}), 7).prox_mu is None
    assert training_task(request({"prox_mu": 0.25}), 7).prox_mu == 0.25
    assert training_task(request({}), 7).seed == train_seed(7, 3)


def test_training_answered_at_once_is_handled_after_the_calls_effects() -> None:
    update = LocalUpdateReady(round=3, delta=np.zeros(2, np.float32), num_samples=1, loss=0.0)
    reply = Send(recipient=COORDINATOR, message=TrainingDeclined(job_id="j", round=3, reason="x"))
    machine = Script({JobStarted: [request({}), reply], LocalUpdateReady: [reply]})
    ports = Ports(answer=update)
    host(machine, ports).handle(JobStarted(), now=5.0)
    assert [type(e) for e, _ in machine.seen] == [JobStarted, LocalUpdateReady]
    assert len(ports.sent) == 2 and len(ports.tasks) == 1  # the first send went out first


def test_timers_fire_in_deadline_order_and_cancelled_ones_never() -> None:
    machine = Script(
        {
            JobStarted: [
                StartTimer(timer=T["late"], at=9.0),
                StartTimer(timer=T["early"], at=2.0),
                StartTimer(timer=T["gone"], at=1.0),
                StartTimer(timer=T["tie"], at=2.0),
                CancelTimer(timer=T["gone"]),
            ]
        }
    )
    ports = Ports()
    h = host(machine, ports)
    h.handle(JobStarted(), now=0.0)
    assert h.next_timer() == 2.0
    assert h.fire_due(5.0) == 2
    assert ports.refused == [
        f"fired {T['early']}",
        f"fired {T['tie']}",
    ]  # ties: in the order they were set
    assert h.fire_due(5.0) == 0 and h.next_timer() == 9.0
    assert sorted(ports.woken) == [1.0, 2.0, 2.0, 9.0]  # a virtual clock is asked to wake it


def test_the_end_of_the_job_clears_the_timers() -> None:
    machine = Script(
        {
            JobStarted: [StartTimer(timer=T["t"], at=1.0)],
            MessageReceived: [JobFinished(weights=np.zeros(1, np.float32), rounds=1)],
        }
    )
    h = host(machine, Ports())
    h.handle(JobStarted(), now=0.0)
    h.handle(MessageReceived(sender=NODE, message=request({})), now=0.5)  # type: ignore[arg-type]
    assert h.timers == {} and h.fire_due(10.0) == 0


@given(
    st.lists(
        st.tuples(st.sampled_from(sorted(T)), st.floats(0, 100), st.booleans()),
        max_size=12,
    )
)
def test_replay_rebuilds_exactly_the_timers_a_live_host_holds(
    steps: list[tuple[str, float, bool]],
) -> None:
    """Recovery replays the log: the timers must be what the live host had, nothing performed."""
    effects: list[Effect] = [
        StartTimer(timer=T[name], at=at) if start else CancelTimer(timer=T[name])
        for name, at, start in steps
    ]
    live_ports, replay_ports = Ports(), Ports()
    live = host(Script({JobStarted: effects}), live_ports)
    live.handle(JobStarted(), now=0.0)
    again = host(Script({JobStarted: effects}), replay_ports)
    again.replay(JobStarted(), now=0.0)
    assert {t: at for t, (at, _) in again.timers.items()} == {
        t: at for t, (at, _) in live.timers.items()
    }
    assert not replay_ports.sent and not replay_ports.refused


def test_charged_compute_moves_a_virtual_clock_before_the_effects() -> None:
    machine = Script({JobStarted: [request({})]})
    ports = Ports()
    ticks = iter([1.0, 1.25])
    host(machine, ports, cpu_clock=lambda: next(ticks)).handle(JobStarted(), now=0.0)
    assert ports.t == pytest.approx(0.25)


def test_a_host_with_no_trainer_refuses_a_train_request_loudly() -> None:
    h = Host(
        NODE, Script({JobStarted: [request({})]}), outbox=Ports(), clock=WallClock(), job_seed=0
    )
    with pytest.raises(TypeError, match="no trainer"):
        h.handle(JobStarted())


def test_the_simulator_honours_the_recipes_fedprox_term() -> None:
    """The same job with and without the recipe's mu must differ in the simulator too."""
    base = load_config(EXAMPLES / "chem97.toml")
    small = {
        "federation": base.federation.model_copy(update={"rounds": 1, "fraction": 1.0}),
        "simulation": base.simulation.model_copy(update={"dropout": 0.0}),
        "baseline": base.baseline.model_copy(update={"enabled": False}),
    }

    def weights(mu: float) -> np.ndarray:
        cfg = base.model_copy(
            update={**small, "recipe": base.recipe.model_copy(update={"prox_mu": mu})}
        )
        return simulate(prepare_job(cfg).first_nodes(20), secure=False).weights

    assert not np.array_equal(weights(0.0), weights(5.0))

"""Every role's transitions: a legal next state from its table, or a typed error and FAILED.

The machines' own transition helpers are driven with random input
sequences; whatever the sequence, each step either follows the table or
raises ``LocalProtocolError`` with the machine (or seat, or round) left in
FAILED, from which nothing moves on. docs/state-machines.md is generated
from the same tables and must match them.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.crypto.fixedpoint import Ring
from tessera.errors import LocalProtocolError
from tessera.ids import COORDINATOR, JobId, NodeId
from tessera.protocol import Contributor, Coordinator, RoundParams, make_strategy
from tessera.protocol.aggregator import AggregatorRole, _seat
from tessera.protocol.effects import Rejected
from tessera.protocol.events import (
    JobStarted,
    LocalTrainingFailed,
    MessageReceived,
    ParticipantWithdrawn,
    TimerFired,
)
from tessera.protocol.messages import AggregateRequest, Sealed, TrainingDeclined, UpdateSubmission
from tessera.protocol.secure_coordinator import SecureCoordinator, _RoundState
from tessera.protocol.states import (
    CONTRIBUTOR_TRANSITIONS,
    COORDINATOR_TRANSITIONS,
    ROLE_TRANSITIONS,
    SECURE_ROUND_TRANSITIONS,
    TABLES,
    ContributorInput,
    CoordinatorInput,
    CoordinatorState,
    PhaseInput,
    RoleInput,
    RoleState,
    RoundPhase,
    mermaid,
)
from tessera.protocol.timers import AuditDue, CommitDue, ReportDue, RoundDeadline

from .secure_kit import SECURE, changed, machine_state, node_keys

DOC = Path(__file__).resolve().parents[2] / "docs" / "state-machines.md"


def coordinator() -> tuple[Any, Callable[[Any], None], Callable[[], Enum]]:
    c = Coordinator(
        RoundParams(job_id=JobId("j"), rounds=2),
        [NodeId("a")],
        np.zeros(2, np.float32),
        make_strategy("fedavg"),
    )
    return c, c._transition, lambda: c.state


def contributor() -> tuple[Any, Callable[[Any], None], Callable[[], Enum]]:
    c = Contributor(NodeId("a"), JobId("j"))
    return c, c._transition, lambda: c.state


def seat() -> tuple[Any, Callable[[Any], None], Callable[[], Enum]]:
    request = AggregateRequest(
        job_id=JobId("j"),
        round=0,
        group="L0-0",
        position=0,
        inputs=("a",),
        senders=("a",),
        leaf=True,
        parent=NodeId("p"),
        parent_group="",
        report_at=1.0,
        ring_bits=32,
        frac_bits=16,
        ring_terms=4,
        length=3,
        tree_digest="0" * 64,
    )
    role = AggregatorRole(request, Ring(bits=32, frac_bits=16, terms=4), {"a": NodeId("a")})
    return role, lambda what: _seat(role, what), lambda: role.state


def secure_round() -> tuple[Any, Callable[[Any], None], Callable[[], Enum]]:
    rs = _RoundState.__new__(_RoundState)
    rs.phase = RoundPhase.AGGREGATING
    machine = SecureCoordinator.__new__(SecureCoordinator)
    return rs, lambda what: SecureCoordinator._phase(machine, rs, what), lambda: rs.phase


CASES = [
    (coordinator, CoordinatorInput, COORDINATOR_TRANSITIONS),
    (contributor, ContributorInput, CONTRIBUTOR_TRANSITIONS),
    (seat, RoleInput, ROLE_TRANSITIONS),
    (secure_round, PhaseInput, SECURE_ROUND_TRANSITIONS),
]


@pytest.mark.parametrize(("make", "inputs", "table"), CASES, ids=[c[1].__name__ for c in CASES])
@given(data=st.data())
def test_a_step_follows_the_table_or_fails_for_good(
    make: Callable[[], tuple[Any, Callable[[Any], None], Callable[[], Enum]]],
    inputs: type[Enum],
    table: dict[tuple[Enum, Enum], Enum],
    data: st.DataObject,
) -> None:
    _, step, state = make()
    for what in data.draw(st.lists(st.sampled_from(list(inputs)), max_size=12)):
        before = state()
        expected = table.get((before, what))
        if expected is not None:
            step(what)
            assert state() is expected
            continue
        with pytest.raises(LocalProtocolError):
            step(what)
        assert state().name == "FAILED"
        for again in inputs:  # nothing leaves FAILED
            with pytest.raises(LocalProtocolError):
                step(again)
        return


def test_every_seat_and_round_state_is_reachable() -> None:
    for table, start in (
        (ROLE_TRANSITIONS, RoleState.COLLECTING),
        (SECURE_ROUND_TRANSITIONS, RoundPhase.AGGREGATING),
    ):
        seen, frontier = {start}, [start]
        while frontier:
            s = frontier.pop()
            for (a, _), b in table.items():
                if a is s and b not in seen:
                    seen.add(b)
                    frontier.append(b)
        assert seen == {s for s in type(start) if s.name != "FAILED"}


@pytest.mark.parametrize("name", list(TABLES))
def test_each_diagram_draws_every_row_of_its_table_and_nothing_else(name: str) -> None:
    table = TABLES[name]
    header, *edges = mermaid(table).splitlines()
    assert header == "stateDiagram-v2"
    rows = {f"    {s.name} --> {n.name}: {i.value}" for (s, i), n in table.items()}
    assert sorted(edges) == sorted(rows)
    assert len(rows) == len(table)  # no two rows draw the same edge


def diagrams() -> str:
    parts = [
        "# State machines",
        "",
        "Generated from `protocol/states.py` (checked by"
        " `tests/protocol/test_state_tables.py`); any pair not drawn is a bug that"
        " moves the machine to FAILED.",
        "",
    ]
    for name, table in TABLES.items():
        parts += [f"## {name}", "", "```mermaid", mermaid(table), "```", ""]
    return "\n".join(parts)


def test_the_docs_show_the_tables_as_they_are() -> None:
    regenerate = "cd tests && ../.venv/bin/python -m protocol.test_state_tables"
    assert DOC.read_text() == diagrams(), f"stale: regenerate with {regenerate}"


if __name__ == "__main__":
    DOC.write_text(diagrams())


# -- the machines themselves, fed random events -----------------------------------------

PEERS = [NodeId("a"), NodeId("b"), NodeId("c"), COORDINATOR, NodeId("stranger")]
SMALL_ROUNDS = st.integers(0, 3)
ANY_TIMER = st.one_of(
    st.builds(RoundDeadline, round=SMALL_ROUNDS),
    st.builds(CommitDue, round=SMALL_ROUNDS, level=st.integers(0, 2), final=st.booleans()),
    st.builds(AuditDue, round=SMALL_ROUNDS),
    st.builds(ReportDue, round=SMALL_ROUNDS, group=st.just("L0-0"), position=st.integers(0, 2)),
)
MESSAGES = st.one_of(
    st.builds(
        UpdateSubmission,
        job_id=st.sampled_from([JobId("j"), JobId("other")]),
        round=SMALL_ROUNDS,
        delta=st.sampled_from([np.ones(2, np.float32), np.ones(3, np.float32)]),
        num_samples=st.integers(1, 9),
        loss=st.just(0.5),
    ),
    st.builds(TrainingDeclined, job_id=st.just(JobId("j")), round=SMALL_ROUNDS, reason=st.just("")),
    st.builds(Sealed, st.binary(max_size=64)),
)
EVENTS = st.one_of(
    st.just(JobStarted()),
    st.builds(ParticipantWithdrawn, node=st.sampled_from(PEERS)),
    st.builds(TimerFired, timer=ANY_TIMER),
    st.builds(MessageReceived, sender=st.sampled_from(PEERS), message=MESSAGES),
    st.builds(LocalTrainingFailed, round=SMALL_ROUNDS, reason=st.just("")),  # not for coordinators
)
INPUT_OF = {
    JobStarted: CoordinatorInput.START,
    MessageReceived: CoordinatorInput.MESSAGE,
    TimerFired: CoordinatorInput.DEADLINE,
}


def plaintext_coordinator() -> Coordinator:
    params = RoundParams(job_id=JobId("j"), rounds=3, round_timeout=5.0)
    return Coordinator(params, PEERS[:3], np.zeros(2, np.float32), make_strategy("fedadam"))


def secure_coordinator() -> Coordinator:
    keys = {n: node_keys(n) for n in (*SECURE_NODES, COORDINATOR)}
    return SecureCoordinator(
        RoundParams(job_id=JobId("j"), rounds=3, round_timeout=5.0),
        SECURE_NODES,
        np.zeros(2, np.float32),
        make_strategy("fedavg"),
        secure=SECURE,
        keys=keys[COORDINATOR],
        directory={n: k.public for n, k in keys.items()},
    )


SECURE_NODES = [*PEERS[:3], *(NodeId(f"n{i}") for i in range(5))]


def after(state: CoordinatorState, what: CoordinatorInput) -> set[CoordinatorState]:
    """Where one event may leave the machine: its own row, then rounds closing within it."""
    reached = {COORDINATOR_TRANSITIONS[(state, what)]}
    for inner in (CoordinatorInput.ROUND_DONE, CoordinatorInput.JOB_DONE):
        reached |= {
            n for (s, i), n in COORDINATOR_TRANSITIONS.items() if i is inner and s in reached
        }
    return reached


@pytest.mark.parametrize("make", [plaintext_coordinator, secure_coordinator])
@settings(max_examples=60, deadline=None)
@given(events=st.lists(st.tuples(EVENTS, st.floats(0, 200)), max_size=25))
def test_a_coordinator_fed_anything_moves_by_its_table_or_fails_for_good(
    make: Callable[[], Coordinator], events: list[tuple[Any, float]]
) -> None:
    """h2's invariant on the real machines: each event either moves the machine along
    its table (a refused peer changes nothing at all) or raises ``LocalProtocolError``
    with the machine FAILED, after which every event that needs the table fails too."""
    machine = make()
    for event, now in sorted(events, key=lambda e: e[1]):
        before, frozen = machine.state, machine_state(machine)
        try:
            effects = machine.handle(event, now)
        except LocalProtocolError:
            assert machine.state is CoordinatorState.FAILED
            for again in (JobStarted(), TimerFired(timer=RoundDeadline(round=0))):
                with pytest.raises(LocalProtocolError):
                    machine.handle(again, now)
                assert machine.state is CoordinatorState.FAILED
            return
        what = INPUT_OF.get(type(event))
        assert machine.state in (after(before, what) if what else {before})
        if effects and all(isinstance(e, Rejected) for e in effects):
            assert changed(frozen, machine_state(machine)) == []

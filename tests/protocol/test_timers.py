"""Typed timers: the event log's text round-trips exactly, and nothing else parses."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tessera.errors import LocalProtocolError
from tessera.protocol.timers import (
    AuditDue,
    CommitDue,
    ReportDue,
    RoundDeadline,
    Timer,
    parse_timer,
    timer_text,
)
from tessera.testing.strategies import timers


@given(timers)
def test_text_round_trip(timer: Timer) -> None:
    assert parse_timer(timer_text(timer)) == timer


def test_the_coordinators_texts_are_those_earlier_event_logs_hold() -> None:
    assert timer_text(RoundDeadline(round=3)) == "round-3-deadline"
    assert timer_text(CommitDue(round=3, level=1)) == "commit-L1@3"
    assert timer_text(CommitDue(round=3, level=1, final=True)) == "final-L1@3"
    assert timer_text(AuditDue(round=3)) == "audit@3"


@given(st.one_of(st.text(max_size=40), timers.map(timer_text).map(lambda t: t.replace("1", "01"))))
@example("round-03-deadline")
@example("audit@\u0663")  # an Arabic-Indic digit three
def test_a_text_is_read_only_if_it_is_exactly_what_timer_text_writes(text: str) -> None:
    """One timer, one text: a log line that is not written back identically is refused."""
    try:
        timer = parse_timer(text)
    except ValueError:
        return
    assert timer_text(timer) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "round--1-deadline",
        "round-3-deadline ",
        "commit-L@3",
        "audit@",
        "report@1:a:b:2",
        "report@1::2",
        "deadline",
        "round-3-deadline\n",
    ],
)
def test_anything_else_is_not_a_timer(text: str) -> None:
    with pytest.raises(ValueError, match="not a timer"):
        parse_timer(text)


@pytest.mark.parametrize(
    "make",
    [
        lambda: RoundDeadline(round=-1),
        lambda: CommitDue(round=1, level=-2),
        lambda: ReportDue(round=1, group="a:b", position=0),
        lambda: ReportDue(round=1, group="g", position=True),
    ],
)
def test_an_invalid_timer_cannot_exist(make: object) -> None:
    with pytest.raises(LocalProtocolError, match="timer"):
        make()  # type: ignore[operator]

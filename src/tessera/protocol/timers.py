"""The timers role machines set: typed values, compared and hashed, never parsed by a machine.

A machine sets a timer with ``StartTimer(timer=..., at=...)`` and gets it back
in ``TimerFired``; the host (``runtime.host``) keys its table by the value.
Only the coordinator's event log needs a timer as text, so ``timer_text`` and
``parse_timer`` are an exact, strict round trip. The coordinator's texts are
those of earlier versions, so an event log written before timers were typed
replays unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tessera.errors import LocalProtocolError


def _check(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise LocalProtocolError(f"timer {name} must be an integer >= 0, not {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class RoundDeadline:
    """The coordinator closes the round with whatever arrived."""

    round: int

    def __post_init__(self) -> None:
        _check(round=self.round)


@dataclass(frozen=True, kw_only=True, slots=True)
class CommitDue:
    """Secure rounds, per tree level: commit complete groups, replace silent positions once
    (``final``: commit whatever is there)."""

    round: int
    level: int
    final: bool = False

    def __post_init__(self) -> None:
        _check(round=self.round, level=self.level)


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditDue:
    """Secure rounds: the root positions asked for evidence have had their time."""

    round: int

    def __post_init__(self) -> None:
        _check(round=self.round)


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainingDue:
    """Secure deadline rounds: the training phase is over, every leaf seat reports now."""

    round: int

    def __post_init__(self) -> None:
        _check(round=self.round)


@dataclass(frozen=True, kw_only=True, slots=True)
class ReportDue:
    """An aggregator reports the inputs it holds for one seat, complete or not."""

    round: int
    group: str
    position: int

    def __post_init__(self) -> None:
        _check(round=self.round, position=self.position)
        if not _GROUP.fullmatch(self.group):
            raise LocalProtocolError(f"timer group must be a plain id, not {self.group!r}")


Timer = RoundDeadline | CommitDue | AuditDue | ReportDue | TrainingDue

_GROUP = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Numbers as ``str(int)`` writes them: ASCII digits, no leading zero (``\d`` would also
# take "03" and other scripts' digits), so every timer has exactly one text.
_N = "0|[1-9][0-9]*"
_TEXTS: tuple[tuple[re.Pattern[str], type[Timer]], ...] = (
    (re.compile(rf"round-(?P<round>{_N})-deadline"), RoundDeadline),
    (re.compile(rf"(?P<kind>commit|final)-L(?P<level>{_N})@(?P<round>{_N})"), CommitDue),
    (re.compile(rf"audit@(?P<round>{_N})"), AuditDue),
    (re.compile(rf"training@(?P<round>{_N})"), TrainingDue),
    (re.compile(rf"report@(?P<round>{_N}):(?P<group>[^:@]+):(?P<position>{_N})"), ReportDue),
)


def timer_text(timer: Timer) -> str:
    """The timer as one line of text, for an event log; ``parse_timer`` reads it back."""
    if isinstance(timer, RoundDeadline):
        return f"round-{timer.round}-deadline"
    if isinstance(timer, CommitDue):
        return f"{'final' if timer.final else 'commit'}-L{timer.level}@{timer.round}"
    if isinstance(timer, AuditDue):
        return f"audit@{timer.round}"
    if isinstance(timer, TrainingDue):
        return f"training@{timer.round}"
    return f"report@{timer.round}:{timer.group}:{timer.position}"


def parse_timer(text: str) -> Timer:
    """The timer ``timer_text`` wrote; anything else is a ``ValueError`` saying so."""
    for pattern, kind in _TEXTS:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        fields = match.groupdict()
        try:
            if kind is CommitDue:
                return CommitDue(
                    round=int(fields["round"]),
                    level=int(fields["level"]),
                    final=fields["kind"] == "final",
                )
            if kind is ReportDue:
                return ReportDue(
                    round=int(fields["round"]),
                    group=fields["group"],
                    position=int(fields["position"]),
                )
            return kind(round=int(fields["round"]))  # type: ignore[call-arg]
        except LocalProtocolError as exc:
            raise ValueError(f"not a timer: {text!r} ({exc})") from None
    raise ValueError(f"not a timer: {text!r}")

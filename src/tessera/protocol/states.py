"""Every role's transition table; the only place transitions live.

The tables are ignorant of what a transition does: the role machines look up
``(state, input) -> next state`` here before acting, and a miss is a bug on
our side (``LocalProtocolError``, machine moves to FAILED). A *peer's* message
that does not fit the state is not a table miss: the machine refuses it with
a ``Rejected`` effect and stays where it is.
"""

from __future__ import annotations

from enum import Enum


class CoordinatorState(Enum):
    IDLE = "idle"
    COLLECTING = "collecting"
    FINISHED = "finished"
    FAILED = "failed"


class CoordinatorInput(Enum):
    START = "start"
    MESSAGE = "message"
    DEADLINE = "deadline"
    ROUND_DONE = "round_done"
    JOB_DONE = "job_done"


class ContributorState(Enum):
    IDLE = "idle"
    TRAINING = "training"
    FAILED = "failed"


class ContributorInput(Enum):
    TRAIN_REQUEST = "train_request"
    # A buffered job's later request while training: keep training, send it there.
    CARRY_OVER = "carry_over"
    UPDATE_READY = "update_ready"
    TRAINING_FAILED = "training_failed"


_C = CoordinatorState
_CI = CoordinatorInput
COORDINATOR_TRANSITIONS: dict[tuple[CoordinatorState, CoordinatorInput], CoordinatorState] = {
    (_C.IDLE, _CI.START): _C.COLLECTING,
    (_C.COLLECTING, _CI.MESSAGE): _C.COLLECTING,
    (_C.COLLECTING, _CI.DEADLINE): _C.COLLECTING,
    (_C.COLLECTING, _CI.ROUND_DONE): _C.COLLECTING,
    (_C.COLLECTING, _CI.JOB_DONE): _C.FINISHED,
    # After the job, late messages and timers are refused or ignored, not fatal.
    (_C.FINISHED, _CI.MESSAGE): _C.FINISHED,
    (_C.FINISHED, _CI.DEADLINE): _C.FINISHED,
}

_K = ContributorState
_KI = ContributorInput
CONTRIBUTOR_TRANSITIONS: dict[tuple[ContributorState, ContributorInput], ContributorState] = {
    (_K.IDLE, _KI.TRAIN_REQUEST): _K.TRAINING,
    # A newer round's request supersedes an unfinished one (a slow device).
    (_K.TRAINING, _KI.TRAIN_REQUEST): _K.TRAINING,
    # Unless the job is buffered and the work is not too stale: it goes to the new round.
    (_K.TRAINING, _KI.CARRY_OVER): _K.TRAINING,
    (_K.TRAINING, _KI.UPDATE_READY): _K.IDLE,
    (_K.TRAINING, _KI.TRAINING_FAILED): _K.IDLE,
}


class RoundPhase(Enum):
    """A secure round, as the coordinator sees it."""

    AGGREGATING = "aggregating"  # shares, reports, commitments and sums flow up the tree
    AUDITING = "auditing"  # the root's sums are in; audits here and below still running
    CLOSED = "closed"
    FAILED = "failed"


class PhaseInput(Enum):
    ROOT_SUMS_IN = "root_sums_in"  # every root position's sum arrived (audits on)
    ROOT_SUMMED = "root_summed"  # the same, audits off: nothing left to check
    ROOT_LEFT = "root_left"  # the root group was committed empty
    EVIDENCE_DONE = "evidence_done"  # every audited root position answered
    AUDIT_TIMEOUT = "audit_timeout"  # some did not, in time
    TAMPERING = "tampering"  # an audit failed: the round cannot be applied
    DEADLINE = "deadline"  # the round's own deadline


_P = RoundPhase
_PI = PhaseInput
SECURE_ROUND_TRANSITIONS: dict[tuple[RoundPhase, PhaseInput], RoundPhase] = {
    (_P.AGGREGATING, _PI.ROOT_SUMS_IN): _P.AUDITING,
    (_P.AGGREGATING, _PI.ROOT_SUMMED): _P.CLOSED,
    (_P.AGGREGATING, _PI.ROOT_LEFT): _P.CLOSED,
    (_P.AGGREGATING, _PI.DEADLINE): _P.CLOSED,
    (_P.AGGREGATING, _PI.TAMPERING): _P.CLOSED,
    (_P.AUDITING, _PI.EVIDENCE_DONE): _P.CLOSED,
    (_P.AUDITING, _PI.AUDIT_TIMEOUT): _P.CLOSED,
    (_P.AUDITING, _PI.DEADLINE): _P.CLOSED,
    (_P.AUDITING, _PI.TAMPERING): _P.CLOSED,
}


class RoleState(Enum):
    """One aggregator seat (a group and position) in one round."""

    COLLECTING = "collecting"  # inputs arrive
    REPORTED = "reported"  # told the coordinator what it holds; takes no more inputs
    SUMMED = "summed"  # summed the committed set and sent it up
    LEFT = "left"  # the commitment dropped the group: sends nothing
    FAILED = "failed"


class RoleInput(Enum):
    INPUT = "input"  # a share, or a child's (audited) sum, is taken
    REPORT = "report"  # every input is in, or the report timer fired
    REPORT_NOW = "report_now"  # the coordinator closed the round's training phase
    SUM = "sum"  # a commitment naming the inputs to sum
    LEAVE = "leave"  # a commitment dropping the group


_R = RoleState
_RI = RoleInput
ROLE_TRANSITIONS: dict[tuple[RoleState, RoleInput], RoleState] = {
    (_R.COLLECTING, _RI.INPUT): _R.COLLECTING,
    (_R.COLLECTING, _RI.REPORT): _R.REPORTED,
    (_R.COLLECTING, _RI.REPORT_NOW): _R.REPORTED,
    # A commitment may come before this seat reported (the coordinator's deadline).
    (_R.COLLECTING, _RI.SUM): _R.SUMMED,
    (_R.COLLECTING, _RI.LEAVE): _R.LEFT,
    (_R.REPORTED, _RI.SUM): _R.SUMMED,
    (_R.REPORTED, _RI.LEAVE): _R.LEFT,
}

#: Every table, for docs and tests.
TABLES: dict[str, dict[tuple[Enum, Enum], Enum]] = {
    "coordinator": COORDINATOR_TRANSITIONS,  # type: ignore[dict-item]
    "contributor": CONTRIBUTOR_TRANSITIONS,  # type: ignore[dict-item]
    "secure round": SECURE_ROUND_TRANSITIONS,  # type: ignore[dict-item]
    "aggregator seat": ROLE_TRANSITIONS,  # type: ignore[dict-item]
}


def mermaid(table: dict[tuple[Enum, Enum], Enum]) -> str:
    """The table as a Mermaid state diagram (docs/state-machines.md is made from these)."""
    lines = ["stateDiagram-v2"]
    lines += [f"    {s.name} --> {n.name}: {i.value}" for (s, i), n in table.items()]
    return "\n".join(lines)

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
    (_K.TRAINING, _KI.UPDATE_READY): _K.IDLE,
    (_K.TRAINING, _KI.TRAINING_FAILED): _K.IDLE,
}

"""The lifecycle of one platform request (HJ 212-2017 §6.2, §9.1), as a transition table.

The platform sends a request (a get, a set, a fetch of history, a command); the DAS answers
9011 with QnRtn, then, if it accepted, the data asked for and a 9012 with ExeRtn. Until the
9011 arrives the request is sent again every OverTime seconds, ReCount times at most; after
it, nothing is sent again (§6.2.2): the request waits for its 9012, and each data packet of the
fetched CN restarts the clock (a long history transfer is not a dead one).

    state            | input          | next             | actions
    -----------------+----------------+------------------+-----------------------------------
    AWAITING_REPLY   | ACCEPTED       | AWAITING_RESULT  | ACKNOWLEDGE
    AWAITING_REPLY   | ACCEPTED_FINAL | DONE             | ACKNOWLEDGE
    AWAITING_REPLY   | REFUSED        | DONE             | ACKNOWLEDGE, FAIL_REJECTED
    AWAITING_REPLY   | RESULT         | DONE             | FINISH
    AWAITING_REPLY   | DATA           | AWAITING_REPLY   | -  (data before the 9011 is no answer)
    AWAITING_REPLY   | OVERTIME       | AWAITING_REPLY   | RESEND (one retry fewer, clock restarted)
    AWAITING_REPLY   | OVERTIME_LAST  | DONE             | FAIL_NO_REPLY
    AWAITING_RESULT  | ACCEPTED       | AWAITING_RESULT  | ACKNOWLEDGE
    AWAITING_RESULT  | ACCEPTED_FINAL | DONE             | ACKNOWLEDGE
    AWAITING_RESULT  | REFUSED        | DONE             | ACKNOWLEDGE, FAIL_REJECTED
    AWAITING_RESULT  | RESULT         | DONE             | FINISH
    AWAITING_RESULT  | DATA           | AWAITING_RESULT  | EXTEND (clock restarted; the data is an answer)
    AWAITING_RESULT  | OVERTIME       | DONE             | FAIL_NO_RESULT
    AWAITING_RESULT  | OVERTIME_LAST  | DONE             | FAIL_NO_RESULT

The input names what arrived together with what the request was promised: a 9011 with QnRtn=1
is ACCEPTED, or ACCEPTED_FINAL for a request that expects no 9012; an OverTime deadline is
OVERTIME while retries are left, OVERTIME_LAST when none are. `step` applies one row to a
`PendingRequest` and returns its actions; the session turns them into events. Pure: the time is
passed in.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Final, NamedTuple

from hj212gw.protocol.constants import QnRtn


class RequestState(Enum):
    AWAITING_REPLY = "awaiting_reply"  # sent; no 9011 yet: OverTime runs, ReCount retries left
    AWAITING_RESULT = "awaiting_result"  # 9011 QnRtn=1 came: waiting for data and the 9012
    DONE = "done"  # answered, refused or given up: forgotten


class RequestInput(Enum):
    ACCEPTED = "accepted"  # 9011 QnRtn=1; a 9012 is expected
    ACCEPTED_FINAL = "accepted_final"  # 9011 QnRtn=1 to a request that expects no 9012
    REFUSED = "refused"  # 9011 with any other QnRtn (or none)
    RESULT = "result"  # 9012 with ExeRtn
    DATA = "data"  # a data packet of the CN the request fetches
    OVERTIME = "overtime"  # the deadline passed with retries left
    OVERTIME_LAST = "overtime_last"  # the deadline passed with none left


class RequestAction(Enum):
    ACKNOWLEDGE = "acknowledge"  # report the 9011 (RequestAcknowledged)
    FINISH = "finish"  # report the 9012 (RequestFinished)
    FAIL_REJECTED = "rejected"  # RequestFailed; the values are its reasons
    FAIL_NO_REPLY = "no_reply"
    FAIL_NO_RESULT = "no_result"
    RESEND = "resend"  # send the request again (done by `step`: one retry fewer, clock restarted)
    EXTEND = "extend"  # data answered a fetch (done by `step`: clock restarted)


class Transition(NamedTuple):
    next_state: RequestState
    actions: tuple[RequestAction, ...]


_S = RequestState
_I = RequestInput
_A = RequestAction

_ANSWERS: Final = {
    _I.ACCEPTED_FINAL: Transition(_S.DONE, (_A.ACKNOWLEDGE,)),
    _I.REFUSED: Transition(_S.DONE, (_A.ACKNOWLEDGE, _A.FAIL_REJECTED)),
    _I.RESULT: Transition(_S.DONE, (_A.FINISH,)),
}

TRANSITIONS: Final[dict[tuple[RequestState, RequestInput], Transition]] = {
    **{(_S.AWAITING_REPLY, given): then for given, then in _ANSWERS.items()},
    (_S.AWAITING_REPLY, _I.ACCEPTED): Transition(_S.AWAITING_RESULT, (_A.ACKNOWLEDGE,)),
    (_S.AWAITING_REPLY, _I.DATA): Transition(_S.AWAITING_REPLY, ()),
    (_S.AWAITING_REPLY, _I.OVERTIME): Transition(_S.AWAITING_REPLY, (_A.RESEND,)),
    (_S.AWAITING_REPLY, _I.OVERTIME_LAST): Transition(_S.DONE, (_A.FAIL_NO_REPLY,)),
    **{(_S.AWAITING_RESULT, given): then for given, then in _ANSWERS.items()},
    (_S.AWAITING_RESULT, _I.ACCEPTED): Transition(_S.AWAITING_RESULT, (_A.ACKNOWLEDGE,)),
    (_S.AWAITING_RESULT, _I.DATA): Transition(_S.AWAITING_RESULT, (_A.EXTEND,)),
    (_S.AWAITING_RESULT, _I.OVERTIME): Transition(_S.DONE, (_A.FAIL_NO_RESULT,)),
    (_S.AWAITING_RESULT, _I.OVERTIME_LAST): Transition(_S.DONE, (_A.FAIL_NO_RESULT,)),
}


@dataclass(slots=True)
class PendingRequest:
    """A request the platform sent and the DAS has not finished answering."""

    qn: str
    cn: str
    data: bytes  # the frame, kept for RESEND
    over_time_s: float
    retries_left: int
    deadline: datetime
    expects_result: bool = True
    state: RequestState = RequestState.AWAITING_REPLY
    # For a request whose content is a time (1012 SystemTime): the frame as of the retry's time,
    # same QN. A retry of a time set must not set the clock to when the first try went out.
    refresh: Callable[[datetime], bytes] | None = None


def reply_input(request: PendingRequest, qn_rtn: int | None) -> RequestInput:
    """The input a 9011 with `qn_rtn` is for `request`."""
    if qn_rtn != QnRtn.READY:
        return RequestInput.REFUSED
    return RequestInput.ACCEPTED if request.expects_result else RequestInput.ACCEPTED_FINAL


def overtime_input(request: PendingRequest) -> RequestInput:
    """The input its passed deadline is for `request`."""
    return RequestInput.OVERTIME if request.retries_left > 0 else RequestInput.OVERTIME_LAST


def step(request: PendingRequest, given: RequestInput, now: datetime) -> tuple[RequestAction, ...]:
    """Apply the table's row for (`request.state`, `given`); the actions left for the caller.

    RESEND and EXTEND restart the OverTime clock here (RESEND also spends a retry, and rebuilds
    `request.data` through `request.refresh` when it has one); the caller still writes the frame
    again for RESEND and reports the rest.
    """
    transition = TRANSITIONS[request.state, given]
    request.state = transition.next_state
    for action in transition.actions:
        if action is RequestAction.RESEND:
            request.retries_left -= 1
            if request.refresh is not None:
                request.data = request.refresh(now)
        if action is RequestAction.RESEND or action is RequestAction.EXTEND:
            request.deadline = now + timedelta(seconds=request.over_time_s)
    return transition.actions

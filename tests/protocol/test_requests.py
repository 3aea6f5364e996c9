"""requests.py: the request lifecycle table, alone and through the session (9011 -> data -> 9012)."""

import re
from datetime import UTC, datetime, timedelta

import pytest

from hj212gw.protocol import requests
from hj212gw.protocol.builders import Target, build_history_request, build_realtime, build_set_rtd_interval
from hj212gw.protocol.constants import Cn, ProtocolVersion, QnRtn
from hj212gw.protocol.framing import encode_frame
from hj212gw.protocol.requests import (
    TRANSITIONS,
    PendingRequest,
    RequestAction,
    RequestInput,
    RequestState,
    overtime_input,
    reply_input,
    step,
)
from hj212gw.protocol.session import (
    DasSession,
    PacketReceived,
    RequestAcknowledged,
    RequestFailed,
    RequestFinished,
    Send,
    SessionConfig,
)
from tests.protocol.conftest import FIXTURES, MN, T0, frame, std

LIVE = [s for s in RequestState if s is not RequestState.DONE]


def request(re_count: int = 2, *, expects_result: bool = True) -> PendingRequest:
    return PendingRequest("20240315100000001", "2061", b"req", 10.0, re_count, T0, expects_result=expects_result)


# ---- the table ----------------------------------------------------------------------------------


def test_every_live_state_has_a_row_for_every_input_and_done_has_none() -> None:
    assert set(TRANSITIONS) == {(state, given) for state in LIVE for given in RequestInput}


def test_the_table_in_the_docstring_is_the_table_in_the_code() -> None:
    drawn = {}
    for line in (requests.__doc__ or "").splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) == 4 and cells[0] in RequestState.__members__:
            actions = re.findall(r"\b[A-Z_]{4,}\b", cells[3])
            drawn[RequestState[cells[0]], RequestInput[cells[1]]] = (RequestState[cells[2]], actions)
    coded = {key: (t.next_state, [a.name for a in t.actions]) for key, t in TRANSITIONS.items()}
    assert drawn == coded


@pytest.mark.parametrize("state", LIVE)
def test_no_request_is_sent_again_once_acknowledged(state: RequestState) -> None:
    """§6.2.2: RESEND is only for a request still waiting for its 9011."""
    resends = [given for given in RequestInput if RequestAction.RESEND in TRANSITIONS[state, given].actions]
    assert resends == ([RequestInput.OVERTIME] if state is RequestState.AWAITING_REPLY else [])


def test_inputs_are_named_from_the_reply_and_the_request() -> None:
    assert reply_input(request(), QnRtn.READY) is RequestInput.ACCEPTED
    assert reply_input(request(expects_result=False), 1) is RequestInput.ACCEPTED_FINAL
    assert reply_input(request(), QnRtn.PW_ERROR) is RequestInput.REFUSED
    assert reply_input(request(), None) is RequestInput.REFUSED
    assert overtime_input(request(re_count=1)) is RequestInput.OVERTIME
    assert overtime_input(request(re_count=0)) is RequestInput.OVERTIME_LAST


def test_resend_spends_a_retry_and_restarts_the_clock() -> None:
    pending = request(re_count=2)
    later = T0 + timedelta(seconds=10)
    assert step(pending, RequestInput.OVERTIME, later) == (RequestAction.RESEND,)
    assert (pending.state, pending.retries_left, pending.deadline) == (
        RequestState.AWAITING_REPLY,
        1,
        later + timedelta(seconds=10),
    )


def test_data_restarts_the_clock_only_after_the_9011() -> None:
    pending = request()
    assert step(pending, RequestInput.DATA, T0 + timedelta(seconds=5)) == ()
    assert pending.deadline == T0
    step(pending, RequestInput.ACCEPTED, T0)
    assert step(pending, RequestInput.DATA, T0 + timedelta(seconds=5)) == (RequestAction.EXTEND,)
    assert (pending.state, pending.deadline) == (RequestState.AWAITING_RESULT, T0 + timedelta(seconds=15))


def test_a_walk_through_the_table_retries_re_count_times_then_gives_up() -> None:
    pending = request(re_count=2)
    seen = []
    while pending.state is not RequestState.DONE:
        seen.extend(step(pending, overtime_input(pending), T0))
    assert seen == [RequestAction.RESEND, RequestAction.RESEND, RequestAction.FAIL_NO_REPLY]
    with pytest.raises(KeyError):  # a finished request takes no more input
        step(pending, RequestInput.RESULT, T0)


# ---- through the session: correlation by QN, retries, timers -----------------------------------


def bound_session() -> DasSession:
    session = DasSession()
    session.receive_data(std("2061-e2-hour-data"), now=T0)  # ST 31, PW 123456, 2017
    return session


def history_fetch(session: DasSession) -> str:
    target = session.target()
    assert target == Target(MN, "123456", "31")
    qn = "20240316083000123"
    data = build_history_request(target, Cn.HOUR_DATA, qn, "20240315000000", "20240315010000")
    assert data == std("2061-e3-history-request")
    [send] = session.send_request(data, qn=qn, cn=Cn.HOUR_DATA, now=T0, over_time_s=10, re_count=2)
    assert send == Send(data, "2061")
    return qn


def test_history_fetch_is_correlated_and_its_data_is_backfill() -> None:
    session = bound_session()
    qn = history_fetch(session)
    events = session.receive_data(std("9011-e3-request-reply"), now=T0 + timedelta(seconds=1))
    assert RequestAcknowledged(qn, "2061", 1) in events
    for name in ("2061-e3-history-data-1", "2061-e3-history-data-2"):
        [received] = [e for e in session.receive_data(std(name), now=T0) if isinstance(e, PacketReceived)]
        assert received.backfill and received.ack
    events = session.receive_data(std("9012-e3-execution-result"), now=T0 + timedelta(seconds=2))
    assert RequestFinished(qn, "2061", 1) in events
    assert session.pending_requests() == []
    [received] = [e for e in session.receive_data(std("2061-e2-hour-data"), now=T0) if isinstance(e, PacketReceived)]
    assert not received.backfill


def test_unacknowledged_request_is_resent_re_count_times_then_fails() -> None:
    session = bound_session()
    qn = history_fetch(session)
    assert session.poll(T0 + timedelta(seconds=9)) == []
    first = session.poll(T0 + timedelta(seconds=10))
    assert first == [Send(std("2061-e3-history-request"), "2061")]
    assert session.poll(T0 + timedelta(seconds=20)) == first
    assert session.poll(T0 + timedelta(seconds=30)) == [RequestFailed(qn, "2061", "no_reply")]
    assert session.pending_requests() == []


def test_acknowledged_request_without_result_fails_and_is_not_resent() -> None:
    session = bound_session()
    qn = history_fetch(session)
    session.receive_data(std("9011-e3-request-reply"), now=T0 + timedelta(seconds=1))
    # Data keeps the fetch alive: the execution timeout counts from the last part.
    session.receive_data(std("2061-e3-history-data-1"), now=T0 + timedelta(seconds=8))
    assert session.poll(T0 + timedelta(seconds=17)) == []
    assert session.poll(T0 + timedelta(seconds=18)) == [RequestFailed(qn, "2061", "no_result")]


def test_rejected_request() -> None:
    session = bound_session()
    qn = history_fetch(session)
    reply = std("9011-e3-request-reply")
    reply = encode_frame(reply[6:-6].replace(b"QnRtn=1", b"QnRtn=3"))
    events = session.receive_data(reply, now=T0)
    assert RequestAcknowledged(qn, "2061", 3) in events and RequestFailed(qn, "2061", "rejected") in events


def test_request_without_result_finishes_on_its_9011() -> None:
    session = bound_session()
    target = session.target()
    assert target is not None
    qn = "20240315080500003"
    session.send_request(build_set_rtd_interval(target, qn, 30), qn=qn, cn="1062", now=T0, expects_result=False)
    reply = frame(f"QN={qn};ST=91;CN=9011;PW=123456;MN={MN};Flag=4;CP=&&QnRtn=1&&")
    session.receive_data(reply, now=T0)
    assert session.pending_requests() == []


def test_2005_reply_with_qn_in_cp_is_correlated() -> None:
    session = DasSession()
    session.receive_data(frame("ST=32;CN=2011;PW=123456;MN=LD130133000015;CP=&&DataTime=20160824003817&&"), now=T0)
    qn = "20160801085857223"
    session.send_request(b"req", qn=qn, cn="2061", now=T0)
    reply = frame(f"ST=91;CN=9011;PW=123456;MN=LD130133000015;Flag=0;CP=&&QN={qn};QnRtn=1&&")
    assert RequestAcknowledged(qn, "2061", 1) in session.receive_data(reply, now=T0)


def test_pending_requests_are_capped_and_the_refused_one_is_never_sent() -> None:
    session = DasSession(SessionConfig(max_pending_requests=2))
    sent = [session.send_request(b"r%d" % i, qn=f"2024031510000000{i}", cn="1012", now=T0) for i in range(3)]
    assert sent[:2] == [[Send(b"r0", "1012")], [Send(b"r1", "1012")]]
    assert sent[2] == [RequestFailed("20240315100000002", "1012", "too_many_pending")]
    assert len(session.pending_requests()) == 2
    # Re-registering a pending QN is no new request.
    assert session.send_request(b"r1", qn="20240315100000001", cn="1012", now=T0) == [Send(b"r1", "1012")]


# ---- in the version the DAS speaks (HJ 212-2017 §5 Flag, §12 E4, §14 for 2005) ---------------


E4_1012 = datetime(2024, 3, 15, 4, 0, 1, tzinfo=UTC)


def time_calibration(session: DasSession, request: bytes) -> list[Send]:
    """What the session sends for a 1013: its 9013 and the 1012 that follows."""
    return [e for e in session.receive_data(request, now=T0) if isinstance(e, Send)]


def test_a_time_set_retry_carries_the_time_of_the_retry_with_the_same_qn() -> None:
    session = DasSession()
    [_, first] = time_calibration(session, std("1013-e4-time-calibration-request"))
    assert b"SystemTime=20240315100000" in first.data
    [retry] = session.poll(T0 + timedelta(seconds=10))
    assert isinstance(retry, Send) and retry.cn == "1012"
    # T0 + 10 s is 10:00:10 in Asia/Shanghai; the QN stays the first try's, so its 9011 correlates.
    assert b"QN=20240315100000000;" in retry.data and b"SystemTime=20240315100010" in retry.data
    [later] = session.poll(T0 + timedelta(seconds=20))
    assert isinstance(later, Send) and b"SystemTime=20240315100020" in later.data
    reply = frame(f"QN=20240315100000000;ST=91;CN=9011;PW=123456;MN={MN};Flag=4;CP=&&QnRtn=1&&")
    assert RequestAcknowledged("20240315100000000", "1012", 1) in session.receive_data(reply, now=T0)


def test_a_2005_1013_with_qn_in_cp_gets_a_2005_9013_and_a_2005_1012() -> None:
    session = DasSession()
    request = (FIXTURES / "packets/good/xiaoyao9184-hj-t212-parser/1013-l201.hj212").read_bytes()
    [reply, set_time] = time_calibration(session, request)
    # §14: a 2005 reply carries the answered QN inside CP, with Flag=0.
    assert reply.data == frame("ST=91;CN=9013;PW=123456;MN=LD130133000018;Flag=0;CP=&&QN=20160824115654000&&")
    # A 2005 request: QN in the header and Flag=1 (version bits 000000, A=1), not 2017's Flag=5.
    assert set_time.data == frame(
        "QN=20240315100000000;ST=32;CN=1012;PW=123456;MN=LD130133000018;Flag=1;CP=&&SystemTime=20240315100000&&"
    )
    assert session.target() == Target("LD130133000018", "123456", "32", ProtocolVersion.HJT212_2005)


def test_a_2025_1013_gets_flag_8_and_a_1012_with_flag_9() -> None:
    session = DasSession()
    request = std("1013-e4-time-calibration-request").replace(b"Flag=5", b"Flag=9")
    request = encode_frame(request[6:-6])
    [reply, set_time] = time_calibration(session, request)
    assert reply.data == encode_frame(std("9013-e4-notification-reply")[6:-6].replace(b"Flag=4", b"Flag=8"))
    assert b";CN=1012;PW=123456;MN=" + MN.encode() + b";Flag=9;CP=&&SystemTime=20240315100000&&" in set_time.data


def test_a_2017_1013_is_answered_as_the_standard_prints_it() -> None:
    session = DasSession()
    # E4's 1012 went out at 12:00:01 device time (04:00:01 UTC), one second after the 1013.
    sends = [
        e for e in session.receive_data(std("1013-e4-time-calibration-request"), now=E4_1012) if isinstance(e, Send)
    ]
    assert [s.data for s in sends] == [std("9013-e4-notification-reply"), std("1012-e4-set-time")]


def test_a_notification_the_platform_sent_is_done_on_its_9013() -> None:
    session = bound_session()
    target = session.target()
    assert target is not None
    qn = "20240315080500004"
    session.send_request(build_realtime(target, qn, start=False), qn=qn, cn="2012", now=T0, expects_result=False)
    events = session.receive_data(std("9013-extra-stop-realtime-reply"), now=T0 + timedelta(seconds=1))
    assert RequestAcknowledged(qn, "2012", 1) in events
    assert session.pending_requests() == [] and session.poll(T0 + timedelta(seconds=60)) == []


def test_a_9013_does_not_end_a_request_that_awaits_its_9012() -> None:
    session = bound_session()
    qn = history_fetch(session)
    session.receive_data(frame(f"QN={qn};ST=91;CN=9013;PW=123456;MN={MN};Flag=4;CP=&&&&"), now=T0)
    assert session.pending_requests() == [(qn, "2061")]

"""builders.py: every reply and request the spec prints (§12 E1-E6, extra vectors) is built byte-exact."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hj212gw.protocol.builders import (
    Target,
    answered_qn,
    build_control,
    build_data_ack,
    build_execution_result,
    build_get_min_interval,
    build_get_rtd_interval,
    build_get_time,
    build_history_request,
    build_new_key,
    build_notification_reply,
    build_realtime,
    build_request,
    build_request_reply,
    build_running_state,
    build_set_min_interval,
    build_set_password,
    build_set_rtd_interval,
    build_set_time,
    build_set_timeouts,
)
from hj212gw.protocol.constants import Cn, ExeRtn, ProtocolVersion, QnRtn
from hj212gw.protocol.decoder import decode_frame
from hj212gw.protocol.framing import parse_frame
from hj212gw.protocol.models import Packet
from hj212gw.protocol.segment import parse_segment
from tests.protocol.conftest import FIRST

STD = FIRST.parent
MN = "010000A8900016F000169DC0"
WATER = Target(MN, "123456", "32")
AIR = Target(MN, "123456", "31")


def wire(name: str) -> bytes:
    return (STD / f"{name}.hj212").read_bytes()


def packet(name: str) -> Packet:
    return parse_segment(wire(name)[6:-6])


@pytest.mark.parametrize(
    ("upload", "reply"),
    [
        ("2051-e1-minute-data", "9014-e1-data-reply"),
        ("2061-e2-hour-data", "9014-e2-data-reply"),
        ("2061-e3-history-data-1", "9014-e3-data-reply-1"),
        ("2061-e3-history-data-2", "9014-e3-data-reply-2"),
        ("2081-e5-restart-time", "9014-e5-data-reply-2081"),
        ("3020-e5-site-info", "9014-e5-data-reply-3020"),
        ("2051-e6-split-part-1", "9014-e6-data-reply-1"),
        ("2051-e6-split-part-2", "9014-e6-data-reply-2"),
    ],
)
def test_data_ack_is_the_printed_9014(upload: str, reply: str) -> None:
    assert build_data_ack(packet(upload)) == wire(reply)


def test_notification_replies_are_the_printed_9013() -> None:
    assert build_notification_reply(packet("1013-e4-time-calibration-request")) == wire("9013-e4-notification-reply")
    assert build_notification_reply(packet("2012-extra-stop-realtime")) == wire("9013-extra-stop-realtime-reply")


def test_das_side_replies_of_e3_and_e4() -> None:
    request = packet("2061-e3-history-request")
    assert build_request_reply(request, QnRtn.READY) == wire("9011-e3-request-reply")
    assert build_execution_result(request, ExeRtn.SUCCESS) == wire("9012-e3-execution-result")
    assert build_execution_result(request, ExeRtn.NO_DATA) == wire("9012-e3-execution-result-no-data")
    set_time = packet("1012-e4-set-time")
    assert build_request_reply(set_time, QnRtn.READY) == wire("9011-e4-request-reply")
    assert build_execution_result(set_time, ExeRtn.SUCCESS) == wire("9012-e4-execution-result")


def test_platform_requests_are_the_printed_frames() -> None:
    assert build_history_request(AIR, Cn.HOUR_DATA, "20240316083000123", "20240315000000", "20240315010000") == wire(
        "2061-e3-history-request"
    )
    assert build_set_time(WATER, "20240315120001000", "20240315120001") == wire("1012-e4-set-time")
    assert build_set_timeouts(WATER, "20240315080500001", 10, 3) == wire("1000-extra-set-timeouts")
    assert build_set_min_interval(WATER, "20240315080500002", 10) == wire("1064-extra-set-min-interval")
    assert build_set_rtd_interval(WATER, "20240315080500003", 30) == wire("1062-extra-set-rtd-interval")
    assert build_realtime(WATER, "20240315080500004", start=False) == wire("2012-extra-stop-realtime")
    standard = Target(MN, "100000", "32")
    assert build_set_rtd_interval(standard, "20160801085857223", 30) == FIRST.read_bytes()


def test_replies_follow_the_das_version() -> None:
    base = b"QN=20240601085857223;ST=31;CN=9015;PW=123456;MN=" + MN.encode() + b";Flag=%d;CP=&&&&"
    reply_2025 = parse_segment(build_notification_reply(parse_segment(base % 9))[6:-6])
    assert reply_2025.flag == 8 and reply_2025.st == "91" and reply_2025.qn == "20240601085857223"
    assert b"Flag=8;CP=&&&&" in build_data_ack(parse_segment(base % 9))
    reply_2005 = build_request_reply(
        parse_segment(b"QN=20160801085857223;ST=32;CN=2011;PW=1;MN=LD1;Flag=1;CP=&&&&"), QnRtn.READY
    )
    assert b"Flag=0;CP=&&QN=20160801085857223;QnRtn=1&&" in reply_2005
    assert b";QN=" not in reply_2005.split(b"CP=")[0]


def test_2025_requests_use_flag_9() -> None:
    target = Target(MN, "123456", "31", ProtocolVersion.HJ212_2025)
    frame = build_history_request(target, Cn.RAW_DATA, "20240601085857223", "20240601000000", "20240601010000")
    assert b"Flag=9;" in frame
    assert b"Flag=8;" in build_request(target, Cn.SET_MN, "20240601085857223", ack=False)


ALL_REQUESTS = [
    lambda t, q: build_get_time(t, q, "w01018"),
    lambda t, q: build_get_time(t, q),
    build_get_rtd_interval,
    build_get_min_interval,
    lambda t, q: build_set_password(t, q, "654321"),
    lambda t, q: build_running_state(t, q, start=True),
    lambda t, q: build_realtime(t, q, start=True),
    lambda t, q: build_control(t, Cn.CALIBRATE, q, "w01018", CalibrationType="0"),
    lambda t, q: build_new_key(t, q, "20240601085857223", "0000000000000000"),
    lambda t, q: build_set_time(t, q, "20240101000000", "w01018"),
]


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(ALL_REQUESTS),
    st.sampled_from(list(ProtocolVersion)),
    st.from_regex(r"\A20[0-9]{15}\Z"),
    st.sampled_from(["31", "32", "44"]),
)
def test_every_built_request_decodes_to_what_was_asked(build, version, qn, st_code) -> None:  # type: ignore[no-untyped-def]
    target = Target(MN, "123456", st_code, version)
    frame = build(target, qn)
    decoded = parse_frame(frame)
    assert decoded.raw == frame and decoded.tolerances == ()
    result = decode_frame(decoded)
    assert (result.qn, result.st, result.mn, result.pw) == (qn, st_code, MN, "123456")
    assert result.version is version and result.ack_requested


def test_a_2005_request_reply_is_the_captured_2005_9011() -> None:
    """§14: a 2005 DAS's 9011 (xiaoyao9184 capture, 2016) is what the builder makes for 2005."""
    request = parse_segment(b"QN=20160824211301007;ST=32;CN=1012;PW=123456;MN=LD130131000382;Flag=1;CP=&&&&")
    captured = (STD.parent / "xiaoyao9184-hj-t212-parser/9011-l190.hj212").read_bytes()
    assert build_request_reply(request, QnRtn.READY) == captured


def test_a_2005_notification_echoes_the_qn_it_carried_in_cp() -> None:
    request = parse_segment(b"ST=91;CN=1013;PW=123456;MN=LD130133000018;Flag=1;CP=&&QN=20160824115654000&&")
    assert answered_qn(request) == "20160824115654000"
    assert b"Flag=0;CP=&&QN=20160824115654000&&" in build_notification_reply(request)

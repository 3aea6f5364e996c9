"""How the simulated DAS answers the platform: acks by QN, history fetches, settings, notifications."""

from hj212gw.protocol.builders import (
    Target,
    build_data_ack,
    build_history_request,
    build_realtime,
    build_set_min_interval,
    build_set_time,
)
from hj212gw.simulator.testing import SteppedDevice


def _target(das: SteppedDevice) -> Target:
    return Target(das.spec.mn, "123456", das.spec.st, das.spec.version)


def test_9014_with_matching_qn_delivers_and_stops_resends() -> None:
    das = SteppedDevice(min_interval_min=1)
    das.ack(das.connect())
    [minute] = das.advance(60)
    assert das.wait_real(10) == [minute]  # OverTime: the same packet, same QN
    das.feed(build_data_ack(minute))
    assert das.wait_real(60) == []
    assert das.counters.acked == 2 and das.counters.resent == 1


def test_unacked_data_is_stored_and_reuploaded_with_rf_on_2025_after_reconnect() -> None:
    das = SteppedDevice(version="2025", min_interval_min=1, heartbeat_s=1e9)
    das.ack(das.connect())
    das.disconnect()
    assert das.advance(300) == []
    reuploads = das.connect()
    assert [p.data.data_time for p in reuploads] == [f"2024031500{m:02d}00" for m in range(5)]
    assert all(p.rf and p.flag == 9 for p in reuploads)


def test_2017_reupload_has_no_rf_field() -> None:
    das = SteppedDevice(version="2017", min_interval_min=1)
    das.ack(das.connect())
    das.disconnect()
    das.advance(120)
    assert [p.header("RF") for p in das.connect()] == [None, None]


def test_history_request_is_answered_with_9011_data_and_9012() -> None:
    das = SteppedDevice(st="31", ack=True)
    das.ack(das.connect())
    das.ack(das.advance(4 * 3600))
    request = build_history_request(_target(das), "2061", "20240315050000000", "20240315010000", "20240315020000")
    out = das.feed(request)
    assert [(p.cn, p.cp) for p in out] == [("9011", "QnRtn=1"), ("2061", out[1].cp)]
    assert out[0].qn == "20240315050000000" and out[1].qn != out[0].qn and out[1].flag == 5
    assert out[1].data.data_time == "20240315010000"
    second = das.ack(out[1:])  # C.48: the next part waits for the 9014 of this one
    assert [p.cn for p in second] == ["2061"] and second[0].data.data_time == "20240315020000"
    [done] = das.ack(second)
    assert (done.cn, done.cp, done.qn) == ("9012", "ExeRtn=1", "20240315050000000")
    assert das.counters.history_requests == 1


def test_history_request_for_an_empty_range_ends_with_exertn_100() -> None:
    das = SteppedDevice()
    das.ack(das.connect())
    out = das.feed(build_history_request(_target(das), "2051", "20240315050000000", "20230101000000", "20230101010000"))
    assert [(p.cn, p.cp) for p in out] == [("9011", "QnRtn=1"), ("9012", "ExeRtn=100")]


def test_1012_sets_the_device_clock() -> None:
    das = SteppedDevice()
    das.ack(das.connect())
    out = das.feed(build_set_time(_target(das), "20240315000000123", "20240315120000"))
    assert [p.cn for p in out] == ["9011", "9012"]
    assert das.local_now().strftime("%H%M%S") == "120000"


def test_1064_changes_the_minute_interval() -> None:
    das = SteppedDevice(min_interval_min=10, ack=False)
    das.connect()
    out = das.feed(build_set_min_interval(_target(das), "20240315000000123", 5))
    assert [(p.cn, p.cp) for p in out] == [("9011", "QnRtn=1"), ("9012", "ExeRtn=1")]
    minutes = [p.data.data_time for p in das.advance(1200) if p.cn == "2051"]
    assert minutes[:2] == ["20240315000000", "20240315000500"]
    bad = das.feed(build_set_min_interval(_target(das), "20240315000000124", 7))
    assert bad[1].cp == "ExeRtn=3"


def test_2012_stop_realtime_is_answered_with_9013() -> None:
    das = SteppedDevice(uploads=frozenset({"2011"}), ack=False)
    das.connect()
    [reply] = das.feed(build_realtime(_target(das), "20240315000000123", start=False))
    assert (reply.cn, reply.flag, reply.qn) == ("9013", 4, "20240315000000123")
    assert [p for p in das.advance(300) if p.cn == "2011"] == []


def test_wrong_password_is_rejected_with_qnrtn_3() -> None:
    das = SteppedDevice()
    das.connect()
    wrong = Target(das.spec.mn, "000000", das.spec.st)
    [reply] = das.feed(build_set_time(wrong, "20240315000000123", "20240315120000"))
    assert (reply.cn, reply.cp) == ("9011", "QnRtn=3")

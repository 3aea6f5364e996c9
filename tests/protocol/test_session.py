"""session.py: chunking never matters; MN binding; replies; backfill; splits (requests: test_requests)."""

import itertools
import random
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hj212gw.protocol.framing import Garbage
from hj212gw.protocol.session import (
    DasSession,
    Event,
    FrameRejected,
    MnBound,
    MnChanged,
    PacketReceived,
    Send,
    SessionConfig,
    SplitPartsMissing,
)
from hj212gw.protocol.split import assemble_parts
from tests.protocol.conftest import BAD, FIRST, GOOD, MN, T0, expected, fixture_id, frame, std

STANDARD = FIRST.read_bytes()


def summary(events: list[Event]) -> list[tuple[str, str]]:
    """The PacketReceived / FrameRejected sequence, comparable across chunkings."""
    out = []
    for event in events:
        if isinstance(event, PacketReceived):
            out.append(("packet", event.frame.raw.decode("utf-8", "replace")))
        elif isinstance(event, FrameRejected):
            out.append(("rejected", event.error.reason))
    return out


def feed(chunks: list[bytes]) -> list[Event]:
    session = DasSession()
    events: list[Event] = []
    for chunk in chunks:
        events += session.receive_data(chunk, now=T0)
    return events + session.end_of_stream(T0)


def chunkings(wire: bytes, seed: int) -> list[list[bytes]]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(wire)), min(8, len(wire) - 1)))
    random_chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    return [[wire], [bytes([b]) for b in wire], random_chunks]


@pytest.mark.parametrize("path", GOOD + BAD, ids=fixture_id)
def test_chunking_and_junk_never_change_the_events(path: Path) -> None:
    wire = path.read_bytes()
    whole = summary(feed([wire]))
    assert len(whole) == 1
    if path in BAD:
        assert whole[0] == ("rejected", expected(path)["reason"])
    else:
        assert whole[0][0] == "packet"
    for chunks in chunkings(wire, seed=len(wire)):
        assert summary(feed(chunks)) == whole
    # Whitespace between frames is no event; other junk is one Garbage each side.
    assert summary(feed([b"\r\n \r\n", wire])) == whole
    junked = summary(feed([b"junk\x01", wire, b"" if expected(path)["needs_end_of_stream"] else b"@@tail junk"]))
    tail = [] if expected(path)["needs_end_of_stream"] else [("rejected", "garbage")]
    assert junked == [("rejected", "garbage"), *whole, *tail]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_become_events_never_exceptions(junk: bytes) -> None:
    session = DasSession()
    events = session.receive_data(junk, now=T0) + session.end_of_stream(T0) + session.poll(T0 + timedelta(hours=1))
    assert all(isinstance(e, (PacketReceived, FrameRejected, Send, MnBound, MnChanged)) for e in events)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(GOOD[:40] + BAD[:10]), max_size=6), st.binary(max_size=200))
def test_a_stream_of_fixtures_and_junk_never_raises(paths: list[Path], junk: bytes) -> None:
    session = DasSession()
    for path in paths:
        session.receive_data(path.read_bytes(), now=T0)
        session.receive_data(junk, now=T0)
    session.end_of_stream(T0)


def test_garbage_only_for_non_whitespace_junk() -> None:
    events = DasSession().receive_data(b"  \r\n\t" + STANDARD + b"xyz" + STANDARD, now=T0)
    rejected = [e for e in events if isinstance(e, FrameRejected)]
    assert len(rejected) == 1 and isinstance(rejected[0].error, Garbage) and rejected[0].raw_head == b"xyz"


# ---- MN binding --------------------------------------------------------------------------------


def test_mn_is_bound_on_the_first_packet_and_changes_are_reported() -> None:
    session = DasSession()
    events = session.receive_data(STANDARD, now=T0)
    assert MnBound(MN) in events and session.mn == MN
    other = frame("QN=20240315101000001;ST=32;CN=2011;PW=123456;MN=OTHER;Flag=4;CP=&&DataTime=20240315100000&&")
    events = session.receive_data(other, now=T0)
    assert MnChanged(MN, "OTHER") in events and session.mn == "OTHER"


def test_mn_change_can_be_rejected() -> None:
    session = DasSession(SessionConfig(mn_change="reject"))
    session.receive_data(STANDARD, now=T0)
    other = frame("QN=20240315101000001;ST=32;CN=2011;PW=123456;MN=OTHER;Flag=4;CP=&&&&")
    [event] = session.receive_data(other, now=T0)
    assert isinstance(event, FrameRejected) and event.error.reason == "mn_mismatch" and session.mn == MN


def test_empty_mn_of_a_2025_1001_does_not_bind() -> None:
    session = DasSession()
    events = session.receive_data(
        frame("QN=20240601085857223;ST=31;CN=1001;PW=123456;MN=;Flag=9;CP=&&i23005-Info=6970000000001ABCDEFG1234&&"),
        now=T0,
    )
    assert session.mn is None and not any(isinstance(e, MnBound) for e in events)
    [send] = [e for e in events if isinstance(e, Send)]
    assert send.cn == "9013" and b"MN=;Flag=8;CP=&&&&" in send.data


# ---- replies the session sends itself ---------------------------------------------------------


HEARTBEAT_2025 = "QN=20240601085857223;ST=31;CN=9015;PW=123456;MN=" + MN + ";Flag=9;CP=&&&&"


def test_heartbeat_9015_gets_9013_with_flag_8_for_2025() -> None:
    events = DasSession().receive_data(frame(HEARTBEAT_2025), now=T0)
    [send] = [e for e in events if isinstance(e, Send)]
    assert send.cn == "9013"
    assert send.data == frame(HEARTBEAT_2025.replace("ST=31;CN=9015", "ST=91;CN=9013").replace("Flag=9", "Flag=8"))
    assert [e.ack for e in events if isinstance(e, PacketReceived)] == [False]


@pytest.mark.parametrize(("choice", "cns"), [("9014", ["9014"]), ("none", [])])
def test_heartbeat_reply_is_configurable(choice: str, cns: list[str]) -> None:
    session = DasSession(SessionConfig(heartbeat_reply=choice))  # type: ignore[arg-type]
    assert [e.cn for e in session.receive_data(frame(HEARTBEAT_2025), now=T0) if isinstance(e, Send)] == cns
    per_mn = DasSession(SessionConfig(heartbeat_reply_per_mn={MN: choice}))
    assert [e.cn for e in per_mn.receive_data(frame(HEARTBEAT_2025), now=T0) if isinstance(e, Send)] == cns


def test_heartbeat_without_ack_bit_gets_no_reply() -> None:
    events = DasSession().receive_data(frame(HEARTBEAT_2025.replace("Flag=9", "Flag=8")), now=T0)
    assert not any(isinstance(e, Send) for e in events)


def test_1013_gets_9013_then_1012_with_platform_time_in_device_tz() -> None:
    session = DasSession()
    events = session.receive_data(std("1013-e4-time-calibration-request"), now=T0)
    sends = [e for e in events if isinstance(e, Send)]
    assert [s.cn for s in sends] == ["9013", "1012"]
    assert sends[0].data == std("9013-e4-notification-reply")
    # T0 is 02:00 UTC, 10:00 in Asia/Shanghai.
    assert b"CN=1012;PW=123456;MN=" + MN.encode() + b";Flag=5;CP=&&SystemTime=20240315100000&&" in sends[1].data
    assert b"QN=20240315100000000;ST=32;" in sends[1].data
    assert session.pending_requests() == [("20240315100000000", "1012")]


def test_1013_without_time_setting() -> None:
    session = DasSession(SessionConfig(send_time_after_1013=False))
    events = session.receive_data(std("1013-e4-time-calibration-request"), now=T0)
    assert [e.cn for e in events if isinstance(e, Send)] == ["9013"]


@pytest.mark.parametrize(
    "name", ["2051-e1-minute-data", "2061-e2-hour-data", "2081-e5-restart-time", "3020-e5-site-info"]
)
def test_upload_with_ack_bit_is_acked_by_the_shell_not_the_session(name: str) -> None:
    events = DasSession().receive_data(std(name), now=T0)
    [received] = [e for e in events if isinstance(e, PacketReceived)]
    assert received.ack and not received.backfill
    assert not any(isinstance(e, Send) for e in events)


def test_upload_without_ack_bit() -> None:
    events = DasSession().receive_data(std("2011-e5-realtime-data"), now=T0)
    assert [e.ack for e in events if isinstance(e, PacketReceived)] == [False]


def test_unknown_cn_with_ack_bit_is_acked_and_unknown_9xxx_is_not_answered() -> None:
    unknown = frame("QN=20240315101000001;ST=32;CN=3043;PW=123456;MN=" + MN + ";Flag=5;CP=&&&&")
    events = DasSession().receive_data(unknown, now=T0)
    assert [e.ack for e in events if isinstance(e, PacketReceived)] == [True]
    unknown_9 = frame("QN=20240315101000001;ST=91;CN=9099;PW=123456;MN=" + MN + ";Flag=5;CP=&&&&")
    events = DasSession().receive_data(unknown_9, now=T0)
    assert [e.ack for e in events if isinstance(e, PacketReceived)] == [False]
    assert not any(isinstance(e, Send) for e in events)


def test_rf_1_is_backfill() -> None:
    rf = frame("QN=20240601085857223;ST=31;CN=2051;PW=123456;MN=" + MN + ";Flag=9;RF=1;CP=&&DataTime=20240601080000&&")
    [received] = [e for e in DasSession().receive_data(rf, now=T0) if isinstance(e, PacketReceived)]
    assert received.backfill and received.ack


def test_replies_are_never_answered() -> None:
    for name in (
        "9014-e1-data-reply",
        "9013-e4-notification-reply",
        "9011-e3-request-reply",
        "9012-e3-execution-result",
    ):
        events = DasSession().receive_data(std(name), now=T0)
        assert not any(isinstance(e, Send) for e in events)
        assert [e.ack for e in events if isinstance(e, PacketReceived)] == [False]


def test_consecutive_rejects_close_and_a_good_packet_resets() -> None:
    session = DasSession(SessionConfig(max_consecutive_rejects=3))
    bad = STANDARD.replace(b"1C80", b"0000")
    session.receive_data(bad + bad, now=T0)
    assert not session.should_close
    session.receive_data(STANDARD, now=T0)
    assert session.consecutive_rejects == 0
    session.receive_data(bad * 3, now=T0)
    assert session.should_close and session.close_reason == "too_many_rejects"


def test_new_qn_is_strictly_increasing() -> None:
    session = DasSession()
    qns = [session.new_qn(T0) for _ in range(5)]
    assert qns == sorted(set(qns)) and all(len(q) == 17 for q in qns)


# ---- split packets ------------------------------------------------------------------------------


def test_split_parts_standing_alone_are_tracked_not_joined() -> None:
    session = DasSession()
    events = session.receive_data(std("2051-e6-split-part-1") + std("2051-e6-split-part-2"), now=T0)
    received = [e for e in events if isinstance(e, PacketReceived)]
    assert [r.ack for r in received] == [True, True] and not any(r.fragment for r in received)
    assert session.poll(T0 + timedelta(hours=1)) == []


def test_missing_split_part_is_reported_after_the_timeout() -> None:
    session = DasSession(SessionConfig(split_timeout_s=60))
    session.receive_data(std("2051-e6-split-part-2"), now=T0)
    assert session.poll(T0 + timedelta(seconds=59)) == []
    assert session.poll(T0 + timedelta(seconds=60)) == [SplitPartsMissing(MN, "2051", "20240315100000", (1,))]


CUT_CP = (
    "DataTime=20240315100000;w00000-Cou=10.5,w00000-Avg=17.5,w00000-Flag=N;"
    "w01018-Cou=0.421,w01018-Avg=40.1,w01018-Flag=N"
)


def fragments(cut: int, pnum: int = 2) -> list[bytes]:
    """A transfer cut mid-factor-group; every part carries the transfer's QN."""
    bounds = [0, cut, len(CUT_CP)] if pnum == 2 else [0, cut // 2, cut, len(CUT_CP)]
    parts = [CUT_CP[a:b] for a, b in itertools.pairwise(bounds)]
    return [
        frame(f"QN=20240315101000770;ST=32;CN=2051;PW=123456;MN={MN};Flag=7;PNUM={pnum};PNO={n};CP=&&{p}&&")
        for n, p in enumerate(parts, 1)
    ]


@settings(max_examples=60, deadline=None)
@given(st.integers(30, len(CUT_CP) - 5), st.sampled_from([2, 3]), st.randoms(use_true_random=False))
def test_fragments_are_acked_parts_that_assemble_in_pno_order_whatever_the_arrival_order(
    cut: int, pnum: int, rng: random.Random
) -> None:
    parts = fragments(cut, pnum)
    rng.shuffle(parts)
    session = DasSession()
    events: list[Event] = []
    for part in parts:
        events += session.receive_data(part, now=T0)
    received = [e for e in events if isinstance(e, PacketReceived)]
    assert len(received) == pnum and all(r.ack for r in received) and any(r.fragment for r in received)
    joined = assemble_parts([r.packet for r in received])
    assert joined.cp == CUT_CP and joined.pnum is None and joined.flag == 5
    readings = joined.data.readings  # type: ignore[union-attr]
    assert [r.code for r in readings] == ["w00000", "w01018"]
    assert readings[1].values == {"Cou": "0.421", "Avg": "40.1", "Flag": "N"}
    assert session.split_bytes == 0  # the session saw the whole transfer: nothing left tracked
    assert session.poll(T0 + timedelta(hours=1)) == []


def test_split_parts_in_any_order_give_the_same_records() -> None:
    one, two = std("2051-e6-split-part-1"), std("2051-e6-split-part-2")

    def records(wire: bytes) -> set[tuple[str | None, str, str]]:
        out = set()
        for event in DasSession().receive_data(wire, now=T0):
            if isinstance(event, PacketReceived):
                data = event.packet.data
                for reading in data.readings:  # type: ignore[union-attr]
                    out.add((data.data_time, reading.code, str(reading.values)))  # type: ignore[union-attr]
        return out

    assert records(one + two) == records(two + one)
    assert len(records(one + two)) == 2

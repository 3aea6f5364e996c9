"""CommandTracker: each session event moves a command to the state the table in its docstring says;
a fetch is final once its rows committed, or `settle_s` after its 9012."""

from __future__ import annotations

from datetime import UTC, datetime

from hj212gw.monitor.commands import CommandOutcome, CommandTracker, InFlight
from hj212gw.monitor.hub import StoredData
from hj212gw.protocol.builders import Target, build_request
from hj212gw.protocol.decoder import decode_frame
from hj212gw.protocol.events import PacketReceived, RequestAcknowledged, RequestFailed, RequestFinished
from hj212gw.protocol.framing import parse_frame

MN = "010000A8900016F000169DC0"
QN = "20240316083000123"
NOW = datetime(2024, 3, 16, 0, 30, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tracked(
    cn: str = "2061", data_cn: str | None = "2061", expects_result: bool = True
) -> tuple[CommandTracker, list[CommandOutcome], list[str], Clock]:
    outcomes: list[CommandOutcome] = []
    finals: list[str] = []
    clock = Clock()
    tracker = CommandTracker(settle_s=5.0, on_final=finals.append, clock=clock)
    tracker.track(InFlight(7, MN, cn, QN, data_cn, expects_result, outcomes.append))
    return tracker, outcomes, finals, clock


def answer(cn: str, qn: str, cp: str) -> PacketReceived:
    frame = parse_frame(
        build_request(Target(MN, "123456", "31"), cn, qn, tuple(tuple(i.split("=")) for i in cp.split(";")), ack=False)
    )  # type: ignore[arg-type]
    return PacketReceived(decode_frame(frame), frame, ack=False, backfill=True)


def stored(hour: int) -> StoredData:
    at = datetime(2024, 3, 15, hour, tzinfo=UTC)
    return StoredData(MN, "2061", at, NOW, backfill=True, time_suspect=False)


def test_a_fetch_is_final_when_the_rows_of_its_packets_committed() -> None:
    tracker, outcomes, finals, _ = tracked()
    tracker.progress((MN,), RequestAcknowledged(QN, "2061", 1), NOW)
    assert [u.state for u in tracker.take_updates()] == ["acknowledged"]
    for qn, hour in (("20240316083001001", 0), ("20240316083001302", 1)):
        tracker.progress((MN,), answer("2061", qn, f"DataTime=202403150{hour}0000;a21026-Avg=1"), NOW)
    tracker.stored(stored(0))
    tracker.progress((MN,), RequestFinished(QN, "2061", 1), NOW)
    assert outcomes == [] and len(tracker) == 1  # one packet's rows still on their way
    tracker.stored(stored(1))
    assert outcomes[0].state == "succeeded" and outcomes[0].result == {
        "packets": 2, "packets_stored": 2,
        "data_time_first": "2024-03-15T00:00:00Z", "data_time_last": "2024-03-15T01:00:00Z",
    }  # fmt: skip
    assert finals == ["succeeded"] and len(tracker) == 0
    (update,) = tracker.take_updates()
    assert update.state == "succeeded" and update.qn_rtn == 1 and update.exe_rtn == 1


def test_a_fetch_whose_rows_never_commit_ends_after_settle_s() -> None:
    tracker, outcomes, _, clock = tracked()
    tracker.progress((MN,), RequestAcknowledged(QN, "2061", 1), NOW)
    tracker.progress((MN,), answer("2061", "20240316083001001", "DataTime=20240315000000;a21026-Avg=1"), NOW)
    tracker.progress((MN,), RequestFinished(QN, "2061", 1), NOW)
    clock.now += 4.9
    tracker.tick(NOW)
    assert outcomes == []
    clock.now += 0.2
    tracker.tick(NOW)
    assert outcomes[0].state == "succeeded" and outcomes[0].result == {
        "packets": 1, "packets_stored": 0, "data_time_first": None, "data_time_last": None,
    }  # fmt: skip


def test_released_after_the_9012_keeps_its_outcome_and_before_it_fails() -> None:
    tracker, outcomes, _, _ = tracked()
    tracker.progress((MN,), answer("2061", "20240316083001001", "DataTime=20240315000000;a21026-Avg=1"), NOW)
    tracker.progress((MN,), RequestFinished(QN, "2061", 100), NOW)
    tracker.released(MN, 1, "peer_closed", NOW)
    assert outcomes[0].state == "succeeded" and outcomes[0].no_data
    tracker, outcomes, _, _ = tracked()
    tracker.released(MN, 1, "moved to gateway b", NOW)
    assert outcomes[0].state == "failed" and outcomes[0].reason == "connection closed: moved to gateway b"


def test_the_codes_of_the_standard_name_each_outcome() -> None:
    cases = [
        (RequestAcknowledged(QN, "1011", 3), "refused", "QnRtn=3 (pw_error)"),
        (RequestAcknowledged(QN, "1011", 42), "refused", "QnRtn=42 (unknown)"),
        (RequestFinished(QN, "1011", 5), "failed", "ExeRtn=5 (busy)"),
        (RequestFailed(QN, "1011", "no_result"), "timed_out", "no_result"),
        (RequestFailed(QN, "1011", "too_many_pending"), "failed", "too_many_pending"),
    ]
    for event, state, reason in cases:
        tracker, outcomes, _, _ = tracked("1011", "1011")
        tracker.progress((MN,), event, NOW)
        assert (outcomes[0].state, outcomes[0].reason) == (state, reason)


def test_a_notification_succeeds_on_its_answer_and_a_get_keeps_its_cp() -> None:
    tracker, outcomes, _, _ = tracked("2012", None, expects_result=False)
    tracker.progress((MN,), RequestAcknowledged(QN, "2012", 1), NOW)
    assert outcomes[0].state == "succeeded" and outcomes[0].result is None
    tracker, outcomes, _, _ = tracked("1011", "1011")
    tracker.progress((MN,), RequestAcknowledged(QN, "1011", 1), NOW)
    tracker.progress((MN,), answer("1011", QN, "SystemTime=20240316083000"), NOW)
    tracker.progress((MN,), RequestFinished(QN, "1011", 1), NOW)
    assert outcomes[0].result == {"cp": {"SystemTime": "20240316083000"}}


def test_events_of_other_requests_and_devices_change_nothing() -> None:
    tracker, outcomes, _, _ = tracked()
    tracker.progress((MN,), RequestFinished("20240316083000999", "2061", 1), NOW)  # the 1012 after a 1013
    tracker.progress(("OTHER",), RequestFinished(QN, "2061", 1), NOW)
    tracker.released("OTHER", 1, "peer_closed", NOW)
    assert outcomes == [] and tracker.take_updates() == [] and len(tracker) == 1

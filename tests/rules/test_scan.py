from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hj212gw.rules.calendar import WorkCalendar
from hj212gw.rules.model import ActiveAlert, AlertKey, Clear, DeviceStatus, Fire, GapView, Severity
from hj212gw.rules.scan import scan
from hj212gw.rules.thresholds import Thresholds, parse_thresholds

NOW = datetime(2026, 10, 20, 2, 0, tzinfo=UTC)
CAL = WorkCalendar.from_library()
DEFAULT = Thresholds.default()


def device(state: str, minutes_ago: float, mn: str = "MN1") -> DeviceStatus:
    return DeviceStatus(mn, state, "online", NOW - timedelta(minutes=minutes_ago), "peer_closed", {})


def active(rule: str, mn: str = "MN1", factor: str = "", detail: str = "", started: datetime = NOW) -> ActiveAlert:
    return ActiveAlert(AlertKey(rule, mn, factor, detail), Severity.WARNING, started)


def test_device_offline_fires_beyond_tolerance_once_and_clears_when_back() -> None:
    assert scan(NOW, [device("offline", 5)], [], [], DEFAULT, CAL) == []
    (fired,) = scan(NOW, [device("offline", 11)], [], [], DEFAULT, CAL)
    assert isinstance(fired, Fire) and fired.key == AlertKey("device_offline", "MN1")
    assert fired.started_at == NOW - timedelta(minutes=11)
    assert scan(NOW, [device("offline", 11)], [], [active("device_offline")], DEFAULT, CAL) == []
    (cleared,) = scan(NOW, [device("online", 1)], [], [active("device_offline")], DEFAULT, CAL)
    assert isinstance(cleared, Clear) and cleared.key.rule == "device_offline"


def test_device_silent_with_per_device_tolerance() -> None:
    thresholds = parse_thresholds('[devices."MN1"]\nsilent_alert_after_s = 60\n')
    silent = DeviceStatus("MN1", "silent", "online", NOW - timedelta(minutes=2), "data_overdue", {"overdue": ["2051"]})
    (fired,) = scan(NOW, [silent], [], [], thresholds, CAL)
    assert fired.key.rule == "device_silent" and "2051" in fired.summary_en
    assert scan(NOW, [silent], [], [], DEFAULT, CAL) == []


def test_a_device_not_listed_is_not_judged() -> None:
    assert scan(NOW, [], [], [active("device_offline")], DEFAULT, CAL) == []


def test_gap_given_up_and_no_data_per_cn_cleared_when_none_remains() -> None:
    gaps = [
        GapView("MN1", "2051", NOW - timedelta(hours=3), NOW - timedelta(hours=2), 60, "given_up", "no_data"),
        GapView("MN1", "2051", NOW - timedelta(hours=5), NOW - timedelta(hours=4), 30, "given_up", "no_answer"),
        GapView("MN1", "2061", NOW - timedelta(hours=5), NOW - timedelta(hours=4), 1, "open"),
    ]
    changes = scan(NOW, [], gaps, [], DEFAULT, CAL)
    assert {(c.key.detail, c.value) for c in changes if isinstance(c, Fire)} == {("2051", 90), ("2051/no_data", 60)}
    firing = [active("gap_given_up", detail="2051"), active("gap_given_up", detail="2051/no_data")]
    assert scan(NOW, [], gaps, firing, DEFAULT, CAL) == []
    cleared = scan(NOW, [], gaps[2:], firing, DEFAULT, CAL)
    assert {c.key.detail for c in cleared if isinstance(c, Clear)} == {"2051", "2051/no_data"}


def test_fault_over_24h_and_not_restored_within_5_working_days() -> None:
    # D episode since 2026-09-30 10:00 Beijing: 5 working days end 2026-10-13 10:00 Beijing.
    start = datetime(2026, 9, 30, 2, 0, tzinfo=UTC)
    episode = active("flag_episode", factor="a21026", detail="D", started=start)
    on_day_2 = scan(start + timedelta(hours=25), [], [], [episode], DEFAULT, CAL)
    assert [c.key.rule for c in on_day_2] == ["fault_over_24h"]
    assert on_day_2[0].started_at == start + timedelta(hours=24)
    before = scan(datetime(2026, 10, 13, 1, 59, tzinfo=UTC), [], [], [episode], DEFAULT, CAL)
    assert "fault_not_restored" not in {c.key.rule for c in before}
    after = scan(datetime(2026, 10, 13, 2, 1, tzinfo=UTC), [], [], [episode], DEFAULT, CAL)
    (late,) = [c for c in after if c.key.rule == "fault_not_restored"]
    assert isinstance(late, Fire) and late.details["calendar_known"] is True
    assert late.details["deadline"] == "2026-10-13T02:00:00+00:00"


def test_fault_alerts_clear_when_the_episode_ends() -> None:
    firing = [active("fault_over_24h", factor="a21026"), active("fault_not_restored", factor="a21026")]
    cleared = scan(NOW, [], [], firing, DEFAULT, CAL)
    assert {c.key.rule for c in cleared if isinstance(c, Clear)} == {"fault_over_24h", "fault_not_restored"}


def test_other_flag_letters_do_not_start_fault_clocks() -> None:
    episode = active("flag_episode", factor="a21026", detail="M", started=NOW - timedelta(days=30))
    assert scan(NOW, [], [], [episode], DEFAULT, CAL) == []


def test_device_silent_clears_when_data_resume() -> None:
    (cleared,) = scan(NOW, [device("online", 1)], [], [active("device_silent")], DEFAULT, CAL)
    assert isinstance(cleared, Clear) and cleared.key == AlertKey("device_silent", "MN1")

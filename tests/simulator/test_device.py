"""SimDevice driven step by step on a fake clock: schedules, DataTime semantics, framing."""

from datetime import datetime

from hj212gw.protocol.builders import build_notification_reply
from hj212gw.protocol.cp import DataCp
from hj212gw.protocol.models import parse_hj_time
from hj212gw.simulator.scenarios import Scenario
from hj212gw.simulator.testing import SteppedDevice


def _data_times(packets, cn):
    return [p.data.data_time for p in packets if p.cn == cn]


def test_boot_packet_is_sent_live_on_first_connect() -> None:
    das = SteppedDevice()
    [boot] = das.connect()
    assert boot.cn == "2081" and boot.flag == 5 and not boot.rf


def test_minute_hour_day_data_carry_the_period_start() -> None:
    das = SteppedDevice(min_interval_min=10, ack=False)
    das.connect()
    packets = das.advance(86400 + 1)
    minutes = _data_times(packets, "2051")
    assert minutes[:3] == ["20240315000000", "20240315001000", "20240315002000"]
    assert len(minutes) == 144
    assert _data_times(packets, "2061")[0] == "20240315000000" and len(_data_times(packets, "2061")) == 24
    assert _data_times(packets, "2031") == ["20240315000000"]


def test_water_period_data_have_cou_min_avg_max_and_flags() -> None:
    das = SteppedDevice(st="32")
    das.connect()
    [hour] = [p for p in das.advance(3601) if p.cn == "2061"]
    assert isinstance(hour.data, DataCp)
    cod = next(r for r in hour.data.readings if r.code == "w01018")
    assert cod.min <= cod.avg <= cod.max and cod.cou > 0 and cod.flag == "N"


def test_flue_gas_has_corrected_values_and_2005_units_use_2005_codes() -> None:
    das = SteppedDevice(st="31", version="2005")
    das.connect()
    [hour] = [p for p in das.advance(3601) if p.cn == "2061"]
    codes = {r.code for r in hour.data.readings}
    assert "02" in codes and "B02" in codes and "a21026" not in codes
    assert hour.version.label == "2005"
    so2 = next(r for r in hour.data.readings if r.code == "02")
    assert so2.number("ZsAvg") is not None


def test_realtime_every_rtd_interval_with_the_acquisition_moment() -> None:
    das = SteppedDevice(uploads=frozenset({"2011"}), rtd_interval_s=30, ack=False)
    das.connect()
    rtd = _data_times(das.advance(120), "2011")
    assert rtd == ["20240315000030", "20240315000100", "20240315000130", "20240315000200"]


def test_qns_are_unique_and_increase() -> None:
    das = SteppedDevice(uploads=frozenset({"2011", "2051"}), min_interval_min=1, rtd_interval_s=30, ack=False)
    das.connect()
    qns = [p.qn for p in das.advance(600)]
    assert len(set(qns)) == len(qns) and qns == sorted(qns)


def test_device_clock_follows_timezone_and_drift() -> None:
    das = SteppedDevice(scenarios=[Scenario("drift", ppm=1000, offset_s=60)])
    assert das.local_now() == datetime(2024, 3, 15, 0, 1, 0)
    das.advance(10_000)
    assert das.local_now() == datetime(2024, 3, 15, 2, 47, 50)  # +60 s offset +10 s drift


def test_silent_device_records_and_sends_no_data() -> None:
    das = SteppedDevice(min_interval_min=1, scenarios=[Scenario("silent", start_s=0, duration_s=300)])
    das.connect()
    minutes = _data_times(das.advance(600), "2051")
    assert minutes[0] == "20240315000500"
    assert das.device.recorded["2051"][0][0] == parse_hj_time("20240315000500")


def test_value_scenarios_force_values() -> None:
    das = SteppedDevice(min_interval_min=1, scenarios=[Scenario("zero", factors=("w01018",)),
                                                       Scenario("over_limit", factors=("w21003",))])  # fmt: skip
    das.connect()
    minute = next(p for p in das.advance(61) if p.cn == "2051")
    readings = {r.code: r for r in minute.data.readings}
    assert readings["w01018"].avg == 0.0
    assert readings["w21003"].avg > 5.0


def test_fault_scenario_marks_flags() -> None:
    das = SteppedDevice(min_interval_min=1, scenarios=[Scenario("fault", flag="M", factors=("w01018",))])
    das.connect()
    minute = next(p for p in das.advance(61) if p.cn == "2051")
    flags = {r.code: r.flag for r in minute.data.readings}
    assert flags["w01018"] == "M" and flags["w21003"] == "N"


def test_split_scenario_sends_parts_with_pnum_pno_and_own_qns() -> None:
    das = SteppedDevice(min_interval_min=1, scenarios=[Scenario("split", rate=1.0)])
    das.connect()
    parts = [p for p in das.advance(61) if p.cn == "2051"]
    assert [(p.pnum, p.pno, p.flag) for p in parts] == [(2, 1, 7), (2, 2, 7)]
    assert parts[0].qn != parts[1].qn
    assert all(p.data.data_time == "20240315000000" for p in parts)
    codes = [r.code for p in parts for r in p.data.readings]
    assert sorted(codes) == sorted(f.code for f in das.spec.factors)


def test_2025_heartbeat_when_idle_only() -> None:
    das = SteppedDevice(version="2025", heartbeat_s=60)
    das.ack(das.connect())
    assert das.wait_real(30) == []
    [beat] = das.wait_real(31)
    assert beat.cn == "9015" and beat.flag == 9


def test_2025_heartbeat_waits_for_the_previous_9013_and_a_lost_link_costs_it() -> None:
    das = SteppedDevice(version="2025", heartbeat_s=60)
    das.ack(das.connect())
    [first] = das.wait_real(61)
    assert das.wait_real(600) == []  # no second heartbeat while the first waits for its reply
    [second] = das.feed(build_notification_reply(first))  # the link has been idle long enough
    assert second.cn == "9015" and second.qn != first.qn
    das.disconnect()
    counters = das.counters
    assert (counters.heartbeats, counters.heartbeats_answered, counters.heartbeats_lost) == (2, 1, 1)


def test_flatline_scenario_repeats_the_reading_of_its_start() -> None:
    das = SteppedDevice(min_interval_min=1, scenarios=[Scenario("flatline", factors=("w01018",), start_s=120)])
    das.connect()
    minutes = [p for p in das.advance(600, real_seconds=0) if p.cn == "2051"]  # no resends
    cod = [next(r.avg for r in p.data.readings if r.code == "w01018") for p in minutes]
    other = [next(r.avg for r in p.data.readings if r.code == "w21003") for p in minutes]
    assert len(set(cod[2:])) == 1 and len(set(cod)) > 1  # stuck from the third minute on
    assert len(set(other)) > 1  # only the named factor


def test_dilution_scenario_raises_o2_and_lowers_pollutants() -> None:
    das = SteppedDevice(st="31", min_interval_min=1, scenarios=[Scenario("dilution", start_s=60)])
    das.connect()
    before, during = (
        {r.code: r.avg for r in p.data.readings} for p in das.advance(121, real_seconds=0) if p.cn == "2051"
    )
    assert before["a19001"] < 12 and during["a19001"] == 20.6
    assert during["a21026"] < before["a21026"] / 5


def test_parameter_change_scenario_uploads_the_range_hourly_and_doubles_it_while_active() -> None:
    das = SteppedDevice(ack=False, scenarios=[Scenario("parameter_change", factors=("w01018",), start_s=7200)])
    das.connect()
    uploads = [p.cp for p in das.advance(4 * 3600, real_seconds=0) if p.cn == "3020" and "i13001" in p.cp]
    assert [cp.split(";", 1)[1] for cp in uploads] == [
        "PolId=w01018;i13001-Info=0-500",
        "PolId=w01018;i13001-Info=0-500",
        "PolId=w01018;i13001-Info=0-1000",
        "PolId=w01018;i13001-Info=0-1000",
    ]

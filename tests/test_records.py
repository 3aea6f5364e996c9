"""Packet -> COPY-ready data records: columns, flags, text kept as sent, times in the device zone."""

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hj212gw.protocol.segment import parse_segment
from hj212gw.records import TimePolicy, data_records, device_seen, device_time, frame_row
from hj212gw.storage.batch import STAGE_COLUMNS

SHANGHAI = ZoneInfo("Asia/Shanghai")
POLICY = TimePolicy(SHANGHAI)
RECEIVED = datetime(2024, 3, 15, 2, 11, tzinfo=UTC)  # 10:11 in Shanghai
MINUTE = (
    b"QN=20240315101000001;ST=32;CN=2051;PW=123456;MN=010000A8900016F000169DC0;Flag=5;CP=&&DataTime=20240315100000;"
    b"w00000-Cou=10.5,w00000-Min=16.4,w00000-Avg=17.5,w00000-Max=20.1,w00000-Flag=N;"
    b"w01018-Avg=40.1,w01018-ZsAvg=41.0,w01018-Flag=M,w01018-EFlag=A01,w01018-SampleTime=20240315090000,"
    b"w01018-Info=abc&&"
)


def as_dict(record: list[object]) -> dict[str, object]:
    assert len(record) == len(STAGE_COLUMNS)
    return dict(zip(STAGE_COLUMNS, record, strict=True))


def test_one_record_per_factor_with_numbers_flags_and_text_as_sent() -> None:
    flow, cod = (as_dict(r) for r in data_records(parse_segment(MINUTE), RECEIVED, POLICY, resend=False))
    assert flow["factor"] == "w00000" and flow["mn"] == "010000A8900016F000169DC0" and flow["cn"] == "2051"
    assert (flow["cou"], flow["min"], flow["avg"], flow["max"], flow["rtd"]) == (10.5, 16.4, 17.5, 20.1, None)
    assert flow["flag"] == "N" and flow["extra"] is None
    assert json.loads(str(flow["values_text"])) == {
        "Cou": "10.5",
        "Min": "16.4",
        "Avg": "17.5",
        "Max": "20.1",
        "Flag": "N",
    }
    assert flow["data_time"] == datetime(2024, 3, 15, 2, 0, tzinfo=UTC)  # 10:00 Shanghai
    assert (cod["avg"], cod["zs_avg"], cod["flag"], cod["eflag"]) == (40.1, 41.0, "M", "A01")
    assert cod["sample_time"] == datetime(2024, 3, 15, 9, 0, tzinfo=SHANGHAI)
    assert json.loads(str(cod["extra"])) == {"Info": "abc"}
    assert flow["qn"] == "20240315101000001" and flow["received_at"] == RECEIVED
    assert flow["resend"] is False and flow["time_suspect"] is False


def test_a_non_numeric_value_goes_to_extra_and_its_column_stays_empty() -> None:
    segment = b"QN=1;ST=45;CN=2011;PW=1;MN=M;Flag=4;CP=&&DataTime=20240315100000;p99101-Rtd=St&&"
    (record,) = (as_dict(r) for r in data_records(parse_segment(segment), RECEIVED, POLICY, resend=True))
    assert record["rtd"] is None and json.loads(str(record["extra"])) == {"Rtd": "St"}
    assert record["resend"] is True


def test_2005_codes_get_their_2017_code() -> None:
    segment = b"ST=32;CN=2011;PW=000000;MN=LD130133000015;CP=&&DataTime=20160824003817;011-Rtd=231.0,011-Flag=N&&"
    (record,) = (as_dict(r) for r in data_records(parse_segment(segment), RECEIVED, POLICY, resend=False))
    assert (record["factor"], record["factor_2017"]) == ("011", "w01018")


def test_datatime_far_from_the_receive_time_is_stored_and_marked() -> None:
    future = MINUTE.replace(b"DataTime=20240315100000", b"DataTime=20240316100000")
    old = MINUTE.replace(b"DataTime=20240315100000", b"DataTime=20200101000000")
    broken = MINUTE.replace(b"DataTime=20240315100000", b"DataTime=2024031")
    for segment in (future, old):
        records = data_records(parse_segment(segment), RECEIVED, POLICY, resend=False)
        assert all(as_dict(r)["time_suspect"] for r in records)
    (first, _) = (as_dict(r) for r in data_records(parse_segment(broken), RECEIVED, POLICY, resend=False))
    assert first["time_suspect"] is True and first["data_time"] == RECEIVED


def test_packets_without_data_make_no_records() -> None:
    heartbeat = b"QN=20240315101000001;ST=91;CN=9015;PW=1;MN=M;Flag=9;CP=&&&&"
    assert data_records(parse_segment(heartbeat), RECEIVED, POLICY, resend=False) == []


def test_site_info_items_are_records_too() -> None:
    info = b"QN=1;ST=32;CN=3020;PW=1;MN=M;Flag=5;CP=&&DataTime=20240315080200;PolId=w21003;i12001-Info=1&&"
    (record,) = (as_dict(r) for r in data_records(parse_segment(info), RECEIVED, POLICY, resend=False))
    assert record["factor"] == "i12001" and json.loads(str(record["extra"])) == {"Info": "1"}


def test_device_time_reads_the_device_zone() -> None:
    assert device_time("20240315100000", SHANGHAI) == datetime(2024, 3, 15, 2, 0, tzinfo=UTC)
    assert device_time("garbage", SHANGHAI) is None
    assert device_time(None, SHANGHAI) is None


def test_sighting_and_frame_row_carry_the_packet_identity() -> None:
    packet = parse_segment(MINUTE)
    seen = device_seen(packet, "10.0.0.1:5000", RECEIVED)
    assert seen is not None and (seen.mn, seen.protocol_version, seen.st) == (packet.mn, 2017, "32")
    row = frame_row(
        None,
        RECEIVED + timedelta(seconds=1),
        verdict="crc_mismatch",
        connection_id=7,
        peer="p",
        packet=packet,
        raw=b"##0001x",
    )
    assert (row.verdict, row.mn, row.cn, row.qn, row.raw, row.connection_id) == (
        "crc_mismatch",
        packet.mn,
        "2051",
        packet.qn,
        b"##0001x",
        7,
    )

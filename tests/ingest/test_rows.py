"""Packet -> binary COPY data rows: columns, flags, text kept as sent, times in the device zone."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hj212gw.ingest.rows import TimePolicy, data_block, device_seen, device_time, frame_row, packet_frame_row
from hj212gw.protocol.framing import encode_frame, parse_frame
from hj212gw.protocol.models import Packet
from hj212gw.protocol.segment import parse_segment
from hj212gw.storage.rows import DataBlock
from tests.storage.copy_rows import decode_rows

SHANGHAI = ZoneInfo("Asia/Shanghai")
POLICY = TimePolicy(SHANGHAI)
RECEIVED = datetime(2024, 3, 15, 2, 11, tzinfo=UTC)  # 10:11 in Shanghai
MINUTE = (
    b"QN=20240315101000001;ST=32;CN=2051;PW=123456;MN=010000A8900016F000169DC0;Flag=5;CP=&&DataTime=20240315100000;"
    b"w00000-Cou=10.5,w00000-Min=16.4,w00000-Avg=17.5,w00000-Max=20.1,w00000-Flag=N;"
    b"w01018-Avg=40.1,w01018-ZsAvg=41.0,w01018-Flag=M,w01018-EFlag=A01,w01018-SampleTime=20240315090000,"
    b"w01018-Info=abc&&"
)


def rows_of(packet: Packet, *, resend: bool = False) -> list[dict[str, object]]:
    block = data_block(packet, RECEIVED, POLICY, resend=resend)
    assert isinstance(block, DataBlock)
    rows = decode_rows(block.copy)
    assert block.rows == len(rows)
    return rows


def test_one_record_per_factor_with_numbers_flags_and_text_as_sent() -> None:
    flow, cod = rows_of(parse_segment(MINUTE))
    assert flow["factor"] == "w00000" and flow["mn"] == "010000A8900016F000169DC0" and flow["cn"] == "2051"
    assert (flow["cou"], flow["min"], flow["avg"], flow["max"], flow["rtd"]) == (10.5, 16.4, 17.5, 20.1, None)
    assert flow["flag"] == "N" and flow["extra"] is None
    assert flow["data_time"] == datetime(2024, 3, 15, 2, 0, tzinfo=UTC)  # 10:00 Shanghai
    assert (cod["avg"], cod["zs_avg"], cod["flag"], cod["eflag"]) == (40.1, 41.0, "M", "A01")
    assert cod["sample_time"] == datetime(2024, 3, 15, 9, 0, tzinfo=SHANGHAI)
    assert cod["extra"] == {"Info": "abc"}
    assert cod["factor_2017"] is None and cod["rtd"] is None
    assert flow["qn"] == "20240315101000001" and flow["received_at"] == RECEIVED
    assert flow["resend"] is False and flow["time_suspect"] is False


def test_a_non_numeric_value_goes_to_extra_and_its_column_stays_empty() -> None:
    segment = b"QN=1;ST=45;CN=2011;PW=1;MN=M;Flag=4;CP=&&DataTime=20240315100000;p99101-Rtd=St&&"
    (record,) = rows_of(parse_segment(segment), resend=True)
    assert record["rtd"] is None and record["extra"] == {"Rtd": "St"}
    assert record["resend"] is True


def test_nan_and_infinity_are_kept_as_text_not_as_numbers() -> None:
    fields = "a21026-Rtd=NaN,a21026-Avg=-inf,a21026-Min=Infinity,a21026-Max=1e999,a21026-Cou=0.000"
    segment = f"QN=1;ST=22;CN=2051;PW=1;MN=M;Flag=4;CP=&&DataTime=20240315100000;{fields}&&".encode()
    (record,) = rows_of(parse_segment(segment))
    assert (record["rtd"], record["avg"], record["min"], record["max"], record["cou"]) == (None, None, None, None, 0.0)
    assert record["extra"] == {"Rtd": "NaN", "Avg": "-inf", "Min": "Infinity", "Max": "1e999"}


def test_2005_codes_get_their_2017_code() -> None:
    segment = b"ST=32;CN=2011;PW=000000;MN=LD130133000015;CP=&&DataTime=20160824003817;011-Rtd=231.0,011-Flag=N&&"
    (record,) = rows_of(parse_segment(segment))
    assert (record["factor"], record["factor_2017"]) == ("011", "w01018")


def test_datatime_far_from_the_receive_time_is_stored_and_marked() -> None:
    future = MINUTE.replace(b"DataTime=20240315100000", b"DataTime=20240316100000")
    old = MINUTE.replace(b"DataTime=20240315100000", b"DataTime=20200101000000")
    broken = MINUTE.replace(b"DataTime=20240315100000", b"DataTime=2024031")
    for segment in (future, old):
        assert all(r["time_suspect"] for r in rows_of(parse_segment(segment)))
    (first, _) = rows_of(parse_segment(broken))
    assert first["time_suspect"] is True and first["data_time"] == RECEIVED


def test_packets_without_data_make_no_rows() -> None:
    heartbeat = b"QN=20240315101000001;ST=91;CN=9015;PW=1;MN=M;Flag=9;CP=&&&&"
    assert data_block(parse_segment(heartbeat), RECEIVED, POLICY, resend=False) is None


def test_site_info_items_are_rows_too() -> None:
    info = b"QN=1;ST=32;CN=3020;PW=1;MN=M;Flag=5;CP=&&DataTime=20240315080200;PolId=w21003;i12001-Info=1&&"
    (record,) = rows_of(parse_segment(info))
    assert record["factor"] == "i12001" and record["extra"] == {"Info": "1"}
    block = data_block(parse_segment(info), RECEIVED, POLICY, resend=False)
    assert block is not None and block.fields == {"i12001-Info": "1", "PolId": "w21003"}  # for rules.changes


def test_every_number_column_and_the_partition_month() -> None:
    suffixes = ("Rtd", "Min", "Avg", "Max", "Cou", "ZsRtd", "ZsMin", "ZsAvg", "ZsMax")
    fields = ",".join(f"a21026-{s}={i}.5" for i, s in enumerate(suffixes))
    segment = f"QN=1;ST=22;CN=2051;PW=1;MN=M;Flag=4;CP=&&DataTime=20240301030000;{fields}&&".encode()
    (record,) = rows_of(parse_segment(segment))
    columns = ("rtd", "min", "avg", "max", "cou", "zs_rtd", "zs_min", "zs_avg", "zs_max")
    assert [record[c] for c in columns] == [i + 0.5 for i in range(9)]
    assert record["flag"] is None and record["eflag"] is None and record["sample_time"] is None
    block = data_block(parse_segment(segment), RECEIVED, POLICY, resend=False)
    assert block is not None and block.month == (2024, 2)  # 03:00 in Shanghai is still February in UTC


def test_a_code_sent_by_many_packets_encodes_the_same_every_time() -> None:
    first = rows_of(parse_segment(MINUTE))
    again = rows_of(parse_segment(MINUTE))
    assert first == again and [r["factor"] for r in again] == ["w00000", "w01018"]


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


def test_the_positional_frame_row_of_a_good_packet_is_the_general_one() -> None:
    frame = parse_frame(encode_frame(MINUTE))
    packet = parse_segment(frame.segment)._replace(tolerances=("long_qn",))
    general = frame_row(frame, RECEIVED, verdict="ok", connection_id=3, peer="p", packet=packet)
    assert packet_frame_row(frame, packet, RECEIVED, 3, "p") == general
    assert general.tolerances == ("long_qn",) and general.raw == frame.raw

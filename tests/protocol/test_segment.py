"""segment.py: lossless parse/encode of every fixture segment; generated packets of every CN and version."""

from pathlib import Path

import pytest
from hypothesis import given, settings

from hj212gw.protocol.errors import BadEncoding, BadFieldValue, MissingField
from hj212gw.protocol.framing import Tolerance, parse_frame
from hj212gw.protocol.segment import encode_segment, parse_segment
from tests.protocol.conftest import GOOD, fixture_id
from tests.protocol.strategies import packets_segments


def segment_of(wire: bytes) -> bytes:
    return parse_frame(wire).segment


@pytest.mark.parametrize("path", GOOD, ids=fixture_id)
def test_segment_round_trips_byte_for_byte(path: Path) -> None:
    segment = segment_of(path.read_bytes())
    assert encode_segment(parse_segment(segment)) == segment


@settings(max_examples=300, deadline=None)
@given(packets_segments())
def test_generated_segment_round_trips(segment: bytes) -> None:
    packet = parse_segment(segment)
    assert encode_segment(packet) == segment
    assert parse_segment(encode_segment(packet)) == packet


def test_missing_cn_and_missing_cp() -> None:
    with pytest.raises(MissingField, match="CN"):
        parse_segment(b"QN=1;ST=32;PW=1;MN=1;Flag=4;CP=&&&&")
    with pytest.raises(MissingField, match="CP"):
        parse_segment(b"QN=1;ST=32;CN=2011;PW=1;MN=1;Flag=4;")


@pytest.mark.parametrize(
    ("segment", "name"),
    [
        (b"QN=1;CN=20x1;Flag=4;CP=&&&&", "CN"),
        (b"QN=1;CN=2011;Flag=abc;CP=&&&&", "Flag"),
        (b"QN=1;CN=2011;Flag=300;CP=&&&&", "Flag"),
        (b"QN=1;CN=2011;Flag=7;PNUM=12345;PNO=1;CP=&&&&", "PNUM"),
    ],
)
def test_bad_field_values(segment: bytes, name: str) -> None:
    with pytest.raises(BadFieldValue) as caught:
        parse_segment(segment)
    assert caught.value.name == name


def test_header_must_be_ascii() -> None:
    with pytest.raises(BadEncoding):
        parse_segment("QN=1;CN=2011;PW=密码;CP=&&&&".encode())


def test_tolerances_of_the_2005_shape() -> None:
    packet = parse_segment(b"ST=32;CN=2011;PW=1;MN=LD1;CP=&&DataTime=20160824003817000;011-Rtd=1&&")
    assert packet.qn is None and packet.flag is None
    assert {Tolerance.MISSING_QN, Tolerance.MISSING_FLAG, Tolerance.LONG_DATATIME} <= set(packet.tolerances)
    assert packet.version.label == "2005"


def test_fields_after_cp_and_unclosed_cp() -> None:
    packet = parse_segment(b"QN=1;ST=32;CN=1012;PW=1;MN=A;CP=&&SystemTime=20201222115733&&;Flag=0")
    assert packet.flag == 0 and Tolerance.FIELDS_AFTER_CP in packet.tolerances
    assert Tolerance.MISSING_FLAG not in packet.tolerances
    packet = parse_segment(b"QN=1;ST=32;CN=2011;PW=1;MN=A;Flag=4;CP=&&DataTime=20240101000000;a-Rtd=1")
    assert not packet.cp_closed and Tolerance.CP_UNCLOSED in packet.tolerances
    assert encode_segment(packet).endswith(b"a-Rtd=1")


def test_gbk_text_is_tolerated() -> None:
    segment = (
        b"QN=1;ST=32;CN=3020;PW=1;MN=A;Flag=4;CP=&&DataTime=20240101000000;i11001-Info=//"
        + "清洗".encode("gbk")
        + b"//&&"
    )
    packet = parse_segment(segment)
    assert Tolerance.GBK_TEXT in packet.tolerances
    assert "清洗" in packet.cp


def test_rf_marks_backfill_and_nul_is_named() -> None:
    packet = parse_segment(b"QN=1;ST=31;CN=2051;PW=1;MN=A;Flag=9;RF=1;CP=&&DataTime=20240101000000&&")
    assert packet.rf and packet.version.label == "2025"
    assert not parse_segment(b"QN=1;ST=31;CN=2051;PW=1;MN=A;Flag=9;RF=0;CP=&&&&").rf
    packet = parse_segment(b"QN=1;ST=31;CN=2051;PW=1\x00;MN=A;Flag=4;CP=&&&&")
    assert Tolerance.NUL_IN_FIELD in packet.tolerances


def test_nul_bytes_are_removed_from_named_values_and_the_cp_but_kept_in_fields() -> None:
    wire = (
        b"QN=2024\x00031510;ST=\x00\x00;CN=2011;PW=12\x003456;MN=A;Flag=4;"
        b"CP=&&DataTime=2024\x000315100000;a-Rtd=1\x00&&"
    )
    packet = parse_segment(wire)
    assert (packet.qn, packet.st, packet.pw) == ("2024031510", "", "123456")
    assert packet.cp == "DataTime=20240315100000;a-Rtd=1" and packet.data is not None
    assert packet.data.get("DataTime") == "20240315100000"
    assert packet.tolerances.count(Tolerance.NUL_IN_FIELD) == 1
    assert dict(packet.fields)["PW"] == "12\x003456"  # the header as sent: replies and re-encoding


def test_nul_in_fields_after_the_cp_is_removed_too() -> None:
    packet = parse_segment(b"QN=1;ST=32;CN=2011;PW=1;MN=A;CP=&&DataTime=20240315100000&&;Flag=4;ST=3\x002")
    assert packet.st == "32" and packet.flag == 4 and Tolerance.NUL_IN_FIELD in packet.tolerances

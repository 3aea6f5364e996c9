"""Compiled row layouts: byte-identical to the general encoder, for every field layout and value."""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hj212gw.ingest import layout as row_layout
from hj212gw.ingest import rows as records
from hj212gw.ingest.layout import RowLayout, layout_of
from hj212gw.ingest.rows import TimePolicy, data_block
from hj212gw.protocol.models import Packet
from hj212gw.protocol.segment import parse_segment
from tests.storage.copy_rows import decode_rows

POLICY = TimePolicy(ZoneInfo("Asia/Shanghai"))
RECEIVED = datetime(2024, 3, 15, 2, 11, tzinfo=UTC)


def packet_with(fields: list[tuple[str, str]], data_time: str = "20240315100000") -> Packet:
    cp = ";".join([f"DataTime={data_time}", ",".join(f"{name}={value}" for name, value in fields)])
    return parse_segment(f"QN=20240315101000001;ST=32;CN=2051;PW=1;MN=M1;Flag=5;CP=&&{cp}&&".encode())


def general_block(packet: Packet) -> object:
    """The block as the general encoder makes it (no compiled layout)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(records, "layout_of", lambda names, factor_columns: None)
        return data_block(packet, RECEIVED, POLICY, resend=False)


CODES = st.sampled_from(["a21026", "a34013", "w01018", "011", "B02", "a00000"])
SUFFIXES = st.sampled_from([*row_layout.NUMBER_SUFFIXES, *row_layout.TEXT_SUFFIXES, "SampleTime", "Info", "Zs"])
VALUES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["N", "Md", "", "NaN", "-inf", "Infinity", "1e999", "1_000", " 2.5", "0x10", "标"]),
    st.just("20240315090000"),
    st.text(alphabet="0123456789.-eE+NTaz", max_size=8),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(CODES, SUFFIXES, VALUES), max_size=14))
def test_compiled_layouts_encode_exactly_what_the_general_encoder_does(fields: list[tuple[str, str, str]]) -> None:
    packet = packet_with([(f"{code}-{suffix}", value) for code, suffix, value in fields])
    assert data_block(packet, RECEIVED, POLICY, resend=False) == general_block(packet)


NUMBERS = st.one_of(st.floats(allow_nan=False, allow_infinity=False).map(repr), st.integers(-(10**6), 10**6).map(str))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(CODES, st.sampled_from(row_layout.NUMBER_SUFFIXES), NUMBERS), max_size=14), st.data())
def test_well_formed_packets_take_the_compiled_layout_and_match_the_general_encoder(
    fields: list[tuple[str, str, str]], data: st.DataObject
) -> None:
    flags = [(f"{code}-Flag", data.draw(st.sampled_from(["N", "D", "Md", "T"]))) for code, _, _ in fields[::2]]
    packet = packet_with([(f"{code}-{suffix}", value) for code, suffix, value in fields] + flags)
    layout = layout_of(tuple(packet.data.fields), records._factor_columns)  # type: ignore[union-attr]
    assert layout is not None
    assert data_block(packet, RECEIVED, POLICY, resend=False) == general_block(packet)


def test_the_common_layout_compiles_once_and_its_rows_decode() -> None:
    fields = [("a21026-Min", "1.5"), ("a21026-Avg", "2"), ("a21026-Max", "3.25"), ("a21026-Flag", "N")]
    fields += [("a34013-Cou", "0.001"), ("a34013-Avg", "-7"), ("a34013-Flag", "Md"), ("a34013-EFlag", "A01")]
    packet = packet_with(fields)
    names = tuple(packet.data.fields)  # type: ignore[union-attr]
    layout = layout_of(names, records._factor_columns)
    assert isinstance(layout, RowLayout) and layout.rows == 2
    assert layout_of(names, records._factor_columns) is layout
    block = data_block(packet, RECEIVED, POLICY, resend=False)
    assert block is not None and block == general_block(packet)
    so2, pm = decode_rows(block.copy)
    assert (so2["factor"], so2["factor_2017"], so2["min"], so2["avg"], so2["max"], so2["flag"]) == (
        "a21026",
        None,
        1.5,
        2.0,
        3.25,
        "N",
    )
    assert (pm["cou"], pm["avg"], pm["flag"], pm["eflag"], pm["extra"], pm["sample_time"]) == (
        0.001,
        -7.0,
        "Md",
        "A01",
        None,
        None,
    )


def test_flags_of_other_lengths_in_the_same_layout_encode_correctly() -> None:
    for flag in ("N", "Md", "", "数据"):
        packet = packet_with([("a21026-Rtd", "1"), ("a21026-Flag", flag)])
        block = data_block(packet, RECEIVED, POLICY, resend=False)
        assert block is not None and block == general_block(packet)
        assert decode_rows(block.copy)[0]["flag"] == flag


def test_layouts_with_fields_for_extra_are_not_compiled() -> None:
    for extra in ("a21026-SampleTime", "a21026-Info", "-Rtd-x"):
        assert layout_of(("DataTime", "a21026-Rtd", extra), records._factor_columns) is None


def test_a_value_that_is_no_finite_number_is_refused_by_the_layout_and_kept_as_text() -> None:
    layout = layout_of(("a21026-Rtd", "a21026-Flag"), records._factor_columns)
    assert layout is not None
    head = b"H"
    assert layout.encode(["1.5", "N"], head) is not None
    assert layout.encode(["St", "N"], head) is None
    assert layout.encode(["nan", "N"], head) is None
    block = data_block(packet_with([("a21026-Rtd", "St"), ("a21026-Flag", "N")]), RECEIVED, POLICY, resend=False)
    assert block is not None
    rows = decode_rows(block.copy)
    assert rows[0]["rtd"] is None and rows[0]["extra"] == {"Rtd": "St"} and rows[0]["flag"] == "N"


def test_the_layout_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(row_layout, "_LAYOUTS", {})
    for n in range(row_layout._MAX_LAYOUTS + 50):
        layout = layout_of((f"x{n}-Rtd",), records._factor_columns)
        assert layout is not None and layout.rows == 1
    assert len(row_layout._LAYOUTS) == row_layout._MAX_LAYOUTS

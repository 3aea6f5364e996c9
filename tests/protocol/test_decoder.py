"""decoder.py: good fixtures decode to their expected fields; bad ones fail with their reason; CRC policy."""

from pathlib import Path

import pytest

from hj212gw.protocol.crc import crc16_modbus, swap_bytes
from hj212gw.protocol.decoder import CrcPolicy, decode_frame
from hj212gw.protocol.errors import CrcMismatch, CrcVariantMismatch, Hj212Error
from hj212gw.protocol.framing import Tolerance, parse_frame
from hj212gw.protocol.models import Packet
from tests.protocol.conftest import BAD, FIRST, GOOD, expected, fixture_id

SEGMENT = FIRST.read_bytes()[6:-6]
MODBUS = b"##0101" + SEGMENT + b"%04X\r\n" % crc16_modbus(SEGMENT)
MODBUS_SWAPPED = b"##0101" + SEGMENT + b"%04X\r\n" % swap_bytes(crc16_modbus(SEGMENT))
WRONG = b"##0101" + SEGMENT + b"0000\r\n"
MN = "010000A8900016F000169DC0"


def decode(wire: bytes, policy: CrcPolicy | None = None) -> Packet:
    return decode_frame(parse_frame(wire), policy)


@pytest.mark.parametrize("path", GOOD, ids=fixture_id)
def test_good_fixture_matches_its_json(path: Path) -> None:
    want = expected(path)
    packet = decode(path.read_bytes())
    got = {
        "qn": packet.qn,
        "st": packet.st,
        "cn": packet.cn,
        "pw": packet.pw,
        "mn": packet.mn,
        "flag": packet.flag,
        "pnum": packet.pnum,
        "pno": packet.pno,
        "rf": packet.rf,
        "version": packet.version.label,
        "tolerances": list(packet.tolerances),
        "data_time": packet.data.get("DataTime") if packet.data is not None else None,
    }
    assert got == {key: want[key] for key in got}
    readings = getattr(packet.data, "readings", None)
    assert (None if readings is None else len(readings)) == want["readings"]
    for reading, sample in zip(readings or (), want["reading_sample"], strict=False):
        assert {"code": reading.code, **reading.values} == sample


@pytest.mark.parametrize("path", BAD, ids=fixture_id)
def test_bad_fixture_is_rejected_with_the_reason_its_name_starts_with(path: Path) -> None:
    wire = path.read_bytes()
    with pytest.raises(Hj212Error) as caught:
        decode_frame(parse_frame(wire))
    assert path.name.startswith(caught.value.reason + "-")
    assert caught.value.reason == expected(path)["reason"]


def test_every_tolerance_with_a_fixture_is_listed_in_some_good_json() -> None:
    seen = {t for path in GOOD for t in expected(path)["tolerances"]}
    assert {Tolerance.DTU_KEEPALIVE, Tolerance.LOWERCASE_CRC, Tolerance.MISSING_QN, Tolerance.MISSING_FLAG} <= seen


def test_dtu_keepalive_fixtures_verify_once_the_chunk_is_removed() -> None:
    keepalive = [p for p in GOOD if "dtu_keepalive" in expected(p)["tolerances"]]
    assert len(keepalive) == 5
    for path in keepalive:
        frame = parse_frame(path.read_bytes())
        assert frame.injected.startswith(b"#G") and frame.injected.endswith(b"&")
        assert frame.segment.endswith(b"&&")


def test_strict_policy_rejects_a_plain_mismatch() -> None:
    with pytest.raises(CrcMismatch) as caught:
        decode(WRONG)
    assert caught.value.reason == "crc_mismatch"
    assert caught.value.computed == 0x1C80 and caught.value.declared == 0


@pytest.mark.parametrize(("wire", "variant"), [(MODBUS, "modbus"), (MODBUS_SWAPPED, "modbus_swapped")])
def test_strict_policy_names_a_modbus_variant(wire: bytes, variant: str) -> None:
    with pytest.raises(CrcVariantMismatch) as caught:
        decode(wire)
    assert caught.value.reason == "crc_variant" and caught.value.variant == variant


@pytest.mark.parametrize(
    ("wire", "variant", "tolerance"),
    [(MODBUS, "modbus", Tolerance.CRC_MODBUS), (MODBUS_SWAPPED, "modbus_swapped", Tolerance.CRC_MODBUS_SWAPPED)],
)
def test_variants_allowed_globally_or_per_mn(wire: bytes, variant: str, tolerance: Tolerance) -> None:
    assert tolerance in decode(wire, CrcPolicy(allowed_variants=frozenset({variant}))).tolerances
    per_mn = CrcPolicy(per_mn_variants={MN: frozenset({variant})})
    assert tolerance in decode(wire, per_mn).tolerances
    other = CrcPolicy(per_mn_variants={"OTHER": frozenset({variant})})
    with pytest.raises(CrcVariantMismatch):
        decode(wire, other)


def test_lenient_policy_accepts_and_labels() -> None:
    lenient = CrcPolicy(mode="lenient")
    assert Tolerance.CRC_NOT_CHECKED in decode(WRONG, lenient).tolerances
    assert Tolerance.CRC_MODBUS in decode(MODBUS, lenient).tolerances


def test_lenient_policy_still_rejects_a_malformed_segment() -> None:
    bad = b"QN=1;ST=32;PW=1;MN=1;Flag=4;CP=&&&&"
    with pytest.raises(Hj212Error) as caught:
        decode(b"##%04d%s0000\r\n" % (len(bad), bad), CrcPolicy(mode="lenient"))
    assert caught.value.reason == "missing_field"


@pytest.mark.parametrize("path", [p for p in BAD if p.name.startswith("crc_variant-")], ids=fixture_id)
def test_crc_variant_fixtures_pass_when_their_variant_is_allowed(path: Path) -> None:
    policy = CrcPolicy(allowed_variants=frozenset({"modbus", "modbus_swapped"}))
    packet = decode(path.read_bytes(), policy)
    assert {Tolerance.CRC_MODBUS, Tolerance.CRC_MODBUS_SWAPPED} & set(packet.tolerances)

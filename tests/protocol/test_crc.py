"""crc.py: the fast crc16 equals Appendix A's routine; known vectors; the 256-value structure."""

from hypothesis import given, settings
from hypothesis import strategies as st

from hj212gw.protocol.crc import crc16, crc16_modbus, crc16_reference, swap_bytes

STANDARD_SEGMENT = (
    b"QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&"
)
A1_2025 = b"QN=20240601085857223;ST=32;CN=1011;PW=123456;MN=010000A8900016F000169DC0;Flag=9;CP=&&&&"
LOW_BYTES = {0x00, 0x01, 0x40, 0x41, 0x80, 0x81, 0xC0, 0xC1}


@settings(max_examples=300)
@given(st.binary(max_size=3000))
def test_fast_crc_equals_the_appendix_a_routine(data: bytes) -> None:
    assert crc16(data) == crc16_reference(data)
    assert crc16(bytearray(data)) == crc16(memoryview(data)) == crc16_reference(data)


def test_fast_crc_equals_reference_at_every_length_around_the_fold_sizes() -> None:
    data = bytes(range(256)) * 5
    for n in range(0, 1100, 1):
        assert crc16(data[:n]) == crc16_reference(data[:n]), n


def test_standard_example_is_1c80_not_modbus() -> None:
    assert len(STANDARD_SEGMENT) == 101
    assert crc16(STANDARD_SEGMENT) == 0x1C80
    assert crc16_modbus(STANDARD_SEGMENT) == 0x0759


def test_2025_appendix_a1_vector_is_2200() -> None:
    assert len(A1_2025) == 87
    assert crc16(A1_2025) == 0x2200
    assert crc16_modbus(A1_2025) == 0xCCF4


def test_2025_appendix_a2_plaintext_vectors() -> None:
    from tests.protocol.conftest import FIXTURES

    for name, crc in (("2051-a2-example1-plaintext", 0x2200), ("2051-a2-example2-plaintext", 0xB541)):
        wire = (FIXTURES / "packets/good/hj212-2025-std" / f"{name}.hj212").read_bytes()
        segment = wire[6:-6]
        assert crc16(segment) == crc
        assert int(wire[-6:-2], 16) == crc


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=600))  # the empty segment keeps the seed FFFF
def test_low_byte_is_always_one_of_eight_values(data: bytes) -> None:
    assert crc16(data) & 0xFF in LOW_BYTES


def test_empty_segment_keeps_the_seed() -> None:
    assert crc16(b"") == crc16_reference(b"") == 0xFFFF


def test_swap_bytes() -> None:
    assert swap_bytes(0x1234) == 0x3412
    assert swap_bytes(swap_bytes(0xBEEF)) == 0xBEEF


def test_inputs_past_the_planned_fold_sizes_still_give_the_crc() -> None:
    # Before: KeyError (no fold plan past 256 KiB), an exception no caller expects.
    data = bytes(range(256)) * 1100  # 281,600 bytes
    assert crc16(data) == crc16_reference(data)

"""packets.py: whole frames <-> Packet for callers that hold every byte (tools, tests, simulator)."""

from pathlib import Path

import pytest

from hj212gw.protocol.decoder import CrcPolicy
from hj212gw.protocol.errors import CrcMismatch, LengthFieldError, NoFrame
from hj212gw.protocol.framing import Garbage, encode_frame
from hj212gw.protocol.packets import encode_packet, iter_packets, parse_packet
from tests.protocol.conftest import FIRST, GOOD, fixture_id

STANDARD = FIRST.read_bytes()
WRONG_CRC = STANDARD[:-6] + b"0000\r\n"


def test_parse_packet_checks_and_decodes_one_frame() -> None:
    packet = parse_packet(STANDARD)
    assert (packet.cn, packet.mn, packet.tolerances) == ("1062", "010000A8900016F000169DC0", ())


def test_parse_packet_raises_the_typed_error_of_the_first_defect() -> None:
    with pytest.raises(CrcMismatch):
        parse_packet(WRONG_CRC)
    with pytest.raises(Garbage):
        parse_packet(b"hello" + STANDARD)
    with pytest.raises(LengthFieldError):
        parse_packet(b"##01a1" + STANDARD[6:])
    with pytest.raises(NoFrame) as caught:
        parse_packet(b"\r\n")
    assert caught.value.reason == "no_frame"


def test_parse_packet_takes_the_crc_policy() -> None:
    packet = parse_packet(WRONG_CRC, CrcPolicy(mode="lenient"))
    assert packet.tolerances == ("crc_not_checked",)


def test_parse_packet_takes_a_frame_without_its_tail() -> None:
    """The bytes are all there is: the end of the input closes a frame that lacks CR LF."""
    assert parse_packet(STANDARD[:-2]).tolerances == ("missing_tail",)


def test_iter_packets_yields_each_in_order_and_raises_at_a_bad_one() -> None:
    second = encode_frame(STANDARD[6:-6].replace(b"QN=20160801085857223", b"QN=20160801085857224"))
    assert [p.qn for p in iter_packets(STANDARD + second)] == ["20160801085857223", "20160801085857224"]
    packets = iter_packets(STANDARD + WRONG_CRC)
    assert next(packets).qn == "20160801085857223"
    with pytest.raises(CrcMismatch):
        next(packets)


@pytest.mark.parametrize("path", GOOD, ids=fixture_id)
def test_encode_packet_reverses_parse_packet(path: Path) -> None:
    wire = path.read_bytes()
    packet = parse_packet(wire, CrcPolicy(mode="lenient"))
    assert parse_packet(encode_packet(packet)).fields == packet.fields
    if not packet.tolerances and not packet.encrypted:
        assert encode_packet(packet) == wire

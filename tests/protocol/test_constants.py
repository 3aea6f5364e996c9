"""constants.py: the standard's tables as enums, whose values are the codes as on the wire."""

from hj212gw.protocol.constants import Cn, DataFlag, PacketFlag, ProtocolVersion, QnRtn


def test_enum_values_are_the_wire_codes() -> None:
    assert Cn.MINUTE_DATA == "2051" and Cn.HEARTBEAT == "9015"
    assert DataFlag.MAINTENANCE == "M" and QnRtn.CRC_ERROR == 9
    assert PacketFlag.ACK_REQUESTED == 1 and PacketFlag.SPLIT == 2
    assert ProtocolVersion.HJ212_2025.label == "2025"

"""codes.py and constants.py: the factor table, 2005 mapping, and enum values as on the wire."""

from hj212gw.protocol.codes import CODE_2005_TO_2017, FACTORS, code_2017_for, factor_for
from hj212gw.protocol.constants import Cn, DataFlag, PacketFlag, ProtocolVersion, QnRtn


def test_2005_codes_map_to_2017_codes() -> None:
    assert code_2017_for("011") == "w01018"
    assert code_2017_for("B01") == "w00000"
    assert code_2017_for("w01018") is None
    assert all(code in FACTORS for code in CODE_2005_TO_2017.values())


def test_factor_lookup_by_either_code() -> None:
    cod = factor_for("w01018")
    assert cod is not None and cod.name_zh == "化学需氧量" and cod.unit == "毫克/升"
    assert factor_for("011") == cod
    assert factor_for("zz") is None


def test_enum_values_are_the_wire_codes() -> None:
    assert Cn.MINUTE_DATA == "2051" and Cn.HEARTBEAT == "9015"
    assert DataFlag.MAINTENANCE == "M" and QnRtn.CRC_ERROR == 9
    assert PacketFlag.ACK_REQUESTED == 1 and PacketFlag.SPLIT == 2
    assert ProtocolVersion.HJ212_2025.label == "2025"

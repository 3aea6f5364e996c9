"""names.py: every code the enums know has a human name (what `hj212gw check` prints)."""

from hj212gw.protocol.constants import Cn, DataFlag, ExeRtn, QnRtn, St
from hj212gw.protocol.names import CN_NAMES, DATA_FLAG_NAMES, EXE_RTN_NAMES, QN_RTN_NAMES, ST_NAMES


def test_every_enum_code_has_a_name() -> None:
    assert set(QN_RTN_NAMES) == {int(code) for code in QnRtn}
    assert set(EXE_RTN_NAMES) == {int(code) for code in ExeRtn}
    assert {str(code) for code in DataFlag} <= set(DATA_FLAG_NAMES)
    assert {str(code) for code in St} <= set(ST_NAMES)
    assert {str(code) for code in Cn} - set(CN_NAMES) == set()


def test_names_come_in_chinese_and_english() -> None:
    for table in (CN_NAMES, ST_NAMES, DATA_FLAG_NAMES):
        assert all(zh and en and not zh.isascii() and en.isascii() for zh, en in table.values())

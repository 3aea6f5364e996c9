"""factors.py: the factor table and the 2005 -> 2017 code mapping."""

from hj212gw.protocol.factors import CODE_2005_TO_2017, FACTORS, code_2017_for, factor_for


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

"""limits.py: each width's standard, tolerated and hard-capped lengths; field counts; the errors."""

import pytest

from hj212gw.protocol import limits
from hj212gw.protocol.constants import QnRtn
from hj212gw.protocol.cp import parse_cp, tokenize_cp
from hj212gw.protocol.errors import BadFieldValue, FieldTooLong, SegmentError, TooManyFields
from hj212gw.protocol.framing import Tolerance
from hj212gw.protocol.segment import parse_header, parse_segment

HEADER = {"QN": "20240315101000001", "ST": "32", "PW": "123456", "MN": "010000A8900016F000169DC0"}


def segment(cp: str = "DataTime=20240315100000;w01018-Rtd=1", **header: str) -> bytes:
    values = {**HEADER, **header}
    head = f"QN={values['QN']};ST={values['ST']};CN=2011;PW={values['PW']};MN={values['MN']};Flag=4;"
    return (head + "CP=&&" + cp + "&&").encode()


@pytest.mark.parametrize(
    ("name", "width"), [("QN", limits.QN), ("ST", limits.ST), ("PW", limits.PW), ("MN", limits.MN)]
)
def test_identity_fields_standard_tolerated_and_too_long(name: str, width: limits.Width) -> None:
    assert width.tolerance not in parse_segment(segment(**{name: "7" * width.standard})).tolerances
    assert width.tolerance in parse_segment(segment(**{name: "7" * (width.standard + 1)})).tolerances
    assert width.tolerance in parse_segment(segment(**{name: "7" * width.hard})).tolerances
    with pytest.raises(FieldTooLong) as caught:
        parse_segment(segment(**{name: "7" * (width.hard + 1)}))
    assert (caught.value.name, caught.value.length, caught.value.limit) == (name, width.hard + 1, width.hard)


def test_factor_code_standard_tolerated_and_too_long() -> None:
    def tolerances(code: str) -> tuple[str, ...]:
        return parse_segment(segment(f"DataTime=20240315100000;{code}-Rtd=1")).tolerances

    assert Tolerance.LONG_FACTOR_CODE not in tolerances("a" * 6)
    assert Tolerance.LONG_FACTOR_CODE in tolerances("a" * 7) and Tolerance.LONG_FACTOR_CODE in tolerances("a" * 24)
    with pytest.raises(FieldTooLong, match="factor code"):
        tolerances("a" * 25)


def test_cp_names_and_values_are_capped_on_both_tokenizer_paths() -> None:
    for log in ("", ";i12001-Info=//ok//"):  # the fast path, then the log-text path
        parse_cp("2011", f"x{'y' * 47}=1;w01018-Rtd={'9' * 128}{log}")
        with pytest.raises(FieldTooLong, match="CP field name"):
            parse_cp("2011", f"x{'y' * 48}=1{log}")
        with pytest.raises(FieldTooLong, match="CP value"):
            parse_cp("2011", f"w01018-Rtd={'9' * 129}{log}")


def test_log_text_has_its_own_cap() -> None:
    assert tokenize_cp("i12001-Info=//" + "x" * 1020 + "//")[0][1].startswith("//x")
    with pytest.raises(FieldTooLong):
        tokenize_cp("i12001-Info=//" + "x" * 1021 + "//")


def test_field_and_factor_counts() -> None:
    assert len(tokenize_cp(";".join(f"k{i}=1" for i in range(limits.MAX_CP_FIELDS)))) == limits.MAX_CP_FIELDS
    with pytest.raises(TooManyFields):
        parse_cp("2011", ";".join(f"k{i}=1" for i in range(limits.MAX_CP_FIELDS + 1)))
    parse_cp("2051", ";".join(f"f{i}-Avg=1" for i in range(limits.MAX_FACTORS)))
    with pytest.raises(TooManyFields, match="factor codes"):
        parse_cp("2051", ";".join(f"f{i}-Avg=1" for i in range(limits.MAX_FACTORS + 1)))


def test_header_counts_and_other_fields() -> None:
    fifteen = "".join(f"X{i}=1;" for i in range(limits.MAX_HEADER_FIELDS - 1))
    assert len(parse_header("QN=1;" + fifteen)) == limits.MAX_HEADER_FIELDS
    with pytest.raises(TooManyFields):
        parse_header("QN=1;X=2;" + fifteen)
    assert parse_header("XX=" + "x" * 128 + ";")[0][1] == "x" * 128
    for header in ("XX=" + "x" * 129 + ";", "X" * 129 + "=1;", "XX=" + "x" * 129):  # the slow path too
        with pytest.raises(FieldTooLong):
            parse_header(header)


def test_an_mn_with_a_control_character_is_rejected() -> None:
    with pytest.raises(BadFieldValue, match="MN"):
        parse_segment(segment(MN="010000A8900016F000169DC\x01"))
    assert parse_segment(segment(MN="")).mn == ""  # a 2025 logger before activation


def test_names_cache_stays_bounded() -> None:
    for i in range(limits._NAMES_CACHE_SIZE + 10):
        limits.check_cp_names((f"k{i}-Rtd",))
    assert len(limits._NAMES_CHECKED) <= limits._NAMES_CACHE_SIZE


def test_packets_of_one_layout_share_one_names_tuple() -> None:
    # Built twice from the text, as two packets of one DAS are: equal tuples of distinct strings.
    cp = "DataTime=20240315100000;w01018-Avg=1.5,w01018-Flag=N;a34013-Avg=2.5,a34013-Flag=N"
    first, second = parse_cp("2051", cp), parse_cp("2051", cp.replace("1.5", "1.6"))
    assert first.names == second.names == ("DataTime", "w01018-Avg", "w01018-Flag", "a34013-Avg", "a34013-Flag")
    assert first.names is second.names  # the row-layout cache then finds it by identity
    assert limits.checked_cp_names(tuple(first.names)) == ((), first.names)


def test_errors_are_segment_errors_with_reason_and_qn_rtn() -> None:
    assert issubclass(FieldTooLong, SegmentError) and issubclass(TooManyFields, SegmentError)
    assert (FieldTooLong.reason, TooManyFields.reason) == ("field_too_long", "too_many_fields")
    assert FieldTooLong.qn_rtn is TooManyFields.qn_rtn is QnRtn.UNKNOWN

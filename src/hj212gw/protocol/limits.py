"""Field widths: how long each part of a data segment may be, and how many parts it may have.

HJ 212-2017 Table 3 (header) and Table 4 (CP) give each field a width. A field longer than its
width but within its hard cap is accepted and named (a `Tolerance`: real devices send 24-character
PWs, 3-character STs, 9-character factor codes); a field beyond its hard cap is a `FieldTooLong`
and too many fields a `TooManyFields`, however long the segment may be. The caps keep what a
device sends within what storage indexes (MN and factor code are part of the `data` primary key)
and memory take. Imports only the protocol package; `segment` and `cp` apply these checks.
"""

from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple

from hj212gw.protocol.errors import BadFieldValue, FieldTooLong, TooManyFields
from hj212gw.protocol.framing import Tolerance


class Width(NamedTuple):
    """The standard's width of a field, in characters, and the hard cap past which it is rejected."""

    standard: int
    hard: int
    tolerance: Tolerance  # named on the packet when standard < length <= hard


# Table 3 counts `KEY=` in its lengths; these are the values' own widths.
QN: Final = Width(17, 24, Tolerance.LONG_QN)  # YYYYMMDDhhmmsszzz
ST: Final = Width(2, 8, Tolerance.LONG_ST)
PW: Final = Width(6, 32, Tolerance.LONG_PW)
MN: Final = Width(24, 40, Tolerance.LONG_MN)  # 2005 MNs have 14; 40 still takes a 36-character UUID
FACTOR_CODE: Final = Width(6, 24, Tolerance.LONG_FACTOR_CODE)  # a21026, w01018; 2005: B01, 011
_IDENTITY: Final = {"QN": QN, "ST": ST, "PW": PW, "MN": MN}
MAX_HEADER_FIELDS: Final = 16  # Table 3 names 9 (QN ST CN PW MN Flag PNUM PNO RF)
MAX_HEADER_TOKEN: Final = 128  # the name or value of any other header field
MAX_CP_KEY: Final = 48  # `code-Suffix`: a capped code, `-`, a suffix (SampleTime is the longest)
MAX_CP_VALUE: Final = 128  # Table 4's widest is C24 (SN); N14.2 takes 18
MAX_LOG_TEXT: Final = 1024  # `//…//` (the standard: under 890 bytes)
MAX_CP_FIELDS: Final = 2048  # a standard CP (950 bytes) has about 300; split transfers join more
MAX_FACTORS: Final = 512  # a VOC site reports about 120


def check_header(fields: Sequence[tuple[str, str]], longest: int) -> None:
    """Count and size of the header fields; `longest` is the longest name or value among them.

    Raises:
        TooManyFields: more than MAX_HEADER_FIELDS.
        FieldTooLong: a name or value over MAX_HEADER_TOKEN.
    """
    if len(fields) > MAX_HEADER_FIELDS:
        raise TooManyFields("header fields", len(fields), MAX_HEADER_FIELDS)
    if longest > MAX_HEADER_TOKEN:
        for name, value in fields:
            if len(name) > MAX_HEADER_TOKEN:
                raise FieldTooLong("header field name", name, MAX_HEADER_TOKEN)
            if len(value) > MAX_HEADER_TOKEN:
                width = _IDENTITY.get(name)
                raise FieldTooLong(name, value, MAX_HEADER_TOKEN if width is None else width.hard)


def check_identity(qn: str | None, st: str | None, pw: str | None, mn: str | None, found: list[str]) -> None:
    """QN, ST, PW and MN against their widths (tolerances appended to `found`); MN must be printable.

    Raises:
        FieldTooLong: one of them over its hard cap.
        BadFieldValue: an MN with a control character (NUL included): cleaning it would change
            which device the data belongs to.
    """
    # One comparison each on the usual path (runs for every packet); `None` counts as 0.
    if (
        len(qn or "") > QN.standard
        or len(st or "") > ST.standard
        or len(pw or "") > PW.standard
        or len(mn or "") > MN.standard
    ):
        for name, value, width in (("QN", qn, QN), ("ST", st, ST), ("PW", pw, PW), ("MN", mn, MN)):
            if value is not None and len(value) > width.standard:
                if len(value) > width.hard:
                    raise FieldTooLong(name, value, width.hard)
                found.append(width.tolerance)
    if mn and not mn.isprintable():
        raise BadFieldValue("MN", mn, "printable ASCII, no control characters")


def check_cp_values(values: Sequence[str]) -> None:
    """Count and size of a CP's values (log text `//…//` has its own cap).

    Raises:
        TooManyFields: more than MAX_CP_FIELDS.
        FieldTooLong: a value over its cap.
    """
    if len(values) > MAX_CP_FIELDS:
        raise TooManyFields("CP fields", len(values), MAX_CP_FIELDS)
    if values and len(max(values, key=len)) > MAX_CP_VALUE:
        for value in values:
            if len(value) > MAX_CP_VALUE and not (value.startswith("//") and len(value) <= MAX_LOG_TEXT):
                raise FieldTooLong("CP value", value, MAX_LOG_TEXT if value.startswith("//") else MAX_CP_VALUE)


_NAMES_CHECKED: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...]]] = {}
_NAMES_CACHE_SIZE: Final = 1024  # layouts come from devices: a misbehaving one must not grow it


def check_cp_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """The tolerances a CP's field names need (long factor codes); cached per name layout, since
    a DAS sends the same names packet after packet.

    Raises:
        FieldTooLong: a name or factor code over its cap.
        TooManyFields: more than MAX_FACTORS factor codes.
    """
    return checked_cp_names(names)[0]


def checked_cp_names(names: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`check_cp_names`, and the one tuple of these names the cache keeps: later caches keyed by
    the names (ingest's row layouts) then find it by identity instead of comparing every name.

    Raises:
        FieldTooLong, TooManyFields: as `check_cp_names`.
    """
    known = _NAMES_CHECKED.get(names)
    if known is None:
        known = (_names_tolerances(names), names)
        if len(_NAMES_CHECKED) >= _NAMES_CACHE_SIZE:
            _NAMES_CHECKED.clear()
        _NAMES_CHECKED[names] = known
    return known


def _names_tolerances(names: Iterable[str]) -> tuple[str, ...]:
    codes: set[str] = set()
    long_code = False
    for name in names:
        if len(name) > MAX_CP_KEY:
            raise FieldTooLong("CP field name", name, MAX_CP_KEY)
        code, dash, _suffix = name.partition("-")
        if not dash:
            continue
        if len(code) > FACTOR_CODE.standard:
            if len(code) > FACTOR_CODE.hard:
                raise FieldTooLong("factor code", code, FACTOR_CODE.hard)
            long_code = True
        codes.add(code)
    if len(codes) > MAX_FACTORS:
        raise TooManyFields("factor codes in CP", len(codes), MAX_FACTORS)
    return (FACTOR_CODE.tolerance,) if long_code else ()

"""The CP data area (HJ 212-2017 §6): tokenizing, grouping by factor, and one typed model per CN.

`parse_cp(cn, text)` returns a frozen model; an unknown CN gets `GenericCp`, which keeps every
item. Values stay text as sent; typed accessors convert on demand. Items are tokenized on both
`;` and `,` (the standard's own examples mix them, §6), except inside `//…//` log text, in time
linear in the text. Names, values and their number are bounded by protocol.limits.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hj212gw.protocol.constants import DATA_CNS
from hj212gw.protocol.errors import BadCpItem
from hj212gw.protocol.factors import CODE_2005_TO_2017
from hj212gw.protocol.limits import check_cp_names, check_cp_values, checked_cp_names
from hj212gw.protocol.models import Reading

Items = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class CpData:
    """The CP content as sent; the base of all CP models. `items` tokenizes it on demand."""

    text: str

    @property
    def items(self) -> Items:
        """Every `name=value` item, in order (computed from `text`; not on the hot path)."""
        return tokenize_cp(self.text)

    def get(self, name: str) -> str | None:
        for key, value in self.items:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class GenericCp(CpData):
    """A CN we have no model for: kept whole, never rejected."""


@dataclass(frozen=True, slots=True)
class DataCp(CpData):
    """Uploads with per-factor values: 2011, 2013, 2021, 2031, 2041, 2051, 2052, 2061, 2062,
    2111, 2005's 2072/2073 and 8013.

    `fields` maps every item's full name (`a21026-Avg`, `DataTime`) to its text: built with a
    handful of C-level string operations, it is all the hot path needs. `readings` groups it per
    factor and `extras` lists the non-factor items besides DataTime; both are computed on access.
    """

    data_time: str | None
    fields: dict[str, str]
    names: tuple[str, ...] = ()  # the keys of `fields` in order, as a tuple (layout caches are keyed by it)

    def value(self, code: str, suffix: str) -> str | None:
        """The text of one field, e.g. `value("a21026", "Avg")`."""
        return self.fields.get(f"{code}-{suffix}")

    @property
    def readings(self) -> tuple[Reading, ...]:
        return _readings(self.groups())

    def groups(self) -> dict[str, dict[str, str]]:
        """Factor code -> {suffix: text}, in the order sent (one pass over `fields`)."""
        return _group(self.fields.items())

    @property
    def extras(self) -> Items:
        return tuple((k, v) for k, v in self.fields.items() if "-" not in k and k != "DataTime")


@dataclass(frozen=True, slots=True)
class HistoryRequestCp(CpData):
    """A platform fetch of history (2011 (ST 44), 2013, 2031, 2041, 2051, 2061, 2062) or logs."""

    begin_time: str | None
    end_time: str | None
    pol_id: str | None = None


@dataclass(frozen=True, slots=True)
class SiteInfoCp(CpData):
    """3019/3020/3021 site information: `DataTime;[PolId;]iXXXXX-Info=…` (log text kept whole)."""

    data_time: str | None
    pol_id: str | None
    info_id: str | None
    infos: tuple[Reading, ...]


@dataclass(frozen=True, slots=True)
class RestartCp(CpData):
    """2081: the DAS's power-on time."""

    data_time: str | None
    restart_time: str | None


@dataclass(frozen=True, slots=True)
class RequestReplyCp(CpData):
    """9011: QnRtn; a 2005 reply carries the answered QN inside CP."""

    qn_rtn: int | None
    qn: str | None = None


@dataclass(frozen=True, slots=True)
class ExecutionResultCp(CpData):
    """9012: ExeRtn; a 2005 reply carries the answered QN inside CP."""

    exe_rtn: int | None
    qn: str | None = None


@dataclass(frozen=True, slots=True)
class EmptyCp(CpData):
    """9013, 9014, 9015 heartbeats, 2012/2022 stops and parameterless gets. 2005 may put a QN here."""

    qn: str | None = None


@dataclass(frozen=True, slots=True)
class SystemTimeCp(CpData):
    """1011 (time upload or get) and 1012 (set time)."""

    pol_id: str | None
    system_time: str | None


@dataclass(frozen=True, slots=True)
class TimeoutsCp(CpData):
    """1000: OverTime (s) and ReCount."""

    over_time: int | None
    re_count: int | None


@dataclass(frozen=True, slots=True)
class IntervalCp(CpData):
    """1061/1062 RtdInterval (s) and 1063/1064 MinInterval (min)."""

    rtd_interval: int | None
    min_interval: int | None


@dataclass(frozen=True, slots=True)
class NewPasswordCp(CpData):
    """1072: NewPW."""

    new_pw: str | None


@dataclass(frozen=True, slots=True)
class PolIdCommandCp(CpData):
    """1013 and control commands 3011-3018, 3022, 3024 that address one instrument by PolId."""

    pol_id: str | None
    calibration_type: str | None = None
    vase_no: str | None = None
    data_time: str | None = None


@dataclass(frozen=True, slots=True)
class HardwareSerialCp(CpData):
    """2025 CN 1001: logger id, CPU id and MACs (i23005-i23008)."""

    logger_id: str | None
    cpu_id: str | None
    mac1: str | None
    mac2: str | None


@dataclass(frozen=True, slots=True)
class SetMnCp(CpData):
    """2025 CN 1002: the platform assigns the MN (header) to the logger named here."""

    logger_id: str | None


@dataclass(frozen=True, slots=True)
class KeyExchangeCp(CpData):
    """2025 CN 1014: SKCreateTime, and NewSK when the platform sends a key."""

    sk_create_time: str | None
    new_sk: str | None


_POLID_CNS = frozenset({"1013", "3011", "3012", "3013", "3014", "3015", "3016", "3017", "3018", "3022", "3024"})
_EMPTY_CNS = frozenset({"9013", "9014", "9015", "9021", "2012", "2022", "1061", "1063"})
_INFO_CNS = frozenset({"3019", "3020", "3021"})


def tokenize_cp(text: str) -> Items:
    """`a=1;b=2,c=3` -> ((a, 1), (b, 2), (c, 3)); `//…//` log text may contain `;` and `,`.

    Raises:
        BadCpItem: a token without `=`.
        TooManyFields, FieldTooLong: more items, or a longer value, than protocol.limits allows.
    """
    if "//" in text:
        items = _tokenize_with_logs(text)
    else:
        items = []
        for token in text.replace(",", ";").split(";"):
            name, eq, value = token.partition("=")
            if not eq:
                if token.strip():
                    raise BadCpItem(token)
                continue
            items.append((name, value))
    check_cp_values([value for _name, value in items])
    return tuple(items)


def _tokenize_with_logs(text: str) -> list[tuple[str, str]]:
    """Items of a CP with `//…//` log text. Linear: each search starts where the last one ended,
    and the next `;` and `,` are remembered until the scan passes them."""
    items: list[tuple[str, str]] = []
    size = len(text)
    pos = 0
    semicolon = comma = -1
    while pos < size:
        eq = text.find("=", pos)
        if eq < 0:
            if text[pos:].strip(";, "):
                raise BadCpItem(text[pos:])
            break
        name = text[pos:eq].strip(";, ")
        if text.startswith("//", eq + 1):
            close = text.find("//", eq + 3)
            end = size if close < 0 else close + 2
        else:
            if semicolon < eq:
                semicolon = text.find(";", eq)
                semicolon = size if semicolon < 0 else semicolon
            if comma < eq:
                comma = text.find(",", eq)
                comma = size if comma < 0 else comma
            end = min(semicolon, comma)
        if not name or ";" in name or "," in name:
            raise BadCpItem(text[pos:end])
        items.append((name, text[eq + 1 : end]))
        pos = end + 1
    return items


def _group(pairs: Iterable[tuple[str, str]]) -> dict[str, dict[str, str]]:
    """`code-Suffix=value` pairs -> {code: {Suffix: value}}, in the order sent; others skipped."""
    groups: dict[str, dict[str, str]] = {}
    for name, value in pairs:
        code, dash, suffix = name.partition("-")
        if dash:
            values = groups.get(code)
            if values is None:
                values = groups[code] = {}
            values[suffix] = value
    return groups


def _readings(groups: dict[str, dict[str, str]]) -> tuple[Reading, ...]:
    mapping = CODE_2005_TO_2017
    return tuple([Reading(code, values, mapping.get(code)) for code, values in groups.items()])


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def parse_cp(cn: str, text: str, found: list[str] | None = None) -> CpData:
    """The typed model of a CP's content for command `cn`.

    `found`, when given, collects the tolerances the content needed (long factor codes).

    Raises:
        BadCpItem: an item is not `name=value`.
        TooManyFields, FieldTooLong: over the limits of protocol.limits.
    """
    if cn in DATA_CNS:
        fields = _fields_fast(text)
        if fields is None:
            fields = dict(tokenize_cp(text))
        tolerances, names = checked_cp_names(tuple(fields))
        if tolerances and found is not None:
            found.extend(tolerances)
        if "DataTime" in fields or not ("BeginTime" in fields or "EndTime" in fields):
            return DataCp(text, fields.get("DataTime"), fields, names)
    items = tokenize_cp(text)
    named = dict(items)
    if cn not in DATA_CNS:
        tolerances = check_cp_names(tuple(named))
        if tolerances and found is not None:
            found.extend(tolerances)
    get = named.get
    if ("BeginTime" in named or "EndTime" in named) and "DataTime" not in named:
        return HistoryRequestCp(text, get("BeginTime"), get("EndTime"), get("PolId"))
    if cn in _INFO_CNS:
        return SiteInfoCp(text, get("DataTime"), get("PolId"), get("InfoId"), _readings(_group(items)))
    return _parse_command_cp(cn, text, items, get)


def _fields_fast(text: str) -> dict[str, str] | None:
    """`dict(tokenize_cp(text))` with C-level string operations when every token is exactly
    `name=value` with no empty token; None otherwise (log text, stray separators): use the slow path.

    Raises:
        TooManyFields, FieldTooLong: over the limits of protocol.limits.
    """
    if "//" in text or not text:
        return None
    flat = text.replace(",", ";").replace("=", ";").split(";")
    if len(flat) != 2 * text.count("="):
        return None
    values = flat[1::2]
    check_cp_values(values)
    return dict(zip(flat[0::2], values, strict=True))


def _parse_command_cp(cn: str, text: str, items: Items, get: Callable[[str], str | None]) -> CpData:
    match cn:
        case "2081":
            return RestartCp(text, get("DataTime"), get("RestartTime"))
        case "9011":
            return RequestReplyCp(text, _int(get("QnRtn")), get("QN"))
        case "9012":
            return ExecutionResultCp(text, _int(get("ExeRtn")), get("QN"))
        case "1011" | "1012":
            return SystemTimeCp(text, get("PolId"), get("SystemTime"))
        case "1000":
            return TimeoutsCp(text, _int(get("OverTime")), _int(get("ReCount")))
        case "1061" | "1062" | "1063" | "1064" if items:
            return IntervalCp(text, _int(get("RtdInterval")), _int(get("MinInterval")))
        case "1072":
            return NewPasswordCp(text, get("NewPW"))
        case "1001" if get("i23005-Info") is not None or get("i23006-Info") is not None:
            return HardwareSerialCp(
                text, get("i23005-Info"), get("i23006-Info"), get("i23007-Info"), get("i23008-Info")
            )
        case "1002":
            return SetMnCp(text, get("i23005-Info"))
        case "1014":
            return KeyExchangeCp(text, get("SKCreateTime"), get("NewSK"))
    if cn in _POLID_CNS:
        return PolIdCommandCp(text, get("PolId"), get("CalibrationType"), get("VaseNo"), get("DataTime"))
    if cn in _EMPTY_CNS or not items:
        return EmptyCp(text, get("QN"))
    return GenericCp(text)


def encode_items(items: Items, separators: str = ";") -> str:
    """`name=value` items joined with `;` (HJ 212-2017 §6 recommends `;` between items)."""
    return separators.join(f"{name}={value}" for name, value in items)


def encode_readings(data_time: str | None, readings: tuple[Reading, ...]) -> str:
    """`DataTime=…;code-Suffix=v,code-Suffix=v;…`: one `;`-item per factor, `,` within it."""
    parts = [f"DataTime={data_time}"] if data_time is not None else []
    for reading in readings:
        parts.append(",".join(f"{reading.code}-{suffix}={value}" for suffix, value in reading.values.items()))
    return ";".join(parts)

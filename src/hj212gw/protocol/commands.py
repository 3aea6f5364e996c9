"""The catalog of platform->DAS commands: every request CN of HJ 212 2005/2017/2025 the gateway sends.

Each `CommandSpec` names a command (`set_time`, `fetch_hour_history`, ...), its CN, the CP items
it takes with their rules (HJ 212-2017 Table 9 and §7.4, 2025 §1.5), and how the DAS answers:

    answer     | the DAS sends                                                   | e.g.
    -----------+-----------------------------------------------------------------+------------------
    "result"   | 9011 QnRtn, then 9012 ExeRtn                                     | 1000, 1012, 3011
    "response" | 9011, one packet of the request's CN with the request's QN, 9012 | 1011, 1061, 3019
    "history"  | 9011, 0..n packets of `answer_cn`, each with a new QN, 9012     | 2051, 2061, 3020
    "notify"   | 9013 only (a notification: no 9011, no 9012)                     | 2012, 2022

`check_params` turns what an operator typed into the CP items of the request, or raises a
`CommandError` saying which item is wrong; `build_command` makes the frame with
`builders.build_request`. Pure: no clock (a 1012 without `SystemTime` is stamped by the caller).
The 2005-only sets (1022, 1032, 1042) take their CP items as given, checked for CP syntax only:
their field names are not in the spec digest.
"""

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from hj212gw.protocol.builders import Target, build_request
from hj212gw.protocol.cp import Items

Answer = Literal["result", "response", "history", "notify"]

V2005, V2017, V2025 = "2005", "2017", "2025"
ALL_VERSIONS: Final = frozenset({V2005, V2017, V2025})
SINCE_2017: Final = frozenset({V2017, V2025})
ONLY_2005: Final = frozenset({V2005})
ONLY_2017: Final = frozenset({V2017})
ONLY_2025: Final = frozenset({V2025})
ALL: Final = ALL_VERSIONS

MIN_INTERVALS: Final = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30)  # HJ 212-2017 §6.3.2: divisors of 60
# A CP value may not contain the separators of the CP grammar (§6.1) nor control characters.
_CP_VALUE = re.compile(r"[^;,&=\x00-\x1f]{1,200}")
_CP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,39}")
_POL_ID = re.compile(r"[A-Za-z0-9]{2,12}")  # w01018, a21026, 2005's 011 / B01
_HJ_TIME = re.compile(r"\d{14}")  # YYYYMMDDhhmmss (§6.1 Table 4)


class CommandError(ValueError):
    """A command the catalog cannot send as asked; `reason` is the metric label and API error."""

    reason = "bad_command"


class UnknownCommand(CommandError):
    reason = "unknown_command"


class BadCommandParams(CommandError):
    reason = "bad_params"


# ---- rules for one CP item ----------------------------------------------------------------------


Check = Callable[[str], str | None]  # None when the value is right, else what is wrong


def _pattern(regex: re.Pattern[str], what: str) -> Check:
    return lambda value: None if regex.fullmatch(value) else what


def _int_range(low: int, high: int) -> Check:
    def check(value: str) -> str | None:
        ok = value.isascii() and value.isdigit() and low <= int(value) <= high
        return None if ok else f"an integer from {low} to {high}"

    return check


def _one_of(*choices: int) -> Check:
    allowed = {str(c) for c in choices}
    return lambda value: None if value in allowed else f"one of {', '.join(map(str, choices))}"


def _hj_time(value: str) -> str | None:
    if not _HJ_TIME.fullmatch(value):
        return "YYYYMMDDhhmmss (14 digits)"
    month, day, hour, minute, second = (int(value[i : i + 2]) for i in (4, 6, 8, 10, 12))
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 59):
        return "YYYYMMDDhhmmss with a valid month, day and time"
    return None


def _number(value: str) -> str | None:
    try:
        float(value)
    except ValueError:
        return "a decimal number"
    return None if _CP_VALUE.fullmatch(value) and value.lower() not in ("nan", "inf", "-inf") else "a decimal number"


_TEXT = _pattern(_CP_VALUE, "1-200 characters without ; , & = or control characters")
_POL = _pattern(_POL_ID, "a factor code of 2-12 letters and digits (w01018)")


@dataclass(frozen=True, slots=True)
class Param:
    """One CP item of a request. `secret`: stored for sending, masked wherever it is shown."""

    name: str
    check: Check
    required: bool = True
    secret: bool = False
    help: str = ""


def _pol(required: bool = True) -> Param:
    return Param("PolId", _POL, required, help="instrument factor code")


_RANGE = (
    Param("BeginTime", _hj_time, help="first period start, YYYYMMDDhhmmss device time"),
    Param("EndTime", _hj_time, help="last period start (inclusive)"),
)


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One platform->DAS command. `free_params`: CP items taken as given (2005 sets)."""

    name: str
    cn: str
    title: str
    params: tuple[Param, ...] = ()
    answer: Answer = "result"
    answer_cn: str | None = None  # the CN the data comes on ("history"; "response": `cn`)
    versions: frozenset[str] = SINCE_2017
    free_params: bool = False
    encode: Callable[[Items], Items] | None = field(default=None, repr=False)

    @property
    def expects_result(self) -> bool:
        """Whether a 9012 ends it (all but notifications)."""
        return self.answer != "notify"

    @property
    def data_cn(self) -> str | None:
        """The CN of the packets that answer it, if any."""
        if self.answer == "history":
            return self.answer_cn or self.cn
        return self.cn if self.answer == "response" else None

    def secret_names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.params if p.secret)


def _site_parameter(items: Items) -> Items:
    """3021: `PolId;InfoId=i13004;i13004-Info=168.0` from PolId, InfoId and Info."""
    named = dict(items)
    out = [(k, v) for k, v in items if k != "Info"]
    return (*out, (f"{named['InfoId']}-Info", named["Info"]))


_INFO_ID = _pattern(re.compile(r"i\d{5}"), "an information code i + 5 digits (i12001)")

CATALOG: Final[tuple[CommandSpec, ...]] = (
    CommandSpec("set_timeouts", "1000", "set OverTime and ReCount", (
        Param("OverTime", _int_range(1, 99), help="seconds"), Param("ReCount", _int_range(1, 99))), versions=ALL),
    CommandSpec("get_time", "1011", "get the DAS (or instrument) time", (_pol(False),), "response", versions=ALL),
    CommandSpec("set_time", "1012", "set the DAS (or instrument) time; without SystemTime: the gateway's clock", (
        _pol(False), Param("SystemTime", _hj_time, required=False, help="device time; default: now")),
        versions=ALL),
    CommandSpec("set_key", "1014", "send a new SM4 key (2025)", (
        Param("SKCreateTime", _pattern(re.compile(r"\d{17}"), "17 digits")),
        Param("NewSK", _pattern(re.compile(r"[!-~]{16}"), "16 printable characters"), secret=True)),
        versions=ONLY_2025),
    CommandSpec("get_alarm_limits", "1021", "get alarm limits (2005)", (_pol(False),), "response", versions=ONLY_2005),
    CommandSpec("set_alarm_limits", "1022", "set alarm limits (2005)", versions=ONLY_2005, free_params=True),
    CommandSpec("get_platform_address", "1031", "get platform address (2005)", answer="response", versions=ONLY_2005),
    CommandSpec("set_platform_address", "1032", "set platform address (2005)", versions=ONLY_2005, free_params=True),
    CommandSpec("get_report_time", "1041", "get report time (2005)", answer="response", versions=ONLY_2005),
    CommandSpec("set_report_time", "1042", "set report time (2005)", versions=ONLY_2005, free_params=True),
    CommandSpec("get_rtd_interval", "1061", "get the real-time interval", answer="response", versions=ALL),
    CommandSpec("set_rtd_interval", "1062", "set the real-time interval", (
        Param("RtdInterval", _int_range(30, 3600), help="seconds"),), versions=ALL),
    CommandSpec("get_min_interval", "1063", "get the minute-data interval", answer="response"),
    CommandSpec("set_min_interval", "1064", "set the minute-data interval", (
        Param("MinInterval", _one_of(*MIN_INTERVALS), help="minutes"),)),
    CommandSpec("set_password", "1072", "set the access password", (
        Param("NewPW", _pattern(re.compile(r"[0-9A-Za-z]{6}"), "six characters 0-9 a-z A-Z"), secret=True),),
        versions=ALL),
    CommandSpec("start_realtime", "2011", "start real-time uploads", versions=ALL),
    CommandSpec("stop_realtime", "2012", "stop real-time uploads", answer="notify", versions=ALL),
    CommandSpec("fetch_raw_history", "2013", "fetch raw monitoring data (2025)", _RANGE, "history",
                versions=ONLY_2025),
    CommandSpec("start_running_state", "2021", "start running-state uploads", versions=ALL),
    CommandSpec("stop_running_state", "2022", "stop running-state uploads", answer="notify", versions=ALL),
    CommandSpec("fetch_day_history", "2031", "fetch daily data", _RANGE, "history", versions=ALL),
    CommandSpec("fetch_day_running_time", "2041", "fetch daily running time", _RANGE, "history", versions=ALL),
    CommandSpec("fetch_minute_history", "2051", "fetch minute data", _RANGE, "history", versions=ALL),
    CommandSpec("fetch_hour_history", "2061", "fetch hour data", _RANGE, "history", versions=ALL),
    CommandSpec("fetch_standard_check_history", "2062", "fetch standard-sample check data (2025)", _RANGE,
                "history", versions=ONLY_2025),
    CommandSpec("fetch_alarm_records", "2071", "fetch alarm records (2005)", _RANGE, "history", "2072",
                versions=ONLY_2005),
    CommandSpec("calibrate", "3011", "zero/span calibration", (
        _pol(), Param("CalibrationType", _one_of(0, 1), required=False, help="2025: 0 zero, 1 span")),
        versions=ALL),
    CommandSpec("sample_now", "3012", "immediate sampling", (_pol(),), versions=ALL),
    CommandSpec("start_cleaning", "3013", "start cleaning / back-blowing", (_pol(),), versions=ALL),
    CommandSpec("comparison_sampling", "3014", "comparison sampling", (_pol(),), versions=ALL),
    CommandSpec("over_limit_retention", "3015", "over-limit sample retention", answer="response"),
    CommandSpec("set_sampling_period", "3016", "set the sampling period", (
        _pol(), Param("CstartTime", _pattern(re.compile(r"([01]\d|2[0-3])[0-5]\d[0-5]\d"), "hhmmss")),
        Param("CTime", _int_range(1, 24), help="hours")), versions=ONLY_2017),
    CommandSpec("get_sampling_period", "3017", "get the sampling period", (_pol(),), "response",
                versions=ONLY_2017),
    CommandSpec("get_sample_output_time", "3018", "get the sample-output time", (_pol(),), "response"),
    CommandSpec("get_instrument_sn", "3019", "get the instrument serial number", (_pol(),), "response"),
    CommandSpec("get_site_info", "3020", "get site information (with BeginTime/EndTime: logs)", (
        _pol(False), Param("InfoId", _INFO_ID), *(Param(p.name, p.check, False, help=p.help) for p in _RANGE)),
        "history", "3020"),
    CommandSpec("set_site_parameter", "3021", "set a site parameter", (
        _pol(False), Param("InfoId", _INFO_ID), Param("Info", _TEXT, help="the value of <InfoId>-Info")),
        encode=_site_parameter),
    CommandSpec("sample_retention_task", "3022", "immediate sample-retention task (2025)", (_pol(),),
                versions=ONLY_2025),
    CommandSpec("start_standard_check", "3024", "start a standard-sample check (2025)", (_pol(),),
                versions=ONLY_2025),
)  # fmt: skip

_BY_NAME: Final = {spec.name: spec for spec in CATALOG}
_BY_CN: Final = {spec.cn: spec for spec in CATALOG}
MAX_FREE_PARAMS = 32


def find_command(cn_or_name: str) -> CommandSpec:
    """The command with this CN (`"1012"`) or name (`"set_time"`); raises UnknownCommand."""
    spec = _BY_CN.get(cn_or_name) or _BY_NAME.get(cn_or_name)
    if spec is None:
        shown = cn_or_name[:40]
        raise UnknownCommand(f"no platform command with CN or name {shown!r} (see docs/protocol.md)")
    return spec


def check_params(spec: CommandSpec, params: Mapping[str, object]) -> Items:
    """The request's CP items, in the catalog's order; raises BadCommandParams naming the item.

    Values may be given as text or integers (JSON); every other type is refused.
    """
    given = {}
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise BadCommandParams(f"{spec.name}: {name[:40]} must be text or an integer")
        given[name] = str(value)
    if spec.free_params:
        return _free_items(spec, given)
    known = {p.name for p in spec.params}
    unknown = sorted(set(given) - known)
    if unknown:
        takes = ", ".join(sorted(known)) or "no parameters"
        raise BadCommandParams(f"{spec.name} ({spec.cn}) takes {takes}; not {', '.join(u[:40] for u in unknown)}")
    items: list[tuple[str, str]] = []
    for param in spec.params:
        value = given.get(param.name)
        if value is None:
            if param.required:
                raise BadCommandParams(f"{spec.name} ({spec.cn}) needs {param.name}")
            continue
        wrong = param.check(value)
        if wrong is not None:
            raise BadCommandParams(f"{spec.name}: {param.name} must be {wrong}")
        items.append((param.name, value))
    _check_range(spec, dict(items))
    return tuple(items)


def _free_items(spec: CommandSpec, given: Mapping[str, str]) -> Items:
    if len(given) > MAX_FREE_PARAMS:
        raise BadCommandParams(f"{spec.name}: at most {MAX_FREE_PARAMS} items")
    for name, value in given.items():
        if not _CP_NAME.fullmatch(name) or not _CP_VALUE.fullmatch(value):
            raise BadCommandParams(f"{spec.name}: {name[:40]!r}={value[:40]!r} is not a CP item (name=value, no ;,&=)")
    return tuple(given.items())


def _check_range(spec: CommandSpec, items: Mapping[str, str]) -> None:
    begin, end = items.get("BeginTime"), items.get("EndTime")
    if (begin is None) != (end is None):
        raise BadCommandParams(f"{spec.name}: BeginTime and EndTime go together")
    if begin is not None and end is not None and begin > end:
        raise BadCommandParams(f"{spec.name}: BeginTime {begin} is after EndTime {end}")


def build_command(spec: CommandSpec, target: Target, qn: str, items: Items) -> bytes:
    """The request frame (Flag 1/5/9 by the target's version) for items from `check_params`."""
    return build_request(target, spec.cn, qn, spec.encode(items) if spec.encode else items)


def mask_secrets(spec: CommandSpec | None, params: Mapping[str, object]) -> dict[str, object]:
    """`params` as they may be shown: secret items (NewPW, NewSK) replaced by "***"."""
    secret = spec.secret_names() if spec is not None else frozenset()
    return {name: "***" if name in secret else value for name, value in params.items()}

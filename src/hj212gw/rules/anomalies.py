"""Anomalies that flagging should have caught (Art. 22(4), 29(4)), per (MN, CN, factor) series.

Judged on values flagged N (or sent without a flag): a flagged value is already explained, and
it resets the jump baseline (a value after maintenance is not a jump). Rules (key detail = CN):
`flatline` (the same value on `flatline_points` points), `zero_value`, `negative_value`,
`out_of_range` (outside the i13001 range uploaded in 3020, else `range_min`/`range_max`),
`dilution_suspected` (a19001 O2 at or above `dilution_o2_pct`), `flow_zero_with_concentration`
(a flow factor at 0 while a pollutant of the same packet is above 0): each fires once its
condition held on `anomaly_points` consecutive values (flatline: its own count) and clears at the
first value where it does not. `sudden_jump` fires on a value more than `jump_factor` times above
or below the previous one (and at least `jump_min_delta` away) and clears at the next value that
does not jump. Only values newer than the series' newest are judged: backfilled or resent older
data never reset a flatline count or a jump baseline. Imports rules.model only.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from sys import intern

from hj212gw.rules.catalogue import fire
from hj212gw.rules.model import AlertChange, AlertKey, Clear
from hj212gw.rules.thresholds import RuleLimits

O2 = "a19001"
# Flue-gas and water parameters that are not pollutant concentrations (flow_zero_with_concentration).
AUXILIARY = frozenset(
    {"a01011", "a01012", "a01013", "a01014", "a01015", "a01016", "a01017", "a19001", "w01001", "w01010", "w01014"}
)
LEVEL_RULES = ("zero_value", "negative_value", "out_of_range", "dilution_suspected", "flow_zero_with_concentration")
INF = float("inf")


class Series:
    """One value series and its quiet window: a value inside (lo, hi) and (jlo, jhi) that differs
    from the previous one can fire nothing, so the caller skips the rules (`hot` False)."""

    __slots__ = (
        "cn",
        "counts",
        "factor",
        "firing",
        "flag_key",
        "hi",
        "hot",
        "jhi",
        "jlo",
        "judged",
        "k",
        "last",
        "last_text",
        "limit_judged",
        "limits",
        "lo",
        "normal_t",
        "repeat",
        "run_start",
        "value_key",
        "zs_key",
    )

    def __init__(self, cn: str, factor: str, suffix: str) -> None:
        self.cn, self.factor = cn, factor
        # Interned: every device's plans look up the same key objects (they stay in the CPU cache).
        self.value_key, self.flag_key = intern(f"{factor}-{suffix}"), intern(f"{factor}-Flag")
        self.zs_key = intern(f"{factor}-Zs{suffix}")
        self.limits = RuleLimits()
        self.k = self.limits.jump_factor
        self.judged = False  # anomaly rules apply to this CN
        self.limit_judged = False  # over_limit / near_limit apply to this CN (always the slow path)
        self.lo, self.hi, self.jlo, self.jhi = INF, -INF, INF, -INF
        self.hot = True
        self.last: float | None = None
        self.last_text: str | None = None
        self.normal_t: datetime | None = None  # newest DataTime with an N value
        self.repeat = 0
        self.run_start: datetime | None = None  # DataTime of the first value of the flat run
        self.counts: dict[str, tuple[int, datetime]] = {}  # rule -> (consecutive values, since)
        self.firing: set[str] = set()

    def rules(self) -> list[str]:
        """The anomaly rules that apply to this factor (for the first-seen Clears)."""
        names = ["flatline", "negative_value", "out_of_range", "sudden_jump"]
        flow = self.factor in self.limits.flow_factors
        names.append("flow_zero_with_concentration" if flow else "zero_value")
        if self.factor == O2:
            names.append("dilution_suspected")
        return names

    def configure(self, limits: RuleLimits, value_range: tuple[float | None, float | None] | None) -> None:
        """Take (new) thresholds: whether the CN is judged, and the quiet window."""
        self.limits, self.k = limits, limits.jump_factor
        self.judged = self.cn in limits.anomaly_cns
        self.limit_judged = limits.limit is not None and self.cn == limits.limit_cn
        self.set_window(value_range)
        self.rebaseline(self.last)

    def set_window(self, value_range: tuple[float | None, float | None] | None) -> None:
        """The static part of the quiet window, from the thresholds and the uploaded range."""
        if not self.judged:
            self.lo, self.hi = -INF, INF
            return
        low, high = self.limits.window()
        if value_range is not None:
            low = max(0.0, value_range[0] or 0.0)
            high = value_range[1] if value_range[1] is not None else INF
        if self.factor == O2:
            high = min(high, self.limits.dilution_o2_pct)
        self.lo, self.hi = low, high

    def rebaseline(self, value: float | None) -> None:
        self.last = value
        if value is not None and value > 0:
            self.jlo, self.jhi = value / self.k, value * self.k
        else:
            self.jlo, self.jhi = INF, -INF

    def refresh_hot(self) -> None:
        self.hot = bool(self.firing) or self.repeat > 1 or bool(self.counts)


def judge(
    series: Series,
    mn: str,
    cn: str,
    value: float,
    text: str,
    at: datetime,
    value_range: tuple[float | None, float | None] | None,
    fields: Mapping[str, str],
) -> list[AlertChange]:
    """Every anomaly rule on one N value newer than the series' newest."""
    limits = series.limits
    changes: list[AlertChange] = []
    _flatline(series, mn, cn, value, text, at, changes)
    low, high = value_range if value_range is not None else (limits.range_min, limits.range_max)
    flow = series.factor in limits.flow_factors
    conditions = {
        "zero_value": value == 0 and not flow,
        "negative_value": value < 0,
        "out_of_range": (low is not None and value < low) or (high is not None and value > high),
        "dilution_suspected": series.factor == O2 and value >= limits.dilution_o2_pct,
        "flow_zero_with_concentration": flow and value == 0 and _concentrations(fields, limits),
    }
    for rule, holds in conditions.items():
        _level(series, rule, holds, mn, cn, value, at, changes, low=low, high=high)
    _jump(series, mn, cn, value, at, changes)
    series.last_text = text
    series.rebaseline(value)
    series.refresh_hot()
    return changes


def _key(rule: str, mn: str, factor: str, cn: str) -> AlertKey:
    return AlertKey(rule, mn, factor, cn)


def _flatline(series: Series, mn: str, cn: str, value: float, text: str, at: datetime, out: list[AlertChange]) -> None:
    """Identical values as sent (`7.5` then `7.50` is a change: the DAS wrote something else)."""
    if text == series.last_text and series.run_start is not None:
        series.repeat += 1
    else:
        series.repeat, series.run_start = 1, at
    points = series.limits.flatline_points
    if series.repeat >= points:
        if "flatline" not in series.firing:
            series.firing.add("flatline")
            details = {"cn": cn, "points": series.repeat}
            key = _key("flatline", mn, series.factor, cn)
            out.append(fire(key, series.run_start, at, value=value, points=series.repeat, details=details))
    elif "flatline" in series.firing:
        series.firing.discard("flatline")
        out.append(Clear(_key("flatline", mn, series.factor, cn), at, value))


def _level(
    series: Series, rule: str, holds: bool, mn: str, cn: str, value: float, at: datetime, out: list[AlertChange],
    **text: object,
) -> None:  # fmt: skip
    if not holds:
        if series.counts:
            series.counts.pop(rule, None)
        if rule in series.firing:
            series.firing.discard(rule)
            out.append(Clear(_key(rule, mn, series.factor, cn), at, value))
        return
    key = _key(rule, mn, series.factor, cn)
    count, since = series.counts.get(rule, (0, at))
    series.counts[rule] = (count := count + 1, since)
    if count >= series.limits.anomaly_points and rule not in series.firing:
        series.firing.add(rule)
        threshold = series.limits.dilution_o2_pct if rule == "dilution_suspected" else None
        out.append(
            fire(key, since, at, value=value, threshold=threshold, points=count, details={"cn": cn}, **text)
        )  # fmt: skip


def _jump(series: Series, mn: str, cn: str, value: float, at: datetime, out: list[AlertChange]) -> None:
    previous, limits = series.last, series.limits
    jumped = False
    if previous is not None:
        delta = abs(value - previous)
        jumped = delta >= max(limits.jump_min_delta, (limits.jump_factor - 1) * min(abs(value), abs(previous)))
    if jumped:
        series.firing.add("sudden_jump")
        details = {"cn": cn, "previous": previous}
        key = _key("sudden_jump", mn, series.factor, cn)
        out.append(fire(key, at, at, value=value, threshold=limits.jump_factor, previous=previous, details=details))
    elif "sudden_jump" in series.firing:
        series.firing.discard("sudden_jump")
        out.append(Clear(_key("sudden_jump", mn, series.factor, cn), at, value))


def _concentrations(fields: Mapping[str, str], limits: RuleLimits) -> bool:
    """Whether a pollutant (not a flow, not a flue-gas or water parameter) of the packet is > 0."""
    for name, text in fields.items():
        code, dash, suffix = name.partition("-")
        if dash and suffix in ("Rtd", "Avg") and code not in limits.flow_factors and code not in AUXILIARY:
            try:
                if float(text) > 0:
                    return True
            except ValueError:
                continue
    return False

"""Every rule's stable name, default severity, regulation article and summary texts (zh, en).

One table, so docs/alerts.md, the rules and the alert engine agree; `fire()` builds the `Fire`
of a rule from it. Texts are `str.format` templates over the keys each rule passes (mn, factor,
value, threshold, …). Imports only rules.model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from hj212gw.rules.model import AlertKey, Fire, Severity

REG = "晋环规〔2024〕2号"


@dataclass(frozen=True, slots=True)
class RuleInfo:
    name: str
    severity: Severity
    article: str
    summary_zh: str
    summary_en: str


_W, _C, _I = Severity.WARNING, Severity.CRITICAL, Severity.INFO

RULES: dict[str, RuleInfo] = {
    info.name: info
    for info in (
        RuleInfo(
            "device_offline",
            _C,
            f"{REG} Art. 20(9)",
            "设备 {mn} 离线已 {minutes} 分钟",
            "Device {mn} offline for {minutes} min",
        ),
        RuleInfo(
            "device_silent",
            _W,
            f"{REG} Art. 20(9)",
            "设备 {mn} 在线但数据中断已 {minutes} 分钟（{overdue}）",
            "Device {mn} connected but silent for {minutes} min ({overdue})",
        ),
        RuleInfo(
            "gap_given_up",
            _W,
            f"{REG} Art. 20(7)",
            "设备 {mn} {cn} 数据缺失 {missing} 条，补遗已放弃（{reasons}）",
            "Device {mn} {cn}: {missing} missing periods, backfill given up ({reasons})",
        ),
        RuleInfo(
            "flag_episode",
            _W,
            f"{REG} Art. 18(3), 18(5)",
            "设备 {mn} 因子 {factor} 数据标记 {flag}（{flag_zh}）自 {since} 起",
            "Device {mn} factor {factor} flagged {flag} ({flag_en}) since {since}",
        ),
        RuleInfo(
            "fault_over_24h",
            _C,
            f"{REG} Art. 18(3), 30(8)",
            "设备 {mn} 因子 {factor} 故障超过 {threshold:g} 小时，须启用备用仪器或手工监测",
            "Device {mn} factor {factor} in fault over {threshold:g} h: backup analyser or manual monitoring required",
        ),
        RuleInfo(
            "fault_not_restored",
            _C,
            f"{REG} Art. 18(3)",
            "设备 {mn} 因子 {factor} 故障 {threshold:g} 个工作日内未恢复（截止 {deadline}）",
            "Device {mn} factor {factor} not restored within {threshold:g} working days (deadline {deadline})",
        ),
        RuleInfo(
            "flatline",
            _W,
            f"{REG} Art. 22(4), 29(4)",
            "设备 {mn} 因子 {factor} 连续 {points} 个数据恒为 {value}",
            "Device {mn} factor {factor} constant at {value} for {points} points",
        ),
        RuleInfo(
            "zero_value",
            _W,
            f"{REG} Art. 22(4)",
            "设备 {mn} 因子 {factor} 连续 {points} 个数据为零",
            "Device {mn} factor {factor} zero for {points} points",
        ),
        RuleInfo(
            "negative_value",
            _W,
            f"{REG} Art. 22(4)",
            "设备 {mn} 因子 {factor} 出现负值 {value}",
            "Device {mn} factor {factor} negative: {value}",
        ),
        RuleInfo(
            "out_of_range",
            _W,
            f"{REG} Art. 22(4), 29(6)",
            "设备 {mn} 因子 {factor} 数值 {value} 超出量程 [{low}, {high}]",
            "Device {mn} factor {factor} value {value} outside the range [{low}, {high}]",
        ),
        RuleInfo(
            "sudden_jump",
            _W,
            f"{REG} Art. 22(4)",
            "设备 {mn} 因子 {factor} 数值由 {previous} 突变为 {value}",
            "Device {mn} factor {factor} jumped from {previous} to {value}",
        ),
        RuleInfo(
            "dilution_suspected",
            _W,
            f"{REG} Art. 22(4), 29(4)",
            "设备 {mn} 氧含量 {value}% 不低于 {threshold:g}%，疑似稀释",
            "Device {mn} O2 {value}% at or above {threshold:g}%: dilution suspected",
        ),
        RuleInfo(
            "flow_zero_with_concentration",
            _W,
            f"{REG} Art. 22(4) item 8",
            "设备 {mn} 流量 {factor} 为零而浓度仍在上报",
            "Device {mn} flow {factor} zero while concentrations report",
        ),
        RuleInfo(
            "near_limit",
            _W,
            f"{REG} Art. 22(4), 29(4)",
            "设备 {mn} 因子 {factor} 连续 {points} 个数据贴近限值 {threshold:g}（{value}）",
            "Device {mn} factor {factor} just under the limit {threshold:g} for {points} points ({value})",
        ),
        RuleInfo(
            "over_limit",
            _C,
            f"{REG} Art. 25",
            "设备 {mn} 因子 {factor} 超标：{value} > 限值 {threshold:g}",
            "Device {mn} factor {factor} over the limit: {value} > {threshold:g}",
        ),
        RuleInfo(
            "parameter_changed",
            _W,
            f"{REG} Art. 29(6)",
            "设备 {mn} {factor} 仪器参数 {param} 由 {old} 改为 {new}",
            "Device {mn} {factor} instrument parameter {param} changed from {old} to {new}",
        ),
        RuleInfo(
            "value_revised",
            _W,
            f"{REG} Art. 29(6)",
            "设备 {mn} 因子 {factor} {cn} {data_time} 补发值 {new} 与实时值 {old} 不同",
            "Device {mn} factor {factor} {cn} {data_time}: resent value {new} differs from {old}",
        ),
    )
}


def fire(
    key: AlertKey,
    started_at: datetime,
    at: datetime,
    *,
    value: float | None = None,
    threshold: float | None = None,
    details: Mapping[str, object] | None = None,
    **text: object,
) -> Fire:
    """The `Fire` of `key.rule` with the catalogue's severity, article and summaries."""
    info = RULES[key.rule]
    names = {"mn": key.mn, "factor": key.factor, "value": value, "threshold": threshold, **text}
    return Fire(
        key,
        info.severity,
        started_at,
        at,
        info.summary_zh.format(**names),
        info.summary_en.format(**names),
        info.article,
        value,
        threshold,
        dict(details) if details else {},
    )

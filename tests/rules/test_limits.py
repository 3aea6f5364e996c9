"""Over-limit and near-limit on hour averages (2061), judged on N data only, with hysteresis."""

from __future__ import annotations

from datetime import timedelta

from hj212gw.rules.packet import PacketRules
from hj212gw.rules.thresholds import parse_thresholds
from tests.rules.helpers import T0, clears, fires, sample

LIMITS = '[factors.a21026]\nlimit = 100\n\n[devices."MN2".factors.a21026]\nlimit = 200\n'


def hours(values: list[float], *, mn: str = "MN0001", flags: list[str] | None = None, zs: list[float] | None = None):
    rules = PacketRules(parse_thresholds(LIMITS))
    out = []
    for i, value in enumerate(values):
        flag = {"a21026": flags[i]} if flags else None
        zs_value = {"a21026": zs[i]} if zs else None
        at = T0 + timedelta(hours=i)
        out += rules.on_sample(sample(at, {"a21026": value}, cn="2061", mn=mn, flags=flag, zs=zs_value))
    return out


def hour(n: int):
    return T0 + timedelta(hours=n)


def test_over_limit_fires_and_clears_only_below_the_hysteresis_band() -> None:
    out = hours([50, 120, 130, 97, 94])
    fired = fires(out, "over_limit")
    assert [f.at for f in fired] == [hour(1), hour(2)]
    assert {f.started_at for f in fired} == {hour(1)}
    assert (fired[0].value, fired[0].threshold) == (120, 100)
    assert fired[0].article.endswith("Art. 25")
    assert [c.at for c in clears(out, "over_limit") if c.at != hour(0)] == [hour(4)]  # 97 > 95: still over


def test_over_limit_ignores_values_not_flagged_n() -> None:
    out = hours([50, 150, 150], flags=["N", "D", "M"])
    assert not fires(out, "over_limit")


def test_over_limit_uses_the_corrected_value_where_present() -> None:
    out = hours([90, 90], zs=[90, 130])
    (fired,) = fires(out, "over_limit")
    assert (fired.value, fired.details["statistic"]) == (130, "a21026-ZsAvg")


def test_per_device_limit_overrides_the_factor_limit() -> None:
    assert not fires(hours([150, 150], mn="MN2"), "over_limit")
    assert fires(hours([150, 250], mn="MN2"), "over_limit")


def test_near_limit_fires_after_consecutive_values_just_under_and_clears() -> None:
    out = hours([50, 92, 95, 99, 93, 60])
    (fired,) = fires(out, "near_limit")
    assert (fired.started_at, fired.at) == (hour(1), hour(4))
    assert [c.at for c in clears(out, "near_limit") if c.at != hour(0)] == [hour(5)]


def test_minute_data_are_not_judged_against_the_hour_limit() -> None:
    rules = PacketRules(parse_thresholds(LIMITS))
    out = rules.on_sample(sample(T0, {"a21026": 500}, cn="2051"))
    assert not fires(out, "over_limit")

"""Anomaly rules through PacketRules: each fires and clears."""

from __future__ import annotations

from hj212gw.rules.packet import PacketRules
from hj212gw.rules.thresholds import Thresholds, parse_thresholds
from tests.rules.helpers import clears, fires, minute, sample


def run(values: list[float], *, factor: str = "a21026", thresholds: Thresholds | None = None, **kw: object) -> list:
    rules = PacketRules(thresholds or Thresholds.default())
    out = []
    for i, value in enumerate(values):
        out += rules.on_sample(sample(minute(i), {factor: value}, **kw))  # type: ignore[arg-type]
    return out


def real(changes: list, rule: str) -> list:
    """Clears after the first-seen ones (minute 0)."""
    return [c for c in clears(changes, rule) if c.at != minute(0)]


def test_flatline_fires_after_n_identical_points_and_clears_on_change() -> None:
    changes = run([30.0] * 5 + [31.0], thresholds=parse_thresholds("[defaults]\nflatline_points = 5\n"))
    (fired,) = fires(changes, "flatline")
    assert (fired.started_at, fired.at, fired.value) == (minute(0), minute(4), 30.0)
    assert fired.key.detail == "2051"
    assert [c.at for c in real(changes, "flatline")] == [minute(5)]


def test_flatline_state_is_not_reset_by_older_data() -> None:
    rules = PacketRules(parse_thresholds("[defaults]\nflatline_points = 4\n"))
    out = []
    for i in range(3):
        out += rules.on_sample(sample(minute(10 + i), {"a21026": 30.0}))
    out += rules.on_sample(sample(minute(1), {"a21026": 99.0}, backfill=True))
    out += rules.on_sample(sample(minute(13), {"a21026": 30.0}))
    assert len(fires(out, "flatline")) == 1


def test_zero_and_negative_values() -> None:
    changes = run([0, 0, 0, 5, -1, -1, -1, 5])
    assert [f.at for f in fires(changes, "zero_value")] == [minute(2)]
    assert [c.at for c in real(changes, "zero_value")] == [minute(3)]
    assert [f.at for f in fires(changes, "negative_value")] == [minute(6)]
    assert [c.at for c in real(changes, "negative_value")] == [minute(7)]


def test_flagged_values_are_not_anomalies() -> None:
    changes = run([0, 0, 0, 0], flags={"a21026": "M"})
    assert not fires(changes, "zero_value")


def test_out_of_range_from_thresholds() -> None:
    thresholds = parse_thresholds("[factors.a21026]\nrange_max = 100\nanomaly_points = 1\n")
    changes = run([50, 150, 60], thresholds=thresholds)
    (fired,) = fires(changes, "out_of_range")
    assert (fired.at, fired.value) == (minute(1), 150)
    assert "[None, 100.0]" in fired.summary_en
    assert [c.at for c in real(changes, "out_of_range")] == [minute(2)]


def test_sudden_jump_fires_and_clears() -> None:
    changes = run([30, 31, 400, 401])
    (fired,) = fires(changes, "sudden_jump")
    assert (fired.at, fired.value, fired.details["previous"]) == (minute(2), 400, 31)
    assert [c.at for c in real(changes, "sudden_jump")] == [minute(3)]


def test_small_absolute_changes_near_zero_are_not_jumps() -> None:
    assert not fires(run([0.01, 0.5, 0.02]), "sudden_jump")


def test_dilution_on_o2() -> None:
    changes = run([9.0, 20.5, 20.6, 20.7, 8.0], factor="a19001")
    (fired,) = fires(changes, "dilution_suspected")
    assert (fired.started_at, fired.at, fired.threshold) == (minute(1), minute(3), 19.0)
    assert [c.at for c in real(changes, "dilution_suspected")] == [minute(4)]


def test_flow_zero_while_concentrations_report() -> None:
    rules = PacketRules(Thresholds.default())
    out = []
    for i in range(4):
        out += rules.on_sample(sample(minute(i), {"a00000": 0, "a21026": 30 + i, "a01012": 120}))
    out += rules.on_sample(sample(minute(4), {"a00000": 10, "a21026": 35, "a01012": 120}))
    (fired,) = fires(out, "flow_zero_with_concentration")
    assert (fired.key.factor, fired.at) == ("a00000", minute(2))
    assert [c.at for c in real(out, "flow_zero_with_concentration")] == [minute(4)]
    assert not fires(out, "zero_value")


def test_flow_zero_with_no_concentration_is_a_stoppage_not_an_anomaly() -> None:
    rules = PacketRules(Thresholds.default())
    out = []
    for i in range(4):
        out += rules.on_sample(sample(minute(i), {"a00000": 0, "a21026": 0, "a01012": 120}))
    assert not fires(out, "flow_zero_with_concentration")


def test_real_time_values_are_judged_per_cn() -> None:
    changes = run([0, 0, 0, 4], cn="2011")
    (fired,) = fires(changes, "zero_value")
    assert (fired.key.detail, fired.at) == ("2011", minute(2))
    assert [c.at for c in real(changes, "zero_value")] == [minute(3)]

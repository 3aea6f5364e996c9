"""PacketRules as a whole: first-seen Clears, bounded state, reload, nothing fires on quiet data."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from hj212gw.rules.model import Clear, Sample
from hj212gw.rules.packet import PacketRules
from hj212gw.rules.thresholds import Thresholds, parse_thresholds
from tests.rules.helpers import fires, minute, sample


def test_first_live_sample_clears_every_key_once_backfill_does_not() -> None:
    rules = PacketRules(Thresholds.default())
    first = rules.on_sample(sample(minute(0), {"a21026": 30, "a19001": 9}))
    assert first and all(isinstance(c, Clear) for c in first)
    rules_of_o2 = {c.key.rule for c in first if c.key.factor == "a19001"}
    assert {"flag_episode", "flatline", "dilution_suspected", "sudden_jump", "zero_value"} <= rules_of_o2
    assert len({c.key for c in first}) == len(first)
    assert rules.on_sample(sample(minute(1), {"a21026": 31, "a19001": 9.5})) == []
    assert PacketRules(Thresholds.default()).on_sample(sample(minute(0), {"a21026": 30}, backfill=True)) == []


def test_a_first_packet_that_shows_a_condition_fires_it_without_clearing_it_first() -> None:
    # A device moving to this replica while flagged D and over its limit: the first-seen Clears of
    # those keys would resolve the alerts the other replica raised and open second ones.
    rules = PacketRules(parse_thresholds("[factors.a21026]\nlimit = 100\nlimit_cn = '2051'\n"))
    first = rules.on_sample(sample(minute(0), {"a21026": 150, "a19001": 9}, flags={"a19001": "D"}))
    fired = {(c.key.rule, c.key.factor, c.key.detail) for c in first if not isinstance(c, Clear)}
    assert fired == {("flag_episode", "a19001", "D"), ("over_limit", "a21026", "")}
    cleared = {(c.key.rule, c.key.factor, c.key.detail) for c in first if isinstance(c, Clear)}
    assert not fired & cleared
    assert ("flag_episode", "a19001", "F") in cleared and ("near_limit", "a21026", "") in cleared


def test_quiet_drifting_data_fire_nothing() -> None:
    rules = PacketRules(Thresholds.default())
    rng = random.Random(3)
    levels = {"a21026": 35.0, "a21002": 80.0, "a19001": 9.0, "a34013": 0.8}
    rules.on_sample(sample(minute(0), levels))
    for i in range(1, 300):
        levels = {k: round(v * (1 + rng.uniform(-0.02, 0.02)), 3) for k, v in levels.items()}
        assert rules.on_sample(sample(minute(i), levels)) == []


def test_state_is_bounded_per_device() -> None:
    rules = PacketRules(Thresholds.default(), max_factors_per_device=50)
    for i in range(10):
        rules.on_sample(sample(minute(i), {f"x{i:03d}{j:03d}": 1 + j for j in range(100)}))
    (device,) = rules._devices.values()
    assert len(device.factors) == 50
    assert rules.dropped_factors >= 50  # counted at each plan build that meets the cap


def test_reload_applies_new_thresholds_and_keeps_state() -> None:
    rules = PacketRules(parse_thresholds("[defaults]\nflatline_points = 10\n"))
    out = [c for i in range(4) for c in rules.on_sample(sample(minute(i), {"a21026": 30}))]
    assert not fires(out, "flatline")
    rules.thresholds = parse_thresholds("[defaults]\nflatline_points = 5\n")
    assert fires(rules.on_sample(sample(minute(4), {"a21026": 30})), "flatline")


def test_a_missing_factor_rebuilds_the_plan() -> None:
    rules = PacketRules(Thresholds.default())
    rules.on_sample(sample(minute(0), {"a21026": 30, "a21002": 80}))
    rules.on_sample(sample(minute(1), {"a21026": 31, "x": 80}))
    out = [c for i in range(2, 6) for c in rules.on_sample(sample(minute(i), {"a21026": 32 + i, "x": 0}))]
    assert fires(out, "zero_value")


TEXTS = ["0", "0.000", "-1.5", "19.5", "101.3", "9.99", "10.01", "10.04", "09.5", "18.99", "35.123", "35.123"]
VALUES = st.one_of(
    st.sampled_from([*TEXTS, "1e3", "abc"]),
    st.floats(min_value=-5, max_value=500, allow_nan=False).map(lambda v: f"{v:.3f}"),
    st.floats(min_value=0.5, max_value=200, allow_nan=False).map(lambda v: f"{v:.1f}"),
)
PACKET = st.tuples(
    st.dictionaries(st.sampled_from(["a21026", "a19001", "a00000", "a01013"]), VALUES, min_size=1),
    st.sampled_from("NNNNNNDM"),
    st.booleans(),  # backfill
    st.integers(-3, 3),  # minutes later than the previous packet (<= 0: older or the same)
)


@settings(max_examples=200, deadline=None)
@given(st.lists(PACKET, max_size=60))
def test_the_fast_path_changes_no_result(packets: list) -> None:
    thresholds = parse_thresholds("[defaults]\nflatline_points = 3\nanomaly_points = 2\n")
    fast, full = PacketRules(thresholds), PacketRules(thresholds, fast_path=False)
    at = 100
    for values, flag, backfill, step in packets:
        at += step
        flags = {code: flag for code in values}
        packet = sample(minute(at), values, flags=flags, backfill=backfill)  # type: ignore[arg-type]
        assert fast.on_sample(packet) == full.on_sample(packet)


STEP = st.tuples(
    st.lists(st.floats(min_value=0.9, max_value=1.1), min_size=4, max_size=4),
    st.sampled_from("NNNNNNNNNNNNNNNNNNND"),
    st.sampled_from([None] * 30 + ["repeat", "zero", "jump", "drop", "range"]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(min_value=0.5, max_value=300), min_size=4, max_size=4), st.lists(STEP, max_size=80))
def test_the_fast_path_changes_no_result_on_drifting_data(levels: list[float], steps: list) -> None:
    thresholds = parse_thresholds("[defaults]\nflatline_points = 3\nanomaly_points = 2\nepisode_merge_gap_s = 120\n")
    fast, full = PacketRules(thresholds), PacketRules(thresholds, fast_path=False)
    codes = ["a21026", "a19001", "a00000", "a01013"]
    last: dict[str, str] = {}
    for i, (factors, flag, glitch) in enumerate(steps):
        levels = [level * factor for level, factor in zip(levels, factors, strict=True)]
        values = {code: f"{level:.3f}" for code, level in zip(codes, levels, strict=True)}
        if glitch == "repeat" and last:
            values = dict(last)
        elif glitch == "zero":
            values["a00000"] = "0.000"
        elif glitch == "jump":
            values["a21026"] = f"{levels[0] * 50:.3f}"
        elif glitch == "drop":
            values.pop("a01013")
        elif glitch == "range":  # a new i13001 just above the current value: the drift may leave it
            fields = {"DataTime": "x", "PolId": "a21026", "i13001-Info": f"0-{levels[0] * 1.05:.3f}"}
            info = Sample("MN0001", "3020", minute(i), minute(i), False, fields)
            assert fast.on_sample(info) == full.on_sample(info)
        last = values
        packet = sample(minute(i), values, flags={"a21026": flag})  # type: ignore[arg-type]
        assert fast.on_sample(packet) == full.on_sample(packet)


BASES = {"a00000": 10, "a34013": 11, "a21026": 12, "a19001": 14}  # bench/packets.py: 1{i}.{v}4
ROTATION = st.tuples(
    st.integers(0, 9),  # the variant digit v (a repeated v repeats every value: a flatline)
    st.sampled_from([None] * 8 + ["under", "leading_zero", "dilution", "near_dilution", "flag", "over", "odd"]),
    st.integers(1, 3),  # packets in a row with that glitch
)


@settings(max_examples=150, deadline=None)
@given(st.lists(ROTATION, max_size=80))
def test_the_fast_path_changes_no_result_on_rotating_readings(steps: list) -> None:
    """The gateway benchmark's readings (10.04 … 10.94, O2 14.x4), with crossings of a decade and
    of the dilution level, leading zeros, flags and non-decimal texts."""
    thresholds = parse_thresholds("[defaults]\nflatline_points = 3\nanomaly_points = 2\n")
    fast, full = PacketRules(thresholds), PacketRules(thresholds, fast_path=False)
    expanded = [(v + n, glitch) for v, glitch, times in steps for n in range(times)]
    for i, (v, glitch) in enumerate(expanded):
        v %= 10
        values = {code: f"{base}.{v}4" for code, base in BASES.items()}
        if glitch == "under":
            values["a00000"] = f"9.9{v}"
        elif glitch == "leading_zero":
            values["a34013"] = f"0{v}.{v}4"
        elif glitch == "dilution":
            values["a19001"] = f"19.{v}4"
        elif glitch == "near_dilution":
            values["a19001"] = f"18.9{v}"
        elif glitch == "over":
            values["a21026"] = f"{v + 100}.04"
        elif glitch == "odd":
            values["a00000"] = "1e1"
        flags = {"a21026": "D"} if glitch == "flag" else None
        packet = sample(minute(i), values, flags=flags)  # type: ignore[arg-type]
        assert fast.on_sample(packet) == full.on_sample(packet)


def test_the_fast_path_takes_the_benchmark_readings() -> None:
    """Values just above a decade (10.x4) and O2 under its dilution level stay on the fast path."""
    rules = PacketRules(Thresholds.default())
    accepted = 0
    for i in range(100):
        rules.on_sample(sample(minute(i), {code: f"{base}.{i % 10}4" for code, base in BASES.items()}))
        (plan,) = rules._devices["MN0001"].plans.values()
        accepted += plan.quiet.quiet_t == minute(i)
    assert accepted >= 98


def test_the_fast_path_takes_quiet_packets() -> None:
    rules = PacketRules(Thresholds.default())
    accepted = 0
    for i in range(100):
        rules.on_sample(
            sample(minute(i), {"a21026": f"{35 + (i % 7) * 0.5 + i * 0.01:.3f}", "a19001": f"{8 + i * 0.01:.2f}"})
        )
        (plan,) = rules._devices["MN0001"].plans.values()
        accepted += plan.quiet.quiet_t == minute(i)
    assert accepted > 90

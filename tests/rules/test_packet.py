"""PacketRules as a whole: first-seen Clears, bounded state, reload, nothing fires on quiet data."""

from __future__ import annotations

import random

from hj212gw.rules.model import Clear
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

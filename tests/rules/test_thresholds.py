from __future__ import annotations

import pytest

from hj212gw.rules.thresholds import RuleLimits, ThresholdsError, parse_thresholds

TEXT = """
[defaults]
flatline_points = 20

[factors.a21026]
limit = 35
jump_factor = 20

[devices."MN1"]
flatline_points = 5

[devices."MN1".factors.a21026]
limit = 50
"""


def test_defaults_are_the_regulation_numbers() -> None:
    limits = parse_thresholds("").for_factor("any", "a21026")
    assert limits == RuleLimits()
    assert (limits.fault_alert_after_h, limits.fault_restore_working_days, limits.episode_merge_gap_s) == (24, 5, 3600)
    assert limits.limit is None


def test_overrides_resolve_field_by_field_most_specific_last() -> None:
    thresholds = parse_thresholds(TEXT)
    assert thresholds.for_factor("MN2", "a21002").flatline_points == 20
    other = thresholds.for_factor("MN2", "a21026")
    assert (other.limit, other.jump_factor, other.flatline_points) == (35, 20, 20)
    device = thresholds.for_factor("MN1", "a21002")
    assert (device.limit, device.flatline_points) == (None, 5)
    exact = thresholds.for_factor("MN1", "a21026")
    assert (exact.limit, exact.jump_factor, exact.flatline_points) == (50, 20, 5)
    assert thresholds.for_device("MN1").flatline_points == 5


def test_lookup_returns_the_same_object_and_allocates_nothing_per_key() -> None:
    thresholds = parse_thresholds(TEXT)
    assert thresholds.for_factor("MN9", "x1") is thresholds.for_factor("MN8", "x2")
    assert thresholds.for_factor("MN1", "a21026") is thresholds.for_factor("MN1", "a21026")


def test_version_changes_with_the_text_only() -> None:
    assert parse_thresholds(TEXT).version == parse_thresholds(TEXT).version
    assert parse_thresholds(TEXT).version != parse_thresholds("").version


def test_toml_syntax_error_names_the_line() -> None:
    with pytest.raises(ThresholdsError) as err:
        parse_thresholds("[defaults]\nflatline_points = \n")
    assert err.value.line == 2


def test_bad_value_names_the_field_and_its_line() -> None:
    with pytest.raises(ThresholdsError) as err:
        parse_thresholds('[devices."MN1".factors.a21026]\n\nlimit = -3\n')
    assert err.value.field == "devices.MN1.factors.a21026.limit"
    assert err.value.line == 3


def test_unknown_key_is_refused() -> None:
    with pytest.raises(ThresholdsError) as err:
        parse_thresholds("[defaults]\nflatlin_points = 3\n")
    assert err.value.field == "defaults.flatlin_points"

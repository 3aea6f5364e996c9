"""Flag episodes through PacketRules (the way the alerts layer feeds them)."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from hj212gw.rules.model import Clear, Fire
from hj212gw.rules.packet import PacketRules
from hj212gw.rules.thresholds import Thresholds, parse_thresholds
from tests.rules.helpers import clears, fires, minute, sample


def feed(rules: PacketRules, flags: list[str], *, start: int = 0, step: int = 1) -> list:
    out = []
    for i, flag in enumerate(flags):
        out += rules.on_sample(sample(minute(start + i * step), {"a21026": 30 + i % 7}, flags={"a21026": flag}))
    return out


def test_first_seen_factor_gets_one_clear_per_letter() -> None:
    changes = PacketRules(Thresholds.default()).on_sample(sample(minute(0), {"a21026": 30}))
    assert sorted(c.key.detail for c in clears(changes, "flag_episode")) == sorted("FMSDCTB")


def test_episode_fires_at_first_flagged_value_and_clears_when_n_resumes() -> None:
    rules = PacketRules(parse_thresholds("[defaults]\nepisode_merge_gap_s = 0\n"))
    changes = feed(rules, ["N", "D", "D", "N", "N"])
    fired = fires(changes, "flag_episode")
    assert [(f.key.detail, f.started_at) for f in fired] == [("D", minute(1))]
    assert fired[0].article.endswith("Art. 18(3), 18(5)")
    ended = [c for c in clears(changes, "flag_episode") if c.at != minute(0)]
    assert [(c.key.detail, c.at) for c in ended] == [("D", minute(3))]


def test_episodes_less_than_the_gap_apart_merge_into_one() -> None:
    rules = PacketRules(Thresholds.default())  # 1 h merge gap
    changes = feed(rules, ["D", "N", "N", "D"], step=10)  # N for 20 min between two D
    changes += rules.on_sample(sample(minute(40), {"a21026": 30}))
    assert not [c for c in clears(changes, "flag_episode") if c.key.detail == "D" and c.at > minute(0)]
    assert {f.started_at for f in fires(changes, "flag_episode")} == {minute(0)}
    later = rules.on_sample(sample(minute(30 + 61), {"a21026": 31}))
    assert [(c.key.detail, c.at) for c in clears(later, "flag_episode")] == [("D", minute(40))]


def test_backfilled_n_does_not_end_an_episode_live_data_show_running() -> None:
    rules = PacketRules(parse_thresholds("[defaults]\nepisode_merge_gap_s = 0\n"))
    feed(rules, ["D"], start=10)
    late = rules.on_sample(sample(minute(5), {"a21026": 30}, backfill=True))
    assert not clears(late, "flag_episode")
    assert fires(rules.on_sample(sample(minute(11), {"a21026": 30}, flags={"a21026": "D"})), "flag_episode") == []


def test_p_counts_as_d_and_unknown_letters_are_ignored() -> None:
    rules = PacketRules(Thresholds.default())
    changes = feed(rules, ["P", "X"])
    assert [f.key.detail for f in fires(changes, "flag_episode")] == ["D"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from("NNND"), min_size=1, max_size=40))
def test_an_episode_never_contains_an_n_value_without_merge_gap(flags: list[str]) -> None:
    rules = PacketRules(parse_thresholds("[defaults]\nepisode_merge_gap_s = 0\n"))
    open_since = None
    for i, flag in enumerate(flags):
        for change in rules.on_sample(sample(minute(i), {"a21026": 30 + i}, flags={"a21026": flag})):
            if change.key.rule != "flag_episode" or change.key.detail != "D":
                continue
            if isinstance(change, Fire):
                open_since = change.started_at
            elif isinstance(change, Clear) and open_since is not None:
                span = [flags[j] for j in range(i) if open_since <= minute(j) < change.at]
                assert span and "N" not in span
                assert flags[(change.at - minute(0)) // timedelta(minutes=1)] == "N"
                open_since = None
    if open_since is not None:
        first = (open_since - minute(0)) // timedelta(minutes=1)
        assert "N" not in flags[first:]

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from hj212gw.monitor.cadence import MIN_INTERVALS_MIN, Cadence

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def test_hour_and_day_data_have_the_standards_periods_from_the_start():
    assert Cadence("2061").period == timedelta(hours=1)
    assert Cadence("2031").period == timedelta(days=1)
    assert Cadence("2051").period is None


def test_minute_period_is_learned_once_a_step_repeats():
    cadence = Cadence("2051")
    cadence.observe(T0)
    cadence.observe(T0 + timedelta(minutes=10))
    assert cadence.period is None
    cadence.observe(T0 + timedelta(minutes=20))
    assert cadence.period == timedelta(minutes=10)


def test_a_gap_a_duplicate_and_an_off_grid_packet_do_not_change_the_period():
    cadence = Cadence("2051")
    for n in range(4):
        cadence.observe(T0 + timedelta(minutes=10 * n))
    cadence.observe(T0 + timedelta(minutes=30))  # duplicate
    cadence.observe(T0 + timedelta(minutes=33))  # off grid: steps 3 and 7 once each
    cadence.observe(T0 + timedelta(minutes=40))
    cadence.observe(T0 + timedelta(hours=5))  # a dropout
    cadence.observe(T0 + timedelta(minutes=5))  # late, out of order
    assert cadence.period == timedelta(minutes=10)


def test_a_minute_step_that_is_no_standard_interval_is_ignored():
    cadence = Cadence("2051")
    for n in range(5):
        cadence.observe(T0 + timedelta(minutes=7 * n))
    assert cadence.period is None


def test_a_shorter_interval_set_later_is_learned():
    cadence = Cadence("2011")
    for n in range(4):
        cadence.observe(T0 + timedelta(seconds=60 * n))
    assert cadence.period == timedelta(seconds=60)
    start = T0 + timedelta(seconds=180)
    for n in range(1, 4):
        cadence.observe(start + timedelta(seconds=30 * n))
    assert cadence.period == timedelta(seconds=30)


def test_the_registry_can_fix_a_period():
    cadence = Cadence("2051", fixed=timedelta(minutes=5))
    for n in range(4):
        cadence.observe(T0 + timedelta(minutes=10 * n))
    assert cadence.period == timedelta(minutes=5)
    assert cadence.fixed


@given(st.sampled_from(MIN_INTERVALS_MIN), st.lists(st.integers(0, 200), min_size=3, unique=True), st.randoms())
def test_any_order_of_a_regular_series_learns_a_multiple_of_its_interval(minutes, slots, rnd):
    """Whatever order and holes: the period learned is never shorter than the true interval."""
    cadence = Cadence("2051")
    times = [T0 + timedelta(minutes=minutes * s) for s in slots]
    rnd.shuffle(times)
    for t in times:
        cadence.observe(t)
    if cadence.period is not None:
        assert cadence.period.total_seconds() % (minutes * 60) == 0

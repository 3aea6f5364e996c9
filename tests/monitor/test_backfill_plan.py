import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hj212gw.monitor.backfill_plan import CHUNK_PERIODS, Fetch, MissingRun, RetryPolicy, TokenBucket, next_fetch

T0 = datetime(2026, 12, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)


def test_the_oldest_run_is_asked_for_first_in_one_chunk():
    runs = [
        MissingRun("2061", T0 + 30 * HOUR, T0 + 31 * HOUR, HOUR, "late"),
        MissingRun("2061", T0, T0 + 3 * HOUR, HOUR, "early"),
    ]
    assert next_fetch(runs, not_before={}, now=T0) == Fetch("2061", T0, T0 + 3 * HOUR, 4, "early")


def test_a_long_run_is_cut_into_chunks_of_the_standard_size():
    day_of_hours = MissingRun("2061", T0, T0 + 71 * HOUR, HOUR, "k")
    fetch = next_fetch([day_of_hours], not_before={}, now=T0)
    assert fetch is not None and fetch.periods == CHUNK_PERIODS["2061"] == 24
    assert fetch.end == T0 + 23 * HOUR
    minutes = MissingRun("2051", T0, T0 + 600 * MINUTE, MINUTE, "m")
    fetch = next_fetch([minutes], not_before={}, now=T0)
    assert fetch is not None and fetch.end - fetch.begin == 119 * MINUTE


def test_a_run_waiting_for_its_retry_is_skipped():
    runs = [MissingRun("2061", T0, T0, HOUR, "a"), MissingRun("2061", T0 + HOUR * 5, T0 + HOUR * 5, HOUR, "b")]
    fetch = next_fetch(runs, not_before={"a": T0 + HOUR}, now=T0)
    assert fetch is not None and fetch.key == "b"
    assert next_fetch(runs[:1], not_before={"a": T0 + HOUR}, now=T0) is None
    assert next_fetch(runs[:1], not_before={"a": T0 + HOUR}, now=T0 + HOUR) is not None


def test_retries_back_off_then_give_up():
    policy = RetryPolicy(max_attempts=3, initial_s=10, max_s=25)
    rng = random.Random(1)
    delays = [policy.delay_s(n, rng) for n in (1, 2, 3)]
    assert 7.5 <= delays[0] <= 12.5 and 15 <= delays[1] <= 25 and 18.75 <= delays[2] <= 31.25
    assert not policy.exhausted(2) and policy.exhausted(3)


def test_the_bucket_allows_a_burst_then_its_rate():
    bucket = TokenBucket(rate_per_s=2, burst=3)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) and not bucket.take(0.5)


@given(st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=300), st.floats(0.5, 20), st.integers(1, 10))
def test_the_bucket_never_grants_more_than_burst_plus_rate_times_time(times, rate, burst):
    bucket = TokenBucket(rate_per_s=rate, burst=burst)
    times = sorted(times)
    granted = sum(bucket.take(t) for t in times)
    assert granted <= burst + rate * (times[-1] - times[0]) + 1e-9


def test_the_bucket_says_how_long_until_its_next_token():
    bucket = TokenBucket(rate_per_s=4, burst=1)
    assert bucket.take(0.0) and bucket.wait_s(0.0) == 0.25
    assert bucket.wait_s(0.1) == pytest.approx(0.15)
    assert bucket.wait_s(0.3) == 0.0 and bucket.take(0.3)

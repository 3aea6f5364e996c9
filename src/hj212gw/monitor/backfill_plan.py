"""What to ask a device for next, and when (pure): the policy of the automatic backfill (补传).

HJ 212-2017 §9 lets the platform fetch minute (2051), hour (2061) and day (2031) history with
BeginTime/EndTime, both period starts, the range inclusive; the device answers 9011, one packet
per period it holds (the same CN as a live upload) and 9012 (ExeRtn 100 when it holds none). The
regulation wants data lost to network faults backfilled after recovery (shanxi-rules.md Art.
20(7)); transmission-rate.md §5 recommends one outstanding request per MN and at most 24 hours
of hours or 2 hours of minutes per request. So:

- `next_fetch` picks the oldest missing run of a device (within the horizon the gap tracker
  keeps) and cuts a chunk of at most `CHUNK_PERIODS` periods from its start;
- `RetryPolicy` says when a run may be asked for again after an answer that did not fill it, and
  when to give up (`given_up` with the reason);
- `TokenBucket` is the global rate of requests, so thousands of devices reconnecting at once
  flood neither them nor the database.

No clock, no I/O: the caller passes the time.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

CHUNK_PERIODS = {"2051": 120, "2061": 24, "2031": 7}
"""Periods per request at most: 2 h of one-minute data (fewer hours for longer MinIntervals:
the cap counts periods, which is what the device sends and the database stores), 24 hours, 7 days."""


class MissingRun(NamedTuple):
    """A run of missing periods of one series, as the gap tracker reports it."""

    cn: str
    start: datetime  # first missing period's start (UTC)
    end: datetime  # last missing period's start (UTC), inclusive
    period: timedelta
    key: object  # the tracker's handle on the run


class Fetch(NamedTuple):
    """One history request: BeginTime and EndTime are period starts, inclusive."""

    cn: str
    begin: datetime
    end: datetime
    periods: int
    key: object


def next_fetch(runs: Iterable[MissingRun], *, not_before: dict[object, datetime], now: datetime) -> Fetch | None:
    """The request for the oldest run that may be asked for now (`not_before`: a run's retry time).

    Oldest first: the regulation's effective-transmission figures are per day and month, and the
    oldest data is the first a device's own memory loses."""
    candidates = [r for r in runs if not_before.get(r.key, now) <= now]
    if not candidates:
        return None
    run = min(candidates, key=lambda r: (r.start, r.cn))
    limit = CHUNK_PERIODS.get(run.cn, 24)
    periods = int((run.end - run.start) / run.period) + 1
    take = min(periods, limit)
    return Fetch(run.cn, run.start, run.start + run.period * (take - 1), take, run.key)


@dataclass(slots=True)
class RetryPolicy:
    """Backoff between attempts at one run, and when to stop."""

    max_attempts: int = 4
    initial_s: float = 60.0
    max_s: float = 3600.0

    def delay_s(self, attempts: int, rng: random.Random | None = None) -> float:
        """Wait after the `attempts`-th unsuccessful attempt (1-based): doubling, jittered ±25 %."""
        base: float = min(self.initial_s * 2.0 ** max(attempts - 1, 0), self.max_s)
        jitter: float = (rng or random).uniform(0.75, 1.25)
        return base * jitter

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts


class TokenBucket:
    """At most `rate_per_s` requests per second on average, bursts of `burst`."""

    __slots__ = ("_at", "_tokens", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._at: float | None = None

    def take(self, now_s: float) -> bool:
        """Spend one token if there is one (`now_s`: a monotonic time)."""
        self._refill(now_s)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_s(self, now_s: float) -> float:
        """How long until a token is there."""
        self._refill(now_s)
        return max(0.0, (1.0 - self._tokens) / self.rate_per_s)

    def _refill(self, now_s: float) -> None:
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now_s - self._at) * self.rate_per_s)
        self._at = now_s

"""Clocks for the simulator: real time, a sped-up virtual clock, and a fake clock for tests.

Two times run side by side. *Simulated* time (timezone-aware, UTC) drives what a device
measures and when it uploads: with `speed=1440` a simulated day passes in a real minute.
*Network* time (monotonic seconds) drives what a real link does: OverTime resends, reconnect
backoff, ack latency. Keeping them apart lets a sped-up run keep realistic network timers.
Imports nothing from asyncio; the shell sleeps, the clock only converts.
"""

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """What the device core and the shell need from a clock."""

    speed: float

    def sim_now(self) -> datetime:
        """Simulated time, timezone-aware (UTC)."""
        ...

    def real_now(self) -> float:
        """Network time in seconds (monotonic)."""
        ...


class VirtualClock:
    """Simulated time = `start` + elapsed real time x `speed`; `speed=1` is real time."""

    def __init__(self, *, speed: float = 1.0, start: datetime | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = speed
        self.start = (start or datetime.now(UTC)).astimezone(UTC)
        self._t0 = time.monotonic()

    def sim_now(self) -> datetime:
        return self.start + timedelta(seconds=(time.monotonic() - self._t0) * self.speed)

    def real_now(self) -> float:
        return time.monotonic()

    def real_delay_until(self, moment: datetime) -> float:
        """Real seconds until simulated `moment` (0 if it has passed)."""
        return max(0.0, (moment - self.sim_now()).total_seconds() / self.speed)


RELATIVE_START = re.compile(r"-(\d+(?:\.\d+)?)([smhd])")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_start(text: str | None, now: datetime) -> datetime | None:
    """The simulated start: None (now) when absent, `now` minus a span for `-6h` (s, m, h, d), else ISO 8601.

    Raises:
        ValueError: neither form.
    """
    if not text:
        return None
    relative = RELATIVE_START.fullmatch(text)
    if relative:
        return now - timedelta(seconds=float(relative[1]) * UNIT_S[relative[2]])
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"start={text!r}: use ISO 8601 (2024-03-15T00:00:00+08:00) or a span ago (-6h)") from None


class FakeClock:
    """A clock that moves only when told: `advance(seconds)` moves both times together."""

    def __init__(self, start: datetime, *, speed: float = 1.0) -> None:
        self.speed = speed
        self._sim = start.astimezone(UTC)
        self._real = 0.0

    def sim_now(self) -> datetime:
        return self._sim

    def real_now(self) -> float:
        return self._real

    def advance(self, sim_seconds: float = 0.0, *, real_seconds: float | None = None) -> None:
        """Move simulated time by `sim_seconds`; network time by `real_seconds` (default sim/speed)."""
        self._sim += timedelta(seconds=sim_seconds)
        self._real += sim_seconds / self.speed if real_seconds is None else real_seconds

    def real_delay_until(self, moment: datetime) -> float:
        return max(0.0, (moment - self._sim).total_seconds() / self.speed)

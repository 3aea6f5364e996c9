"""How often a device sends each kind of data, learned from its own DataTimes (pure).

HJ 212-2017 fixes two periods: hour data (2061) every hour and day data (2031) every day. The
others are the device's settings: minute data (2051) every MinInterval minutes (one of 1, 2, 3,
4, 5, 6, 10, 12, 15, 20, 30) and real-time data (2011) every RtdInterval seconds (30–3600). A
`Cadence` learns such a period from consecutive DataTimes: the smallest step seen at least
twice among the recent ones. A gap makes one long step (never smaller than the period), a
duplicate or an out-of-order packet none, and a single off-grid packet two short steps that are
not repeated; so the learned period survives dropouts, resends and the odd late packet. The
registry can fix a device's period instead.
"""

from collections import deque
from datetime import datetime, timedelta

MIN_INTERVALS_MIN = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30)
"""The MinInterval values HJ 212-2017 allows (minutes)."""

FIXED_PERIODS = {"2061": timedelta(hours=1), "2031": timedelta(days=1)}
"""Periods the standard fixes: hour and day data."""

GRID_CNS = ("2051", "2061", "2031")
"""The kinds of data whose DataTime lies on a grid of periods (minute, hour, day)."""

_RTD_RANGE = (timedelta(seconds=1), timedelta(hours=1))  # 30–3600 s by the standard; 1 s tolerated
_RECENT = 16  # steps remembered
_MIN_REPEAT = 2  # a step counts once seen this often among the recent ones


def _snap_minutes(step: timedelta) -> timedelta | None:
    """A minute-data step as a standard MinInterval (to the minute), or None if it is none."""
    seconds = step.total_seconds()
    if seconds % 60:
        return None
    minutes = int(seconds // 60)
    return step if minutes in MIN_INTERVALS_MIN else None


class Cadence:
    """The period of one (MN, CN) series: fixed (the standard's or the registry's) or learned."""

    __slots__ = ("_fixed", "_last", "_learned", "_steps", "cn")

    def __init__(self, cn: str, fixed: timedelta | None = None) -> None:
        self.cn = cn
        self._fixed = fixed if fixed is not None else FIXED_PERIODS.get(cn)
        self._last: datetime | None = None
        self._steps: deque[timedelta] = deque(maxlen=_RECENT)
        self._learned: timedelta | None = None

    @property
    def period(self) -> timedelta | None:
        """The expected time between two packets of this series; None until learned."""
        return self._fixed if self._fixed is not None else self._learned

    @property
    def fixed(self) -> bool:
        return self._fixed is not None

    def observe(self, data_time: datetime) -> None:
        """One more DataTime of the series (any order; O(1) amortised)."""
        last = self._last
        if last is None or data_time > last:
            self._last = data_time
        if self._fixed is not None or last is None or data_time <= last:
            return
        delta = data_time - last
        if delta == self._learned:  # nearly every packet: valid, and it cannot lower the period
            self._steps.append(delta)
            return
        step = self._valid_step(delta)
        if step is None:
            return
        self._steps.append(step)
        # A step equal to the period (nearly every packet) cannot lower it: no recount (it cost
        # 3 µs a packet, ten times the rest of the device state's per-packet work).
        if self._learned is None or step < self._learned:
            self._learned = self._relearn()

    def _valid_step(self, step: timedelta) -> timedelta | None:
        if self.cn == "2051":
            return _snap_minutes(step)
        if step < _RTD_RANGE[0] or step > _RTD_RANGE[1]:
            return None
        return step

    def _relearn(self) -> timedelta | None:
        counts: dict[timedelta, int] = {}
        for step in self._steps:
            counts[step] = counts.get(step, 0) + 1
        repeated = [step for step, n in counts.items() if n >= _MIN_REPEAT]
        return min(repeated) if repeated else self._learned

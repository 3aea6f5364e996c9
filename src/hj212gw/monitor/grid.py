"""The periods of one (MN, CN) series on its DataTime grid: which are stored, which are missing (pure).

A series of minute (2051), hour (2061) or day (2031) data should hold one packet per period. The
grid numbers the periods: period `i` starts at `origin + i × period` (the tracker puts the origin
on a midnight of the device's time zone, so hours and days fall where the device's clock puts
them). A DataTime counts for the period that contains it: an off-grid DataTime (10:03 in a
ten-minute series, 10:59:59 for hour data) is snapped down to its period's start, so a device
whose clock stamps a little late still fills its periods, and two packets in one period count
once.

What the grid keeps is the span [first, top] and the sorted runs of missing periods in it
(`Run`, inclusive period numbers); every period of the span is either stored or in exactly one
run, and two runs never touch (a stored period lies between any two). `first` and `last` are the
oldest and newest stored periods; `top` is `last`, or beyond it once `extend_to` has said that
later periods are overdue (the tail: the run from `last` + 1 to `top` that grows while a device
is silent). An arrival after `top` is O(1); one inside the span finds its run by bisection and
splits, shrinks or closes it; one before `first` opens the run between. Any arrival order of the
same periods gives the same runs.

Runs keep their identity as they shrink, so their owner can keep its own data on them (a row id,
a status): a split keeps the older piece in the original run and makes a new one for the newer
piece (`split_from` names the original). Every run created, changed or filled is appended to
`touched` for the owner to drain. No clock, no I/O, imports nothing of hj212gw.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from operator import attrgetter

_START = attrgetter("start")


class Run:
    """A run of missing periods [start, end] (inclusive period numbers).

    `filled` once every period of it arrived; then start and end stay as they were last missing.
    `tag` is the owner's (a row id, a status); `split_from` is the run this one was cut from."""

    __slots__ = ("end", "filled", "split_from", "start", "tag")

    def __init__(self, start: int, end: int, split_from: Run | None = None, tag: object = None) -> None:
        self.start = start
        self.end = end
        self.filled = False
        self.split_from = split_from
        self.tag = tag

    @property
    def periods(self) -> int:
        """How many periods are missing (0 once filled)."""
        return 0 if self.filled else self.end - self.start + 1

    def __repr__(self) -> str:
        return f"Run({self.start}, {self.end}{', filled' if self.filled else ''})"


class Grid:
    """Stored and missing periods of one series; see the module docstring.

    Args:
        period_s: the series' period in seconds (60 × MinInterval, 3600, 86400).
        origin_s: a period start, as Unix seconds (a midnight of the device's zone).
    """

    __slots__ = ("first", "last", "missing", "origin_s", "period_s", "runs", "top", "touched")

    def __init__(self, period_s: int, origin_s: int = 0) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s must be positive, not {period_s}")
        self.period_s = period_s
        self.origin_s = origin_s
        self.first: int | None = None  # oldest stored period
        self.last: int | None = None  # newest stored period
        self.top: int | None = None  # newest period accounted for (stored, or overdue)
        self.runs: list[Run] = []  # missing runs, sorted, never touching
        self.missing = 0  # periods in runs
        self.touched: list[Run] = []  # runs created, changed or filled since the owner drained it

    @classmethod
    def restore(cls, period_s: int, origin_s: int, first: int, last: int, runs: Iterable[Run]) -> Grid:
        """A grid as it was saved: stored span [first, last] and its runs (a run after `last` is the
        tail). Raises ValueError for runs that overlap, touch or cover `first` or `last`."""
        grid = cls(period_s, origin_s)
        grid.first, grid.last = first, last
        grid.runs = sorted(runs, key=_START)
        previous_end = first - 1  # stored periods: `first`, and one at least between any two runs
        for run in grid.runs:
            if run.start <= previous_end + 1 or run.end < run.start or run.start <= last <= run.end:
                raise ValueError(f"run {run} is empty, touches a neighbour or covers a stored end ({first}, {last})")
            previous_end = run.end
        grid.top = max(last, grid.runs[-1].end) if grid.runs else last
        grid.missing = sum(run.periods for run in grid.runs)
        return grid

    # -- time <-> period number ----------------------------------------------------------------

    def index_of(self, t: datetime) -> int:
        """The period containing `t` (an aware datetime): off-grid times snap down."""
        return (int(t.timestamp()) - self.origin_s) // self.period_s

    def start_of(self, index: int) -> datetime:
        """The start of period `index`, in UTC."""
        return datetime.fromtimestamp(self.origin_s + index * self.period_s, UTC)

    def due_index(self, now: datetime, grace: timedelta) -> int:
        """The newest period that should have arrived by `now`: its end plus `grace` has passed."""
        return (int(now.timestamp() - grace.total_seconds()) - self.origin_s) // self.period_s - 1

    @property
    def span(self) -> int:
        """Periods from `first` to `top` (0 while empty)."""
        return 0 if self.first is None or self.top is None else self.top - self.first + 1

    @property
    def stored(self) -> int:
        return self.span - self.missing

    # -- changes -------------------------------------------------------------------------------

    def add(self, index: int) -> bool:
        """Period `index` is stored; False if it was already. O(1) after `top`, else O(log runs)
        plus a list insert or delete for a split or a closed run."""
        top = self.top
        if top is None:
            self.first = self.last = self.top = index
            return True
        if index > top:
            if index > top + 1:
                runs = self.runs
                if top != self.last:  # the tail run ends at top: it grows to the new arrival
                    self._grow(runs[-1], index - 1)
                else:
                    self._open(len(runs), Run(top + 1, index - 1))
            self.last = self.top = index
            return True
        first = self.first
        assert first is not None and self.last is not None
        if index < first:
            if index < first - 1:
                self._open(0, Run(index + 1, first - 1))
            self.first = index
            return True
        position = bisect_right(self.runs, index, key=_START) - 1
        if position < 0 or self.runs[position].end < index:
            return False  # inside the span and in no run: stored already
        self._fill(position, index)
        if index > self.last:
            self.last = index
        return True

    def extend_to(self, index: int) -> bool:
        """Every period up to `index` should have arrived: the tail run grows to it. False if
        nothing changed (empty grid, or `index` not after `top`)."""
        top = self.top
        if top is None or index <= top:
            return False
        if top != self.last:
            self._grow(self.runs[-1], index)
        else:
            self._open(len(self.runs), Run(top + 1, index))
        self.top = index
        return True

    def run_at(self, index: int) -> Run | None:
        """The run holding period `index`, if it is missing."""
        position = bisect_right(self.runs, index, key=_START) - 1
        if position >= 0 and self.runs[position].end >= index:
            return self.runs[position]
        return None

    def runs_between(self, start: int, end: int) -> list[Run]:
        """The runs that hold some period of [start, end]."""
        position = max(bisect_right(self.runs, start, key=_START) - 1, 0)
        found = []
        for run in self.runs[position:]:
            if run.start > end:
                break
            if run.end >= start:
                found.append(run)
        return found

    def drain(self) -> list[Run]:
        """The runs touched since the last drain, each once, in the order first touched."""
        touched, self.touched = self.touched, []
        return list(dict.fromkeys(touched))

    # -- internals -----------------------------------------------------------------------------

    def _open(self, position: int, run: Run) -> None:
        self.runs.insert(position, run)
        self.missing += run.periods
        self.touched.append(run)

    def _grow(self, run: Run, end: int) -> None:
        self.missing += end - run.end
        run.end = end
        self.touched.append(run)

    def _fill(self, position: int, index: int) -> None:
        """Period `index` of runs[position] arrived: close, shrink or split that run."""
        run = self.runs[position]
        self.missing -= 1
        touched = self.touched
        if not touched or touched[-1] is not run:  # a run filled in order is listed once, not per period
            touched.append(run)
        if run.start == run.end:
            del self.runs[position]
            run.filled = True
        elif index == run.start:
            run.start += 1
        elif index == run.end:
            run.end -= 1
        else:
            newer = Run(index + 1, run.end, split_from=run)
            run.end = index - 1
            self.runs.insert(position + 1, newer)
            self.touched.append(newer)

"""One (MN, CN) series in the gap tracker: its cadence, its grid and the state of each gap (pure).

Hour and day data have the standard's periods from their first packet. Minute data's period is
learned (`Cadence`): until it is known the series has no grid and reports no gap; its first
DataTimes are kept (up to `EARLY_KEPT`) and go onto the grid the moment the period is known, so
gaps are measured from the first packet seen. If the learned period changes later (a device set
to another MinInterval), the series starts a new grid from that packet and its old gaps end as
`given_up` with reason `period_changed` (their periods no longer exist on the new grid).

`GapState` is what a run of missing periods carries besides its range (`Run.tag`): its row id,
status, requests, reason and times; `Gap` is how the backfill and the API see a run. No clock, no
I/O: `now` is passed in.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

from hj212gw.monitor.cadence import Cadence
from hj212gw.monitor.grid import Grid, Run

EARLY_KEPT = 16
PERIOD_CHANGED = "period_changed"
REQUESTABLE = ("open", "requested")  # the statuses that turn dormant past the horizon


class Gap(NamedTuple):
    """A gap as the backfill and the API see it; start and end are inclusive period starts (UTC)."""

    id: int
    mn: str
    cn: str
    start: datetime
    end: datetime
    periods: int
    status: str
    requests: int
    reason: str | None


def grid_origin(device_timezone: str) -> int:
    """Unix seconds of a midnight in the device's zone: the origin of every grid."""
    return int(datetime(2000, 1, 1, tzinfo=ZoneInfo(device_timezone)).timestamp())


class GapState:
    """The owner's side of a run: row id (None until allocated), status and request history."""

    __slots__ = ("id", "last_requested_at", "opened_at", "reason", "requests", "status")

    def __init__(
        self,
        status: str,
        opened_at: datetime,
        *,
        gap_id: int | None = None,
        requests: int = 0,
        reason: str | None = None,
        last_requested_at: datetime | None = None,
    ) -> None:
        self.id = gap_id
        self.status = status
        self.opened_at = opened_at
        self.requests = requests
        self.reason = reason
        self.last_requested_at = last_requested_at

    def copy(self) -> GapState:
        """The state of a run split off this one: the same status and history, no row yet."""
        return GapState(
            self.status, self.opened_at, requests=self.requests, reason=self.reason,
            last_requested_at=self.last_requested_at,
        )  # fmt: skip


class Series:
    """A series' grid (None until its period is known) and what it needs to grow its tail."""

    __slots__ = ("cadence", "check_at", "cn", "early", "grace_s", "grid", "mn", "origin_s", "period", "retired")

    def __init__(
        self, mn: str, cn: str, origin_s: int, grace_s: float, period: timedelta | None = None, *, fixed: bool = False
    ) -> None:
        """`period`: a restored series' (the cadence may learn another), or the registry's if `fixed`."""
        self.mn = mn
        self.cn = cn
        self.origin_s = origin_s
        self.grace_s = grace_s
        self.cadence = Cadence(cn, fixed=period if fixed else None) if cn == "2051" else None
        self.period = period if period is not None else (Cadence(cn).period if self.cadence is None else None)
        self.grid = Grid(int(self.period.total_seconds()), origin_s) if self.period is not None else None
        self.early: list[datetime] = []
        self.retired: list[tuple[Run, int, str]] = []  # (run, its period_s, why) no longer on the grid
        self.check_at = 0.0  # Unix time of the next tail or horizon change (the scan's threshold)

    def arrive(self, data_time: datetime) -> bool:
        """One stored DataTime: O(1) after the newest period, O(log gaps) before it.

        True if the series changed in more than its newest period: a gap opened, grew, split or
        closed, its oldest period or its period changed. False for the usual arrival, the next
        period after the newest (or one stored already): only `last` moved, which a restart can
        read back from `data` (storage.gaps.TAILS_SQL), so it need not be written at once. False
        too when that next period is the first of a tail gap that stays open (a device catching up
        in order after silence, or data older than the clock): the gap only starts one period
        later, which the same read-back restores."""
        cadence = self.cadence
        if cadence is not None:
            cadence.observe(data_time)
            period = cadence.period
            if period is not None and period != self.period:  # learned (a restored grid keeps its own till then)
                self._regrid(period, data_time)
                return True
        grid = self.grid
        if grid is None:
            if len(self.early) < EARLY_KEPT:
                self.early.append(data_time)
            return False
        index = grid.index_of(data_time)
        top = grid.top
        last = grid.last
        if top is not None and last is not None and index == last + 1:
            if top == last:
                grid.add(index)  # the next period, no tail run: only `last` and `top` move
                return False
            if index < top:
                grid.add(index)  # the tail run starts one period later, and `last` moves
                return False
        return grid.add(index)

    def _regrid(self, period: timedelta, data_time: datetime) -> None:
        """The minute period is known, or changed: a grid from the first DataTimes kept."""
        if self.grid is not None:
            self.retired.extend((run, self.grid.period_s, PERIOD_CHANGED) for run in self.grid.runs)
        self.period = period
        self.grid = Grid(int(period.total_seconds()), self.origin_s)
        for early in (*self.early, data_time):
            self.grid.add(self.grid.index_of(early))
        self.early = []

    def scan(self, now: datetime, horizon: timedelta) -> bool:
        """Grow the tail to the newest period overdue at `now` and turn runs wholly older than the
        horizon dormant; True if anything changed."""
        grid = self.grid
        if grid is None:
            return False
        changed = grid.extend_to(grid.due_index(now, timedelta(seconds=self.grace_s)))
        oldest_kept = grid.index_of(now - horizon)
        for run in grid.runs:
            if run.end >= oldest_kept:
                break
            state = run.tag
            if isinstance(state, GapState) and state.status in REQUESTABLE:
                state.status = "dormant"
                grid.touched.append(run)
                changed = True
        self.check_at = self.next_check(horizon)
        return changed

    def next_check(self, horizon: timedelta) -> float:
        """When `scan` next has work: the next period falls due, or a run passes the horizon."""
        grid = self.grid
        if grid is None or grid.top is None:
            return float("inf")
        period = grid.period_s
        due_at = grid.origin_s + (grid.top + 2) * period + self.grace_s
        for run in grid.runs:
            state = run.tag
            if not isinstance(state, GapState) or state.status in REQUESTABLE:
                return min(due_at, grid.origin_s + (run.end + 1) * period + horizon.total_seconds())
        return due_at

    def state_of(self, run: Run, now: datetime, horizon: timedelta) -> GapState:
        """The run's state, made on first sight: new (`dormant` if wholly older than the horizon,
        else `open`), or inherited from the run it was split from (its requests and times; its
        status if `requested` or `given_up`: a piece of a dormant or filled run is judged anew)."""
        state = run.tag
        if isinstance(state, GapState):
            return state
        assert self.grid is not None
        derived = "dormant" if run.end < self.grid.index_of(now - horizon) else "open"
        parent = run.split_from.tag if run.split_from is not None else None
        if isinstance(parent, GapState):
            state = parent.copy()
            if state.status not in ("requested", "given_up"):  # dormant or filled by the run's own end
                state.status = derived
        else:
            state = GapState(derived, now)
        run.tag = state
        return state

"""`GapTracker`: the gaps of every series this replica follows, kept in memory and written in the
background (issue #12 item 2; docs/monitoring.md "Gaps").

A `DeviceListener`: `stored` puts each committed packet of minute, hour or day data (not
time_suspect) on its series' grid (series.py, grid.py): O(1) for the next period, O(log gaps)
for a late one, no I/O. `run` (supervised) wakes every `gaps.flush_s`: it loads the devices that
appeared on this replica (claiming their series from PostgreSQL, so state survives restarts and
moves between replicas; arrivals meanwhile wait in memory), grows the tails of silent series and
turns gaps older than the horizon dormant (`scan`, cheap: one comparison per series until one
has work), and writes the series and gaps that changed in one transaction. A device another
replica claimed is written no more and forgotten here.

The backfill's interface: `open_gaps(mn)` (oldest first), `mark_requested`, `give_up`, and
`recheck` (puts the periods stored in `data` for a gap onto its grid). Imports storage and ingest
types, never the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta

import structlog

from hj212gw.monitor.cadence import GRID_CNS
from hj212gw.monitor.grid import Grid, Run
from hj212gw.monitor.hub import StoredData
from hj212gw.monitor.series import REQUESTABLE, Gap, GapState, Series, grid_origin
from hj212gw.settings import GapSettings
from hj212gw.storage.db import DATABASE_ERRORS, is_retryable
from hj212gw.storage.gaps import GapRow, GapStore, SeriesRow

_LOG = structlog.get_logger("hj212gw.gaps")
MAX_PENDING = 200_000  # arrivals waiting for their device's load, all devices together
SCAN_SLICE = 2000  # series scanned between two turns of the event loop
INCONSISTENT = "inconsistent_rows"  # a gap's reason when its saved rows did not fit its series
Work = tuple[Series, Run, int, bool]  # a run to write: its series, its period_s, retired from the grid


class GapTracker:
    """Gaps of the series of this replica's devices; see the module docstring."""

    def __init__(
        self,
        store: GapStore,
        settings: GapSettings,
        *,
        owner: str,
        device_timezone: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        fixed_periods: Callable[[], Mapping[str, Mapping[str, timedelta]]] = dict,
    ) -> None:
        self.store = store
        self.fixed_periods = fixed_periods  # MN -> CN -> period the registry fixes (read for a new series)
        self.settings = settings
        self.owner = owner
        self.clock = clock
        self.origin_s = grid_origin(device_timezone)
        self.horizon = timedelta(days=settings.horizon_days)
        self.grace_s = {"2051": settings.grace_minute_s, "2061": settings.grace_hour_s, "2031": settings.grace_day_s}
        self.series: dict[tuple[str, str], Series] = {}
        self._of_mn: dict[str, list[Series]] = {}  # the same series by device (the backfill asks per device)
        self._by_id: dict[int, tuple[Series, Run]] = {}
        self._dirty: set[Series] = set()  # gaps or span changed: written in the next round
        self._advanced: set[Series] = set()  # only newer data: written every series_write_s
        self.monotonic = time.monotonic
        self._advanced_due = self.monotonic() + settings.series_write_s  # the next write of `_advanced`
        self._loaded: set[str] = set()
        self._to_load: set[str] = set()
        self._released: set[str] = set()  # devices that left this replica (claimed again if they return)
        self._pending: dict[str, list[StoredData]] = {}
        self._pending_count = 0
        self._dropped = 0  # arrivals beyond MAX_PENDING since the last round (one WARNING per round)
        self._restored = False
        self._failing = False

    # -- DeviceListener: on the event loop, no I/O --------------------------------------------

    def bound(self, mn: str, connection_id: int | None, peer: str, now: datetime) -> None:
        """A device appears here: load it, or, back after it left, claim it again (another replica
        may have changed it meanwhile: its arrivals wait until the claim says whether it did)."""
        if mn in self._released:
            self._released.discard(mn)
            self._loaded.discard(mn)
        if mn not in self._loaded:
            self._to_load.add(mn)

    def released(self, mn: str, connection_id: int | None, cause: str, now: datetime) -> None:
        """The device left: its tail keeps growing here until it comes back or another replica claims it."""
        self._released.add(mn)

    def stored(self, data: StoredData) -> None:
        if data.time_suspect or data.cn not in GRID_CNS:
            return
        mn = data.mn
        if mn not in self._loaded:
            self._to_load.add(mn)
            if self._pending_count < MAX_PENDING:
                self._pending.setdefault(mn, []).append(data)
                self._pending_count += 1
            else:
                self._dropped += 1
            return
        series = self.series.get((mn, data.cn))
        if series is None:
            series = self._add(self._new_series(mn, data.cn))
        if series.arrive(data.data_time):
            self._dirty.add(series)
        else:
            self._advanced.add(series)

    def _add(self, series: Series) -> Series:
        self.series[(series.mn, series.cn)] = series
        self._of_mn.setdefault(series.mn, []).append(series)
        return series

    def _new_series(self, mn: str, cn: str) -> Series:
        fixed = self.fixed_periods().get(mn, {}).get(cn) if cn == "2051" else None
        return Series(mn, cn, self.origin_s, self.grace_s[cn], fixed, fixed=fixed is not None)

    # -- the background task ------------------------------------------------------------------

    async def run(self) -> None:
        """Load, scan and write every `flush_s` (supervised by the gateway)."""
        while True:
            await asyncio.sleep(self.settings.flush_s)
            await self.flush()

    async def flush(self, *, loading: bool = True) -> None:
        """One round: load devices that appeared (unless not `loading`: the last round at stop),
        scan, write what changed. A database outage keeps everything for the next round (one
        WARNING when writing starts failing); any other database error is raised."""
        now = self.clock()
        try:
            if loading:
                await self._load()
            if self._dropped:
                _LOG.warning("gaps_arrivals_dropped", count=self._dropped, waiting=self._pending_count)
                self._dropped = 0
            await self._scan_in_slices(now)
            await self._write(now, everything=not loading)
        except DATABASE_ERRORS as err:
            if not self._failing:
                _LOG.warning("gaps_flush_failed", error=type(err).__name__, detail=str(err)[:200])
            self._failing = is_retryable(err)
            if not self._failing:
                raise
            return
        if self._failing:
            _LOG.info("gaps_flush_recovered")
        self._failing = False

    def scan(self, now: datetime, some: Iterable[Series] | None = None) -> int:
        """Grow tails and apply the horizon where due, in every series (or `some`); returns how
        many series changed."""
        now_s = now.timestamp()
        changed = 0
        for series in self.series.values() if some is None else some:
            if series.check_at <= now_s and series.scan(now, self.horizon):
                self._dirty.add(series)
                changed += 1
        return changed

    async def _scan_in_slices(self, now: datetime) -> None:
        """`scan` SCAN_SLICE series at a time, letting the event loop run between slices: when
        every device is silent, all minute series of one MinInterval fall due in the same second
        (about 3.5 µs each; 20,000 at once would hold acks back for 70 ms)."""
        every = list(self.series.values())
        for start in range(0, len(every), SCAN_SLICE):
            self.scan(now, every[start : start + SCAN_SLICE])
            await asyncio.sleep(0)

    async def _load(self) -> None:
        if not self._restored:
            claimed = await self.store.claim(self.owner, None)
            self._adopt(claimed.series, claimed.gaps, {row.mn for row in claimed.series}, claimed.tails)
            self._restored = True
        self._to_load -= self._loaded  # loaded meanwhile (by the restart's load)
        if self._to_load:
            mns = sorted(self._to_load)
            claimed = await self.store.claim(self.owner, mns)
            self._to_load.difference_update(mns)
            for mn in claimed.taken:  # what this replica still keeps of it is older than the rows
                self._evict(mn)
            self._adopt(claimed.series, claimed.gaps, set(mns), claimed.tails)

    def _adopt(
        self,
        series_rows: Iterable[SeriesRow],
        gap_rows: Iterable[GapRow],
        mns: set[str],
        tails: Mapping[tuple[str, str], list[datetime]] | None = None,
    ) -> None:
        """Build the series loaded for `mns` with the periods stored after their rows were last
        written (`tails`), then put the arrivals that waited for them on top."""
        runs: dict[tuple[str, str], list[GapRow]] = {}
        for gap in gap_rows:
            runs.setdefault((gap.mn, gap.cn), []).append(gap)
        for row in series_rows:
            key = (row.mn, row.cn)
            if row.cn in GRID_CNS and key not in self.series:
                series = self._restore(row, runs.get(key, []))
                tail = tails.get(key) if tails else None
                if tail and any([series.arrive(data_time) for data_time in tail]):
                    self._dirty.add(series)
                elif tail:
                    self._advanced.add(series)
        self._loaded |= mns
        for mn in mns:
            waiting = self._pending.pop(mn, [])
            self._pending_count -= len(waiting)
            for data in waiting:
                self.stored(data)

    def _restore(self, row: SeriesRow, gaps: list[GapRow]) -> Series:
        series = Series(row.mn, row.cn, self.origin_s, self.grace_s[row.cn], timedelta(seconds=row.period_s))
        grid = series.grid
        assert grid is not None
        runs = []
        for gap in gaps:
            state = GapState(
                gap.status, gap.opened_at, gap_id=gap.id, requests=gap.requests, reason=gap.reason,
                last_requested_at=gap.last_requested_at,
            )  # fmt: skip
            runs.append(Run(grid.index_of(gap.start_time), grid.index_of(gap.end_time), tag=state))
        try:
            series.grid = Grid.restore(
                grid.period_s, self.origin_s, grid.index_of(row.first_time), grid.index_of(row.last_time), runs
            )
        except ValueError as err:  # rows another version wrote differently: start again from the span
            _LOG.warning("gaps_restore_inconsistent", mn=row.mn, cn=row.cn, detail=str(err)[:200])
            series.grid = Grid.restore(
                grid.period_s, self.origin_s, grid.index_of(row.first_time), grid.index_of(row.last_time), []
            )
            series.retired.extend((run, grid.period_s, INCONSISTENT) for run in runs)
            self._dirty.add(series)
        for run in series.grid.runs:
            restored = run.tag
            assert isinstance(restored, GapState) and restored.id is not None
            self._by_id[restored.id] = (series, run)
        series.check_at = series.next_check(self.horizon)
        return self._add(series)

    async def _write(self, now: datetime, *, everything: bool = False) -> None:
        """Write the series whose gaps changed; those that only got newer data every
        `series_write_s` (and all of them at the last round, `everything`)."""
        dirty, self._dirty = self._dirty, set()
        if self._advanced and (everything or self.monotonic() >= self._advanced_due):
            dirty |= self._advanced
            self._advanced = set()
            self._advanced_due = self.monotonic() + self.settings.series_write_s
        work: list[Work] = []
        try:
            rows, work = self._collect(dirty, now)
            unnumbered = [run.tag for _, run, _, _ in work if isinstance(run.tag, GapState) and run.tag.id is None]
            if unnumbered:
                for state, gap_id in zip(unnumbered, await self.store.new_ids(len(unnumbered)), strict=True):
                    assert isinstance(state, GapState)
                    state.id = gap_id
            gaps = [self._gap_row(series, run, period_s, now) for series, run, period_s, _ in work]
            lost = await self.store.save(self.owner, rows, gaps) if rows or gaps else set()
        except BaseException:
            self._dirty |= dirty
            for series, run, period_s, retired in work:
                if retired:
                    assert isinstance(run.tag, GapState)
                    series.retired.append((run, period_s, run.tag.reason or INCONSISTENT))
                elif series.grid is not None:
                    series.grid.touched.append(run)
            raise
        for series, run, _, retired in work:
            written = run.tag
            assert isinstance(written, GapState) and written.id is not None
            if run.filled or retired:
                self._by_id.pop(written.id, None)
            else:
                self._by_id[written.id] = (series, run)
        for mn in lost:
            self._evict(mn)

    def _collect(self, dirty: set[Series], now: datetime) -> tuple[list[SeriesRow], list[Work]]:
        """Series rows and the runs to write (states settled; filled runs never written are dropped)."""
        rows: list[SeriesRow] = []
        work: list[Work] = []
        for series in dirty:
            grid = series.grid
            if grid is None or grid.first is None or grid.last is None:
                continue  # minute data whose period is not known yet
            rows.append(
                SeriesRow(series.mn, series.cn, grid.period_s, grid.start_of(grid.first), grid.start_of(grid.last),
                          self.owner, now)
            )  # fmt: skip
            oldest_kept = grid.index_of(now - self.horizon)
            for run in grid.drain():
                state = series.state_of(run, now, self.horizon)
                if run.filled:
                    if state.id is None:
                        continue
                    state.status = "filled"
                elif state.status in REQUESTABLE and run.end < oldest_kept:
                    state.status = "dormant"
                work.append((series, run, grid.period_s, False))
            for run, period_s, reason in series.retired:
                state = series.state_of(run, now, self.horizon)
                state.status, state.reason = "given_up", reason
                work.append((series, run, period_s, True))
            series.retired = []
            series.check_at = series.next_check(self.horizon)
        return rows, work

    def _gap_row(self, series: Series, run: Run, period_s: int, now: datetime) -> GapRow:
        state = run.tag
        assert isinstance(state, GapState) and state.id is not None
        start = datetime.fromtimestamp(self.origin_s + run.start * period_s, UTC)
        end = datetime.fromtimestamp(self.origin_s + run.end * period_s, UTC)
        return GapRow(
            state.id, series.mn, series.cn, start, end, run.periods, state.status, state.requests, state.reason,
            state.opened_at, now, state.last_requested_at,
        )  # fmt: skip

    def _evict(self, mn: str) -> None:
        """Another replica claimed `mn`: forget it here (reloaded if it comes back)."""
        for series in self._of_mn.pop(mn, ()):
            del self.series[(series.mn, series.cn)]
            self._dirty.discard(series)
            self._advanced.discard(series)
            for run in series.grid.runs if series.grid is not None else ():
                if isinstance(run.tag, GapState) and run.tag.id is not None:
                    self._by_id.pop(run.tag.id, None)
        self._loaded.discard(mn)

    # -- the backfill's interface -------------------------------------------------------------

    def open_gaps(self, mn: str, cn: str | None = None) -> list[Gap]:
        """The open gaps of `mn` (of `cn` only, if given) that have a row, oldest first."""
        found = []
        for series in self._of_mn.get(mn, ()):
            if (cn is not None and series.cn != cn) or series.grid is None:
                continue
            for run in series.grid.runs:
                state = run.tag
                if isinstance(state, GapState) and state.id is not None and state.status == "open":
                    found.append(self._view(series, run, state))
        return sorted(found, key=lambda gap: (gap.start, gap.id))

    # -- for the backfill (monitor.backfill.GapSource) ---------------------------------------

    def requestable_gaps(self, mn: str) -> list[Gap]:
        """The open and requested gaps of `mn` that have a row, oldest first (three lookups, no scan)."""
        found = []
        for cn in GRID_CNS:
            series = self.series.get((mn, cn))
            if series is None or series.grid is None:
                continue
            for run in series.grid.runs:
                state = run.tag
                if isinstance(state, GapState) and state.id is not None and state.status in REQUESTABLE:
                    found.append(self._view(series, run, state))
        return sorted(found, key=lambda gap: (gap.start, gap.id))

    def mns_with_requestable_gaps(self) -> set[str]:
        """Every MN tracked here with an open or requested gap (the backfill's periodic sweep)."""
        return {
            mn
            for (mn, _cn), series in self.series.items()
            if series.grid is not None
            and any(isinstance(r.tag, GapState) and r.tag.status in REQUESTABLE for r in series.grid.runs)
        }

    def period_of(self, mn: str, cn: str) -> timedelta | None:
        series = self.series.get((mn, cn))
        return series.period if series is not None and series.grid is not None else None

    def missing_in(self, mn: str, cn: str, start: datetime, end: datetime) -> int:
        """Periods of the series missing between two period starts (inclusive)."""
        series = self.series.get((mn, cn))
        if series is None or series.grid is None:
            return 0
        grid = series.grid
        first, last = grid.index_of(start), grid.index_of(end)
        return sum(
            min(run.end, last) - max(run.start, first) + 1 for run in grid.runs_between(first, last) if not run.filled
        )

    def gap(self, gap_id: int) -> Gap | None:
        """A gap still missing some period, or None (filled, unknown, or not tracked here)."""
        held = self._by_id.get(gap_id)
        if held is None or held[1].filled or not isinstance(held[1].tag, GapState):
            return None
        return self._view(held[0], held[1], held[1].tag)

    def mark_requested(self, gap_id: int, now: datetime) -> bool:
        """A history fetch for the gap was sent; False if the gap is not tracked here."""
        return self._change(gap_id, lambda state: _requested(state, now))

    def give_up(self, gap_id: int, reason: str) -> bool:
        """The gap will not be requested again (`reason`: e.g. exe_rtn_100, retries_exhausted)."""
        return self._change(gap_id, lambda state: _given_up(state, reason))

    async def recheck(self, gap_id: int) -> Gap | None:
        """Put the periods stored in `data` within the gap onto its grid (what arrived through
        another replica or before this one loaded the device); returns what is still missing of it."""
        held = self._by_id.get(gap_id)
        if held is None or held[0].grid is None:
            return None
        series, run = held
        grid = series.grid
        assert grid is not None
        for data_time in await self.store.stored_times(
            series.mn, series.cn, grid.start_of(run.start), grid.start_of(run.end + 1) - timedelta(microseconds=1)
        ):
            series.arrive(data_time)
        self._dirty.add(series)
        return self.gap(gap_id)

    def _change(self, gap_id: int, change: Callable[[GapState], None]) -> bool:
        held = self._by_id.get(gap_id)
        if held is None or held[1].filled or held[0].grid is None or not isinstance(held[1].tag, GapState):
            return False
        change(held[1].tag)
        held[0].grid.touched.append(held[1])
        self._dirty.add(held[0])
        return True

    def _view(self, series: Series, run: Run, state: GapState) -> Gap:
        grid = series.grid
        assert grid is not None and state.id is not None
        return Gap(
            state.id, series.mn, series.cn, grid.start_of(run.start), grid.start_of(run.end), run.periods,
            state.status, state.requests, state.reason,
        )  # fmt: skip

    # -- metrics ------------------------------------------------------------------------------

    def totals(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(cn, status) -> (gaps, missing periods) of every unfilled gap tracked here."""
        totals: dict[tuple[str, str], tuple[int, int]] = {}
        for (_, cn), series in self.series.items():
            for run in series.grid.runs if series.grid is not None else ():
                status = run.tag.status if isinstance(run.tag, GapState) else "open"
                gaps, periods = totals.get((cn, status), (0, 0))
                totals[(cn, status)] = (gaps + 1, periods + run.periods)
        return totals


def _requested(state: GapState, now: datetime) -> None:
    state.status, state.requests, state.last_requested_at = "requested", state.requests + 1, now


def _given_up(state: GapState, reason: str) -> None:
    state.status, state.reason = "given_up", reason

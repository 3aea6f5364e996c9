"""`LeaderScans`: the rules that look at everything at once, run by the elected replica only.

Every `alerts.scan_s` the leader reads the current device states, the given-up gaps and the firing
alerts, runs `rules.scan.scan` (device_offline/silent beyond tolerance, gap_given_up,
fault_over_24h, fault_not_restored on the working-day calendar) and applies the difference. The
same round turns the revisions recorded in `data_versions` since the last round into
`value_revised` alerts (Art. 29(6)); its position is kept in `rule_cursors`, so a newly elected
replica continues where the last one stopped. Stateless apart from that cursor: whichever replica
leads computes the same alerts. Thresholds and the calendar are read through callables, so a
reload takes effect at the next round.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from hj212gw.alerts.engine import AlertEngine
from hj212gw.rules.calendar import WorkCalendar
from hj212gw.rules.changes import value_revised
from hj212gw.rules.model import ActiveAlert, AlertChange, AlertKey, DeviceStatus, GapView, Severity, ValueRevised
from hj212gw.rules.scan import SCAN_RULES, scan
from hj212gw.rules.thresholds import Thresholds
from hj212gw.storage import rule_inputs as sql
from hj212gw.storage.db import DATABASE_ERRORS, Database, is_retryable

_LOG = structlog.get_logger("hj212gw.alerts")
REVISIONS = "value_revised"  # the rule_cursors row of the data_versions scan
REVISIONS_PER_ROUND = 5000
_READ_RULES = (*SCAN_RULES, "flag_episode")  # the scan's own, and the D episodes it escalates


class LeaderScans:
    """One round every `interval_s` while leading (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        engine: AlertEngine,
        thresholds: Callable[[], Thresholds],
        calendar: Callable[[], WorkCalendar],
        *,
        interval_s: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.engine = engine
        self.thresholds = thresholds
        self.calendar = calendar
        self.interval_s = interval_s
        self.clock = clock
        self._failing = False
        self._unknown_years_told: set[int] = set()

    async def run(self) -> None:
        """Rounds for as long as this replica leads (the leader cancels it when it stops leading)."""
        while True:
            try:
                await self.round()
            except DATABASE_ERRORS as err:
                if not is_retryable(err):
                    raise
                if not self._failing:
                    _LOG.warning("rule_scan_failed", error=type(err).__name__, detail=str(err)[:200])
                self._failing = True
            else:
                if self._failing:
                    _LOG.info("rule_scan_recovered")
                self._failing = False
            await asyncio.sleep(self.interval_s)

    async def round(self) -> list[AlertChange]:
        """One scan: read, judge, apply; returns the changes applied."""
        now = self.clock()
        async with self.db.pool.acquire() as conn:
            states = await sql.fetch_states(conn)
            given_up = await sql.fetch_given_up(conn)
            firing = await sql.fetch_firing_alerts(conn, _READ_RULES)
        devices = [DeviceStatus(r.mn, r.state, None, r.since, r.cause) for r in states]
        gaps = [GapView(r.mn, r.cn, r.start_time, r.end_time, r.periods, "given_up", r.reason) for r in given_up]
        active = [
            ActiveAlert(AlertKey(r.rule, r.mn, r.factor, r.detail), Severity(r.severity), r.starts_at, r.details)
            for r in firing
        ]
        calendar = self.calendar()
        changes = scan(now, devices, gaps, active, self.thresholds(), calendar)
        for year in sorted(calendar.unknown_years - self._unknown_years_told):
            _LOG.warning("working_calendar_year_unknown", year=year, assumed="Monday to Friday",
                         fix="alerts.calendar_file with that year's holidays and make-up days")  # fmt: skip
            self._unknown_years_told.add(year)
        if changes:
            await self.engine.apply(changes)
        return changes + await self._revisions()

    async def _revisions(self) -> list[AlertChange]:
        """`value_revised` for the data_versions rows since the cursor (the first leader ever
        starts at the end: history recorded before the rules existed is not alerted)."""
        async with self.db.pool.acquire() as conn:
            after = await sql.fetch_cursor(conn, REVISIONS)
            if after is None:
                await sql.save_cursor(conn, REVISIONS, await sql.fetch_revisions_end(conn))
                return []
            rows = await sql.fetch_revisions(conn, after, REVISIONS_PER_ROUND)
        if not rows:
            return []
        changes: list[AlertChange] = []
        for r in rows:
            if r.old != r.new:
                changes.extend(value_revised(ValueRevised(r.mn, r.cn, r.factor, r.data_time, r.old, r.new, r.at)))
        if changes:
            await self.engine.apply(changes)
        async with self.db.pool.acquire() as conn:
            await sql.save_cursor(conn, REVISIONS, rows[-1].id)
        return changes

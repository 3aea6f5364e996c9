"""`DeviceTracker`: the device state machine (state.py) of one replica, fed by the hub's signals,
scanned about once a second and persisted in batches (storage.device_state), never per packet.

- Signals: `bound`, `released`, `stored` (a `hub.DeviceListener`). A device this replica does not
  follow yet (new here: first seen, back from offline, moved from another replica) is followed
  only once its persisted row is read, so a move or a restart keeps its `since` and last data: its
  signals wait for the next flush (about a second), in order.
- Scan (`run_scan`): overdue devices turn silent.
- Flush (`run_flush`): transitions to `device_events`, changed devices to `device_state`, in one
  transaction a second (a device whose only change is new data: every `last_data_interval_s`);
  offline devices are then no longer followed (their row is their state).
  While PostgreSQL is down both wait (bounded) and go with the next flush.
- Replicas: a heartbeat in `gateway_leases` every quarter lease; a replica that finds another's
  lease expired takes that replica's devices offline (`gateway_lost`); a replica that was found
  lost but lives reports its devices again (`gateway_resumed`). A lease after its start, a
  gateway takes offline the devices it held before that did not come back to it
  (`gateway_restarted`); those that did were followed again from their rows, `since` and all.
- Registry periods (`devices.min_interval_min`, `rtd_interval_s`) are reloaded with the registry.

Every transition is also handed, as it happens, to the `subscribers` (rules and alerts, issue #13).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from hj212gw.metrics import Metrics
from hj212gw.monitor.hub import StoredData
from hj212gw.monitor.state import (
    DeviceSnapshot,
    DeviceState,
    DeviceStateChanged,
    DeviceStates,
    SeriesSnapshot,
    StatePolicy,
)
from hj212gw.settings import DeviceStateSettings
from hj212gw.storage.db import DATABASE_ERRORS, OUTAGE_ERRORS, is_retryable
from hj212gw.storage.device_state import DeviceEventRow, DeviceStateRow, DeviceStateStore, FixedPeriods

_LOG = structlog.get_logger("hj212gw.monitor")
_MAX_PENDING_EVENTS = 200_000  # kept while PostgreSQL is down; beyond, the oldest are dropped (counted)

Signal = tuple[str, int | None, str, datetime] | StoredData


class DeviceTracker:
    """Device state of the MNs this replica sees; a `hub.DeviceListener`."""

    def __init__(
        self,
        store: DeviceStateStore,
        settings: DeviceStateSettings,
        gateway_id: str,
        metrics: Metrics,
        *,
        registry_refresh_s: float = 30.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        policy = StatePolicy(tolerance=settings.tolerance, floor=timedelta(seconds=settings.floor_s))
        self.states = DeviceStates(gateway_id, policy)
        self.store = store
        self.settings = settings
        self.gateway_id = gateway_id
        self.metrics = metrics
        self.registry_refresh_s = registry_refresh_s
        self.clock = clock
        self.subscribers: list[Callable[[DeviceStateChanged], object]] = []
        self._events: list[DeviceStateChanged] = []  # not yet stored
        self._waiting: dict[str, list[Signal]] = {}  # MN -> its signals until its row is read
        self._offline_here = 0  # devices last held here that are offline (from the table)
        self._started_at: datetime | None = None  # PostgreSQL's time of this run's first lease
        self._data_stored_at = time.monotonic()  # when last data alone was last written

    # -- hub.DeviceListener (on the event loop, for every connection and packet) ---------------

    def bound(self, mn: str, connection_id: int | None, peer: str, now: datetime) -> None:
        if mn in self.states and mn not in self._waiting:
            self._publish(self.states.bound(mn, connection_id, now))
        else:
            self._waiting.setdefault(mn, []).append(("bound", connection_id, peer, now))

    def released(self, mn: str, connection_id: int | None, cause: str, now: datetime) -> None:
        waiting = self._waiting.get(mn)
        if waiting is not None:
            waiting.append(("released", connection_id, cause, now))
        else:
            self._publish(self.states.released(mn, connection_id, cause, now))

    def stored(self, data: StoredData) -> None:
        if self._waiting and (waiting := self._waiting.get(data.mn)) is not None:
            waiting.append(data)
            return
        event = self.states.stored(data.mn, data.cn, data.data_time, data.received_at, backfill=data.backfill)
        if event is not None:
            self._publish(event)

    def _publish(self, event: DeviceStateChanged | None) -> None:
        if event is None:
            return
        if len(self._events) >= _MAX_PENDING_EVENTS:
            del self._events[0]
            _LOG.warning("device_event_dropped", mn=event.mn, pending=len(self._events))
        self._events.append(event)
        self.metrics.device_transitions.labels(state=event.new.value, cause=event.cause).inc()
        for subscriber in self.subscribers:
            try:
                subscriber(event)
            except Exception:
                _LOG.exception("device_subscriber_bug", mn=event.mn)

    # -- start, scan, flush --------------------------------------------------------------------

    async def load(self) -> None:
        """Take this replica's lease (nobody takes its devices over while it starts); read the
        registry's periods."""
        self._started_at = await self.store.start_lease(self.gateway_id)
        await self.refresh()

    async def refresh(self) -> None:
        """Registry periods and the count of offline devices (for the gauge)."""
        self.states.fixed = fixed_periods(await self.store.fetch_fixed_periods())
        self._offline_here = await self.store.count_offline(self.gateway_id)

    def scan(self) -> None:
        for event in self.states.scan(self.clock()):
            self._publish(event)
        counts = self.states.counts
        self.metrics.devices.labels(state="online").set(counts[DeviceState.ONLINE])
        self.metrics.devices.labels(state="silent").set(counts[DeviceState.SILENT])
        self.metrics.devices.labels(state="offline").set(self._offline_here)

    async def run_scan(self) -> None:
        while True:
            await asyncio.sleep(self.settings.scan_interval_s)
            self.scan()

    async def run_flush(self) -> None:
        """Flush every second, heartbeat every quarter lease, reload periods with the registry, and
        once, a lease after the start, take offline what the previous run held and did not get back."""
        started = last_lease = last_refresh = time.monotonic()
        down = False
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.flush()
                now = time.monotonic()
                if now - last_lease >= self.settings.lease_s / 4:
                    await self.heartbeat()
                    last_lease = now
                if now - last_refresh >= self.registry_refresh_s:
                    await self.refresh()
                    last_refresh = now
                if self._started_at is not None and now - started >= self.settings.lease_s:
                    await self.take_over_restart(self._started_at)
                    self._started_at = None
            except OUTAGE_ERRORS:
                if not down:
                    _LOG.warning("device_state_not_stored", reason="database unavailable")
                down = True
            except asyncpg.PostgresError as err:  # a refused statement must not end the flushes
                _LOG.warning("device_state_not_stored", reason=type(err).__name__, detail=str(err)[:200])
            else:
                down = False

    async def heartbeat(self) -> None:
        """Renew this replica's lease; publish the transitions of devices taken over from lost ones."""
        lost, rows = await self.store.heartbeat_and_take_over(self.gateway_id, self.settings.lease_s)
        if lost:  # cut off from PostgreSQL longer than a lease: another replica took our devices offline
            _LOG.warning("gateway_lease_lost", gateway_id=self.gateway_id)
            for event in self.states.resume(self.clock()):
                self._publish(event)
        self._published_by_sql(rows, "gateway_lost", {"taken_over_by": self.gateway_id})

    async def take_over_restart(self, started_at: datetime) -> None:
        """Take offline the devices the previous run held that did not come back to this one."""
        await self.flush(with_data=True)  # what this run follows is written first
        followed = [*self.states.mns(), *self._waiting]
        rows = await self.store.take_over_restart(self.gateway_id, started_at, followed)
        self._published_by_sql(rows, "gateway_restarted", {})

    def _published_by_sql(self, rows: list[dict[str, Any]], cause: str, details: dict[str, object]) -> None:
        """Transitions PostgreSQL made and stored itself (takeovers): counted, logged, published."""
        for row in rows:
            previous = DeviceState(row["previous"]) if row["previous"] else None
            event = DeviceStateChanged(
                row["mn"], previous, DeviceState.OFFLINE, row["at"], cause, row["gateway_id"] or "",
                row["connection_id"], details,
            )  # fmt: skip
            _LOG.info("device_taken_offline", mn=event.mn, cause=cause, gateway=event.replica)
            self.metrics.device_transitions.labels(state="offline", cause=cause).inc()
            for subscriber in self.subscribers:
                try:
                    subscriber(event)
                except Exception:
                    _LOG.exception("device_subscriber_bug", mn=event.mn)

    async def flush(self, *, with_data: bool | None = None) -> None:
        """Read the rows of newly seen devices and replay their signals; store what changed (devices
        whose only change is new data: every `last_data_interval_s`, or if `with_data`)."""
        if self._waiting:
            await self._follow_waiting()
        if with_data is None:
            with_data = time.monotonic() - self._data_stored_at >= self.settings.last_data_interval_s
        if with_data:
            self._data_stored_at = time.monotonic()
        events, self._events = self._events, []
        snapshots = self.states.take_changed(with_data=with_data)
        if not events and not snapshots:
            return
        event_rows = [event_row(e) for e in events]
        state_rows = [state_row(s, self.gateway_id) for s in snapshots]
        try:
            await self._save(event_rows, state_rows)
        except (*OUTAGE_ERRORS, asyncpg.PostgresError):
            self._events[:0] = events
            self.states.changed.update(s.mn for s in snapshots)
            raise
        for snapshot in snapshots:
            if self.states.done_with(snapshot.mn):
                self.states.forget(snapshot.mn)

    async def _save(self, events: list[DeviceEventRow], rows: list[DeviceStateRow]) -> None:
        """One transaction; if PostgreSQL refuses a row (not an outage), each alone, the refused dropped."""
        try:
            await self.store.save(events, rows)
            return
        except DATABASE_ERRORS as err:
            if is_retryable(err):
                raise
        singles: list[tuple[list[DeviceEventRow], list[DeviceStateRow]]] = [([e], []) for e in events]
        singles += [([], [r]) for r in rows]
        for one in singles:
            try:
                await self.store.save(*one)
            except DATABASE_ERRORS as err:
                if is_retryable(err):
                    raise
                _LOG.warning("device_state_rejected_by_database", row=repr(one)[:200], error=type(err).__name__)

    async def _follow_waiting(self) -> None:
        mns = list(self._waiting)
        try:
            rows = {row["mn"]: row for row in await self.store.fetch(mns)}
        except OUTAGE_ERRORS:
            rows = {}  # followed from scratch: their `since` and last data start again here
        for mn in mns:
            signals = self._waiting.pop(mn)
            row = rows.get(mn)
            if row is not None and mn not in self.states:
                self.states.restore(snapshot_of(row))
            for signal in signals:
                self._replay(mn, signal)

    def _replay(self, mn: str, signal: Signal) -> None:
        match signal:
            case StoredData():
                self._publish(self.states.stored(mn, signal.cn, signal.data_time, signal.received_at))
            case ("bound", connection_id, _peer, now):
                self._publish(self.states.bound(mn, connection_id, now))
            case ("released", connection_id, cause, now):
                self._publish(self.states.released(mn, connection_id, cause, now))


# -- rows <-> snapshots ----------------------------------------------------------------------------


def event_row(event: DeviceStateChanged) -> DeviceEventRow:
    old = event.old.value if event.old is not None else None
    return DeviceEventRow(
        event.mn, event.since, event.new.value, old, event.cause, event.replica, event.connection_id,
        dict(event.details),
    )  # fmt: skip


def state_row(snapshot: DeviceSnapshot, gateway_id: str) -> DeviceStateRow:
    last_data = {
        cn: {"data_time": s.data_time.isoformat(), "received_at": s.received_at.isoformat()}
        for cn, s in snapshot.series.items()
    }
    periods = {cn: s.period.total_seconds() for cn, s in snapshot.series.items() if s.period is not None}
    return DeviceStateRow(
        snapshot.mn, snapshot.state.value, snapshot.since, snapshot.cause, gateway_id, snapshot.connection_id,
        snapshot.bound_at, last_data, periods,
    )  # fmt: skip


def snapshot_of(row: dict[str, Any]) -> DeviceSnapshot:
    periods = row["periods"] or {}
    series = {
        cn: SeriesSnapshot(
            datetime.fromisoformat(last["data_time"]),
            datetime.fromisoformat(last["received_at"]),
            timedelta(seconds=periods[cn]) if cn in periods else None,
        )
        for cn, last in (row["last_data"] or {}).items()
    }
    return DeviceSnapshot(
        row["mn"], DeviceState(row["state"]), row["since"], row["cause"], row["connection_id"], row["bound_at"],
        series,
    )  # fmt: skip


def fixed_periods(rows: list[FixedPeriods]) -> dict[str, dict[str, timedelta]]:
    """MN -> CN -> period, as the registry fixes them: MinInterval for 2051, RtdInterval for 2011."""
    fixed: dict[str, dict[str, timedelta]] = {}
    for row in rows:
        periods = fixed[row.mn] = {}
        if row.min_interval_min is not None:
            periods["2051"] = timedelta(minutes=row.min_interval_min)
        if row.rtd_interval_s is not None:
            periods["2011"] = timedelta(seconds=row.rtd_interval_s)
    return fixed

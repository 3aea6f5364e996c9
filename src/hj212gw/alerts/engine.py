"""`AlertEngine`: turns the rules' Fire and Clear changes into alert rows and outbox entries.

The lifecycle (docs/alerts.md, "Lifecycle"): a Fire with no firing alert of its fingerprint raises
one (`firing` outbox entry); a Fire on a firing alert updates its value and details, throttled
(`alerts.update_interval_s`, `update_change_ratio`), with no outbox entry; a Clear resolves it
(`resolved` entry). A batch is ONE transaction: alert changes and their outbox entries commit
together or not at all. The engine keeps the fingerprints firing in memory (loaded by `refresh`,
which the gateway repeats every `alerts.refresh_s` so alerts raised or resolved by another
replica are seen), so a Clear for an alert that does not fire costs no query. The database, not
the memory, decides a raise: the unique partial index lets two replicas raise one alert once
(Art. 20(9) wants every alert answered, so none may be lost or doubled). Reminders of
unacknowledged alerts are the elected replica's (`remind`). SQL: storage.alerts.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
import structlog

from hj212gw.alerts.payload import alert_payload
from hj212gw.rules.model import AlertChange, Clear, Fire
from hj212gw.settings import AlertSettings
from hj212gw.storage import alerts as sql
from hj212gw.storage.db import CONFLICT_ERRORS, DATABASE_ERRORS, Database, is_retryable

_LOG = structlog.get_logger("hj212gw.alerts")
CONFLICT_ATTEMPTS = 3  # a deadlock between replicas' batches is retried this often


class AlertObserver(Protocol):
    """Metrics hooks; metrics.py provides the Prometheus implementation."""

    def alert_changes(self, change: str, count: int) -> None: ...
    def alerts_firing(self, counts: Mapping[tuple[str, str], int]) -> None: ...
    def alert_outbox_backlog(self, backlog: Sequence[tuple[str, int, float | None]]) -> None: ...


class _NullObserver:
    def alert_changes(self, change: str, count: int) -> None:
        pass

    def alerts_firing(self, counts: Mapping[tuple[str, str], int]) -> None:
        pass

    def alert_outbox_backlog(self, backlog: Sequence[tuple[str, int, float | None]]) -> None:
        pass


@dataclass(slots=True)
class Applied:
    """What one `apply` wrote: alert ids raised, updated fingerprints, alert ids resolved."""

    raised: list[int] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Written:
    """The last value of a firing alert written to the database, and when (engine clock)."""

    value: float | None
    at: datetime | None


def _rounds(changes: Sequence[AlertChange]) -> list[dict[str, AlertChange]]:
    """The batch as rounds holding at most one change per fingerprint, in order; runs of Fires
    (or of Clears) for one fingerprint collapse into one (the last Fire, the first Clear)."""
    rounds: list[dict[str, AlertChange]] = []
    depth: dict[str, int] = {}
    for change in changes:
        fp = change.key.fingerprint
        index = depth.get(fp)
        if index is not None:
            last = rounds[index][fp]
            if isinstance(change, Fire) and isinstance(last, Fire):
                rounds[index][fp] = change
                continue
            if isinstance(change, Clear) and isinstance(last, Clear):
                continue
            index += 1
        else:
            index = 0
        if index == len(rounds):
            rounds.append({})
        rounds[index][fp] = change
        depth[fp] = index
    return rounds


def _new_alert(fire: Fire) -> sql.NewAlert:
    key = fire.key
    return sql.NewAlert(
        key.fingerprint, key.rule, fire.severity.value, key.mn, key.factor, key.detail, fire.summary_zh,
        fire.summary_en, fire.article, fire.value, fire.threshold, fire.details, fire.started_at,
    )  # fmt: skip


def outbox_entry(row: Mapping[str, Any], change: str) -> sql.OutboxEntry:
    """The outbox entry of a change (`firing`, `resolved`, `acknowledged`, `reminder`) of this alert row."""
    return sql.OutboxEntry(uuid.uuid4(), int(row["id"]), change, alert_payload(row))


class _Batch:
    """The firing set as one transaction sees it: the engine's, plus what this batch changed."""

    def __init__(self, firing: set[str]) -> None:
        self.base = firing
        self.added: set[str] = set()
        self.added_mns: set[str] = set()  # the MNs of what this batch raised
        self.removed: set[str] = set()
        self.written: dict[str, _Written] = {}
        self.applied = Applied()
        self.outbox: list[sql.OutboxEntry] = []

    def fires(self, fp: str) -> bool:
        return fp in self.added or (fp in self.base and fp not in self.removed)

    def set_firing(self, fp: str, firing: bool) -> None:
        (self.added if firing else self.removed).add(fp)
        (self.removed if firing else self.added).discard(fp)


class AlertEngine:
    """Applies alert changes for one gateway replica (see the module docstring).

    Args:
        db: the gateway's (writable) database.
        gateway_id: this replica's name, stored with each alert it raises.
        settings: `alerts` settings (throttle, refresh and reminder periods).
        observer: metrics hooks.
        clock: now, aware (tests pass a fake one).
    """

    def __init__(
        self,
        db: Database,
        gateway_id: str,
        settings: AlertSettings,
        *,
        observer: AlertObserver | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.db = db
        self.gateway_id = gateway_id
        self.settings = settings
        self.observer: AlertObserver = observer or _NullObserver()
        self.clock = clock or (lambda: datetime.now(UTC))
        self.firing: set[str] = set()
        # The MNs with an alert firing, or that had one since the last refresh (a superset: a Clear
        # of any other MN's key is dropped without its fingerprint, a SHA-256 per key; a device's
        # first data clears every flag letter and rule of every factor, ~70 keys).
        self._firing_mns: set[str] = set()
        self._written: dict[str, _Written] = {}
        self._lock = asyncio.Lock()  # one batch (or refresh) at a time: the in-memory set follows commits
        self._failing = False

    async def apply(self, changes: Sequence[AlertChange]) -> Applied:
        """Write a batch of changes in one transaction (retried after a deadlock with another
        replica); the in-memory state changes only once it committed. Raises the database's errors."""
        now = self.clock()
        if not any(self._needs_write(change, now) for change in changes):
            return Applied()  # Clears of alerts that do not fire, throttled Fires: no query at all
        rounds = _rounds(changes)
        async with self._lock:
            for attempt in range(1, CONFLICT_ATTEMPTS + 1):
                try:
                    batch = await self._write(rounds, now)
                    break
                except CONFLICT_ERRORS:
                    if attempt == CONFLICT_ATTEMPTS:
                        raise
            self.firing = (self.firing - batch.removed) | batch.added
            self._firing_mns |= batch.added_mns
            for fp in batch.removed:
                self._written.pop(fp, None)
            self._written.update(batch.written)
        for change, done in (("firing", batch.applied.raised), ("resolved", batch.applied.resolved)):
            if done:
                self.observer.alert_changes(change, len(done))
        if batch.applied.updated:
            self.observer.alert_changes("updated", len(batch.applied.updated))
        return batch.applied

    def _needs_write(self, change: AlertChange, now: datetime) -> bool:
        if isinstance(change, Clear):
            return change.key.mn in self._firing_mns and change.key.fingerprint in self.firing
        firing = change.key.fingerprint in self.firing
        return not firing or self._due(change, now)

    async def _write(self, rounds: list[dict[str, AlertChange]], now: datetime) -> _Batch:
        batch = _Batch(self.firing)
        async with self.db.pool.acquire() as conn, conn.transaction():
            for changes in rounds:
                await self._apply_round(conn, changes, batch, now)
            await sql.save_outbox(conn, batch.outbox)
        return batch

    async def _apply_round(
        self, conn: asyncpg.Connection, changes: dict[str, AlertChange], batch: _Batch, now: datetime
    ) -> None:
        clears = [c for c in changes.values() if isinstance(c, Clear) and batch.fires(c.key.fingerprint)]
        fires = [c for c in changes.values() if isinstance(c, Fire)]
        if clears:  # a Clear for an alert that does not fire was dropped above, without a query
            resolved = await sql.resolve_alerts(conn, [(c.key.fingerprint, c.at, c.value) for c in clears], now)
            for c in clears:
                batch.set_firing(c.key.fingerprint, False)
            for row in resolved:
                batch.applied.resolved.append(row["id"])
                batch.outbox.append(outbox_entry(row, "resolved"))
        updates = [f for f in fires if batch.fires(f.key.fingerprint) and self._due(f, now)]
        still = await sql.update_alerts(
            conn, [sql.AlertUpdate(f.key.fingerprint, f.value, f.details) for f in updates], now
        )
        for f in updates:
            fp = f.key.fingerprint
            if fp in still:
                batch.written[fp] = _Written(f.value, now)
                batch.applied.updated.append(fp)
            else:  # resolved meanwhile by another replica: the condition holds here, raise it anew
                batch.set_firing(fp, False)
        await self._raise(conn, [f for f in fires if not batch.fires(f.key.fingerprint)], batch, now)

    async def _raise(self, conn: asyncpg.Connection, fires: list[Fire], batch: _Batch, now: datetime) -> None:
        rows = await sql.raise_alerts(conn, [_new_alert(f) for f in fires], now, self.gateway_id)
        raised = {row["fingerprint"] for row in rows}
        for row in rows:
            batch.applied.raised.append(row["id"])
            batch.outbox.append(outbox_entry(row, "firing"))
        for f in fires:
            fp = f.key.fingerprint
            batch.set_firing(fp, True)
            batch.added_mns.add(f.key.mn)
            # Raised here: written now. Raised by another replica first: its value is not ours,
            # so the next Fire writes.
            batch.written[fp] = _Written(f.value, now) if fp in raised else _Written(None, None)

    def _due(self, fire: Fire, now: datetime) -> bool:
        """Whether a Fire on a firing alert is written now: its value moved by more than
        `update_change_ratio`, or `update_interval_s` passed since the last write."""
        last = self._written.get(fire.key.fingerprint)
        if last is None or last.at is None:
            return True
        if (now - last.at).total_seconds() >= self.settings.update_interval_s:
            return True
        if fire.value is None or last.value is None:
            return fire.value is not last.value
        return abs(fire.value - last.value) > self.settings.update_change_ratio * abs(last.value)

    async def refresh(self) -> None:
        """Reload the firing fingerprints (others' raises and resolutions) and report the
        firing counts and the outbox backlog to the observer."""
        async with self._lock, self.db.pool.acquire() as conn:
            firing = await sql.fetch_firing(conn)
            backlog = await sql.fetch_backlog(conn)
            self.firing = {fp for fp, _, _, _ in firing}
            self._firing_mns = {mn for _, _, _, mn in firing}
            self._written = {fp: w for fp, w in self._written.items() if fp in self.firing}
        counts: dict[tuple[str, str], int] = {}
        for _, rule, severity, _ in firing:
            counts[(rule, severity)] = counts.get((rule, severity), 0) + 1
        now = self.clock()
        self.observer.alerts_firing(counts)
        self.observer.alert_outbox_backlog(
            [(sink, depth, None if oldest is None else max(0.0, (now - oldest).total_seconds()))
             for sink, depth, oldest in backlog]
        )  # fmt: skip

    async def remind(self) -> int:
        """Outbox `reminder` entries for firing alerts unacknowledged for `alerts.reminder_s`
        (the elected replica's job); how many. Nothing when reminders are off (0)."""
        if self.settings.reminder_s <= 0:
            return 0
        async with self.db.pool.acquire() as conn, conn.transaction():
            rows = await sql.remind_due(conn, self.clock(), self.settings.reminder_s)
            await sql.save_outbox(conn, [outbox_entry(row, "reminder") for row in rows])
        if rows:
            self.observer.alert_changes("reminder", len(rows))
        return len(rows)

    async def run_refresh(self) -> None:
        """Refresh every `alerts.refresh_s` (a supervised task on every replica)."""
        while True:
            await self._outage_tolerant("alerts_refresh_failed", self.refresh)
            await asyncio.sleep(self.settings.refresh_s)

    async def run_reminders(self) -> None:
        """Send due reminders every `alerts.refresh_s` (run while this replica is the leader)."""
        while True:
            await self._outage_tolerant("alerts_remind_failed", self.remind)
            await asyncio.sleep(self.settings.refresh_s)

    async def _outage_tolerant(self, event: str, step: Callable[[], Any]) -> None:
        """Run one step; an outage is one WARNING (and one INFO when it ends), anything else raises."""
        try:
            await step()
        except DATABASE_ERRORS as err:
            if not is_retryable(err):
                raise
            if not self._failing:
                _LOG.warning(event, error=type(err).__name__, detail=str(err)[:200])
            self._failing = True
            return
        if self._failing:
            _LOG.info("alerts_database_recovered")
        self._failing = False

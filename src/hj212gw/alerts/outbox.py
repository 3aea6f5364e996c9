"""Delivery of the alert outbox to one sink (MQTT, Alertmanager, webhook), with its own cursor.

The loop reads settled entries after the sink's cursor in delivery order (txid, id; see
storage.alert_outbox), hands them to the sink, and moves the cursor only past entries the sink
confirmed (PUBACK, HTTP 2xx) or refused for good (logged, counted). A sink that fails is
retried with jittered exponential backoff; its `Dependency` logs one WARNING when it goes down
and one INFO when it is back. Nothing is ever dropped for an outage: entries wait in PostgreSQL.

It runs only while `is_leader()` says this replica is the elected one, and it wakes on
`NOTIFY hj212gw_alerts` (`AlertNotifications`) or else every `poll_interval_s`. Delivery is at
least once: a replica that dies (or loses the leadership) after a PUBACK but before moving the
cursor leaves entries the next leader sends again. Consumers dedupe by the CloudEvent `id`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import asyncpg
import structlog

from hj212gw.alerts.health import Backoff, Dependency, NullObserver, SinkObserver
from hj212gw.settings import AlertSinkSettings
from hj212gw.storage.alert_outbox import AlertOutbox, OutboxCursor, OutboxEntry
from hj212gw.storage.db import RETRYABLE_ERRORS, Database
from hj212gw.waiting import wait_set

_LOG = structlog.get_logger("hj212gw.alerts")
# Entries committed but behind an older transaction still running: look again this soon first
# (doubling up to poll_interval_s), so that they leave within milliseconds of becoming settled.
_SETTLE_FIRST_S = 0.01
_LISTEN_PING_S = 30.0  # how often the idle LISTEN connection is checked


class SinkDown(Exception):
    """The sink could not confirm every entry; the first `delivered` of them were confirmed."""

    def __init__(self, reason: str, delivered: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delivered = delivered


@dataclass(frozen=True, slots=True)
class Refusal:
    """An entry the receiver refused for good (HTTP 400/422: no retry can succeed)."""

    entry: OutboxEntry
    reason: str


class Sink(Protocol):
    """Where outbox entries go. `name` is the cursor's key and the metric label."""

    name: str
    dependency: Dependency

    async def deliver(self, entries: Sequence[OutboxEntry]) -> Sequence[Refusal]:
        """Deliver in order; return what was refused for good.

        Raises:
            SinkDown: not every entry was confirmed (its `delivered` leading ones were).
        """
        ...


class OutboxDelivery:
    """One sink's delivery loop (`run`, a supervised task); `wake()` after a NOTIFY."""

    def __init__(
        self,
        db: Database,
        sink: Sink,
        is_leader: Callable[[], bool],
        *,
        settings: AlertSinkSettings | None = None,
        observer: SinkObserver | None = None,
    ) -> None:
        self.sink = sink
        self.is_leader = is_leader
        self.settings = settings or AlertSinkSettings()
        self.observer: SinkObserver = observer or NullObserver()
        self.outbox = AlertOutbox(db)
        self.cursor: OutboxCursor | None = None  # None: read it from the database first
        self._wake = asyncio.Event()
        self._backoff = Backoff(self.settings.backoff_initial_s, self.settings.backoff_max_s)
        self._db_backoff = Backoff(self.settings.backoff_initial_s, self.settings.backoff_max_s)
        self.log = _LOG.bind(sink=sink.name)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Deliver while this replica leads; forever (cancel to stop)."""
        settle_s = _SETTLE_FIRST_S
        while True:
            if not self.is_leader():
                self.cursor = None  # the next leader term starts from what the last leader stored
                self._wake.clear()  # a NOTIFY wakes every replica: left set, the idle below would spin
                await self._idle(self.settings.poll_interval_s)
                continue
            self._wake.clear()  # before reading: a NOTIFY during the read wakes the next wait
            try:
                more, unsettled = await self.deliver_once()
            except RETRYABLE_ERRORS as err:  # PostgreSQL is away: the writer reports that outage
                self.log.debug("outbox_read_failed", error=str(err))
                self.cursor = None
                await asyncio.sleep(self._db_backoff.next_s())
                continue
            self._db_backoff.reset()
            if more:
                settle_s = _SETTLE_FIRST_S
            elif unsettled:
                await self._idle(settle_s)
                settle_s = min(settle_s * 2, self.settings.poll_interval_s)
            else:
                await self._idle(self.settings.poll_interval_s)

    async def deliver_once(self) -> tuple[bool, bool]:
        """Read one batch and deliver it: (entries were delivered, entries wait to settle)."""
        if self.cursor is None:
            self.cursor = await self.outbox.fetch_cursor(self.sink.name)
        batch = await self.outbox.fetch_batch(self.cursor, self.settings.batch_size)
        if not batch.entries:
            return False, batch.unsettled
        return await self._deliver(batch.entries), batch.unsettled

    async def _deliver(self, entries: Sequence[OutboxEntry]) -> bool:
        try:
            refusals = await self.sink.deliver(entries)
        except SinkDown as err:
            self.observer.alert_publish_failed(self.sink.name)
            self.sink.dependency.down(err.reason)
            if err.delivered:
                await self._advance(entries[: err.delivered], ())
            await asyncio.sleep(self._backoff.next_s())  # not woken by NOTIFYs: the sink is down
            return False
        self.sink.dependency.up()
        self._backoff.reset()
        for refusal in refusals:
            self.observer.alert_publish_failed(self.sink.name)
            self.log.warning(
                "alert_refused", event_id=str(refusal.entry.event_id), alert_id=refusal.entry.alert_id,
                reason=refusal.reason,
            )  # fmt: skip
        await self._advance(entries, refusals)
        return True

    async def _advance(self, entries: Sequence[OutboxEntry], refusals: Sequence[Refusal]) -> None:
        position = entries[-1].position
        # Counted before the cursor write: the receiver has them even if the write fails.
        self.observer.alerts_sent(self.sink.name, len(entries) - len(refusals))
        await self.outbox.advance_cursor(self.sink.name, position)
        self.cursor = position

    async def _idle(self, timeout_s: float) -> None:
        await wait_set(self._wake, timeout_s)


class AlertNotifications:
    """Holds a dedicated connection listening on `hj212gw_alerts` and wakes the deliveries on
    each notification; reopens it when lost (the deliveries poll meanwhile). A supervised task."""

    def __init__(
        self, db: Database, deliveries: Sequence[OutboxDelivery], *, settings: AlertSinkSettings | None = None
    ) -> None:
        self.outbox = AlertOutbox(db)
        self.deliveries = list(deliveries)
        settings = settings or AlertSinkSettings()
        self._backoff = Backoff(settings.backoff_initial_s, settings.backoff_max_s)

    def _notified(self, *_args: object) -> None:
        for delivery in self.deliveries:
            delivery.wake()

    async def run(self) -> None:
        while True:
            try:
                conn = await self.outbox.listen(self._notified)
            except RETRYABLE_ERRORS:
                await asyncio.sleep(self._backoff.next_s())
                continue
            self._backoff.reset()
            lost = asyncio.Event()
            conn.add_termination_listener(_setter(lost))
            self._notified()  # whatever was notified while nobody listened
            try:
                await self._until_lost(conn, lost)
            finally:
                with contextlib.suppress(*RETRYABLE_ERRORS, asyncpg.PostgresError):  # closing a lost link
                    await conn.close(timeout=2)

    @staticmethod
    async def _until_lost(conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        """Returns when the connection ends, or (a silent network cut) fails a ping."""
        while not lost.is_set():
            if await wait_set(lost, _LISTEN_PING_S):
                return
            try:
                await conn.execute("SELECT 1", timeout=_LISTEN_PING_S)
            except (*RETRYABLE_ERRORS, asyncpg.PostgresError):
                return


class OutboxRetention:
    """Deletes outbox entries older than `alert_sinks.outbox_retention_days`, delivered or not,
    every `interval_s` while this replica leads (the `alerts` table keeps the record). A
    supervised task."""

    def __init__(
        self,
        db: Database,
        is_leader: Callable[[], bool],
        *,
        settings: AlertSinkSettings | None = None,
        interval_s: float = 3600.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.outbox = AlertOutbox(db)
        self.is_leader = is_leader
        self.retention = timedelta(days=(settings or AlertSinkSettings()).outbox_retention_days)
        self.interval_s = interval_s
        self.clock = clock

    async def prune_once(self) -> int:
        """Delete what is past the retention now; how many entries."""
        deleted = await self.outbox.prune(self.clock() - self.retention)
        if deleted:
            _LOG.info("outbox_pruned", entries=deleted, retention_days=self.retention.days)
        return deleted

    async def run(self) -> None:
        while True:
            if self.is_leader():
                with contextlib.suppress(*RETRYABLE_ERRORS):  # PostgreSQL away: next time
                    await self.prune_once()
            await asyncio.sleep(self.interval_s)


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _conn: event.set()

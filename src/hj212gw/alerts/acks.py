"""Acknowledging an alert: who, when, with what note, and the outbox entry that tells the sinks.

Art. 20(9) asks that alerts be answered in time: the acknowledgement is stored on the alert
(`acked_at`, `acked_by`, `ack_note`), so the response time is `acked_at - starts_at` (shown by the
API as `response_s`), and an `acknowledged` outbox entry is written in the same transaction. An
alert is acknowledged once; firing or already resolved alike. SQL: storage.alerts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from hj212gw.alerts.engine import AlertObserver, outbox_entry
from hj212gw.storage import alerts as sql
from hj212gw.storage.db import Database


@dataclass(frozen=True, slots=True)
class AckOutcome:
    """`acknowledged` (now, by this call), `already` (before: the row shows by whom), `unknown` (no such alert)."""

    outcome: Literal["acknowledged", "already", "unknown"]
    alert: dict[str, Any] | None


class AlertAcks:
    """Acknowledgements on a writable `Database` (the gateway's pool, not the API's read-only one)."""

    def __init__(self, db: Database, observer: AlertObserver | None = None) -> None:
        self.db = db
        self.observer = observer

    async def acknowledge(self, alert_id: int, *, by: str, note: str | None, at: datetime | None = None) -> AckOutcome:
        """Acknowledge alert `alert_id` now (or `at`) and queue its `acknowledged` entry."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            row = await sql.acknowledge(conn, alert_id, at=at or datetime.now(UTC), by=by, note=note)
            if row is not None:
                await sql.save_outbox(conn, [outbox_entry(row, "acknowledged")])
            else:
                existing = await sql.fetch_alert(conn, alert_id)
        if row is not None:
            if self.observer is not None:
                self.observer.alert_changes("acknowledged", 1)
            return AckOutcome("acknowledged", row)
        return AckOutcome("unknown" if existing is None else "already", existing)

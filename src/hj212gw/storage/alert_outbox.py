"""The alert outbox's SQL (migration 0012): reading entries in delivery order after a sink's
cursor, moving that cursor, waking the sinks (NOTIFY), pruning old entries.

Delivery order is (txid, id). An entry is *settled* once its transaction is older than every
transaction still running (`txid < pg_snapshot_xmin(pg_current_snapshot())`): then every entry
that will ever sort before it has committed, so a cursor past it skips nothing. A cursor only ever
moves forward: a replica that lost the leadership mid-batch cannot move it back.
Knows no alert semantics: rows in, rows out.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    from hj212gw.storage.db import Database

ALERTS_CHANNEL = "hj212gw_alerts"
"""The channel the alert engine notifies (in the transaction that writes outbox entries)."""

# xid8 has no asyncpg codec: it travels as text.
FETCH_SQL = """
SELECT id, event_id, alert_id, type, payload, created_at, txid::text AS txid,
       txid < pg_snapshot_xmin(pg_current_snapshot()) AS settled
FROM alert_outbox
WHERE (txid, id) > ($1::text::xid8, $2::bigint)
ORDER BY txid, id
LIMIT $3"""

FETCH_CURSOR_SQL = "SELECT last_txid::text, last_id FROM alert_sink_cursors WHERE sink = $1"

ADVANCE_CURSOR_SQL = """
INSERT INTO alert_sink_cursors AS c (sink, last_txid, last_id, updated_at)
VALUES ($1, $2::text::xid8, $3, now())
ON CONFLICT (sink) DO UPDATE SET last_txid = excluded.last_txid, last_id = excluded.last_id, updated_at = now()
WHERE (c.last_txid, c.last_id) < (excluded.last_txid, excluded.last_id)"""

INSERT_SQL = """
INSERT INTO alert_outbox (event_id, alert_id, type, payload) VALUES ($1, $2, $3, $4::text::jsonb)
RETURNING id, event_id, alert_id, type, payload, created_at, txid::text AS txid"""

NOTIFY_SQL = "SELECT pg_notify($1, '')"

PRUNE_SQL = "DELETE FROM alert_outbox WHERE created_at < $1"


@dataclass(frozen=True, slots=True, order=True)
class OutboxCursor:
    """A position in delivery order: every entry at or before (txid, id) is delivered."""

    txid: int = 0
    id: int = 0


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One alert change to deliver; `payload` is the CloudEvent's `data`."""

    id: int
    event_id: uuid.UUID
    alert_id: int
    type: str  # firing | resolved | acknowledged | reminder
    payload: Mapping[str, Any]
    created_at: datetime
    txid: int

    @property
    def position(self) -> OutboxCursor:
        return OutboxCursor(self.txid, self.id)


@dataclass(frozen=True, slots=True)
class OutboxBatch:
    """Settled entries after a cursor, and whether committed entries wait behind older transactions."""

    entries: list[OutboxEntry]
    unsettled: bool  # some entry after these exists but is not settled yet: look again soon


def _entry(row: asyncpg.Record) -> OutboxEntry:
    payload = row["payload"]
    if isinstance(payload, str):  # a connection without the pool's jsonb codec
        payload = json.loads(payload)
    return OutboxEntry(
        id=row["id"], event_id=row["event_id"], alert_id=row["alert_id"], type=row["type"], payload=payload,
        created_at=row["created_at"], txid=int(row["txid"]),
    )  # fmt: skip


async def fetch_batch(conn: asyncpg.Connection, after: OutboxCursor, limit: int) -> OutboxBatch:
    """Up to `limit` settled entries after `after`, in delivery order."""
    rows = await conn.fetch(FETCH_SQL, str(after.txid), after.id, limit)
    # Settled entries sort before unsettled ones (settled means txid < xmin): a prefix.
    settled = [_entry(r) for r in rows if r["settled"]]
    return OutboxBatch(settled, unsettled=len(settled) < len(rows))


async def fetch_cursor(conn: asyncpg.Connection, sink: str) -> OutboxCursor:
    """The sink's cursor; the start of the outbox for a sink that never delivered."""
    row = await conn.fetchrow(FETCH_CURSOR_SQL, sink)
    return OutboxCursor() if row is None else OutboxCursor(int(row[0]), row[1])


async def advance_cursor(conn: asyncpg.Connection, sink: str, to: OutboxCursor) -> None:
    """Move the sink's cursor to `to`; never backwards."""
    await conn.execute(ADVANCE_CURSOR_SQL, sink, str(to.txid), to.id)


async def save_entry(
    conn: asyncpg.Connection, *, alert_id: int, type: str, payload: Mapping[str, Any], event_id: uuid.UUID | None = None
) -> OutboxEntry:
    """Insert one outbox entry in the caller's transaction (the engine's, or a test's)."""
    row = await conn.fetchrow(INSERT_SQL, event_id or uuid.uuid4(), alert_id, type, json.dumps(payload))
    assert row is not None  # INSERT ... RETURNING
    return _entry(row)


async def notify_alerts(conn: asyncpg.Connection) -> None:
    """Wake the sinks of every replica: sent when the caller's transaction commits."""
    await conn.execute(NOTIFY_SQL, ALERTS_CHANNEL)


async def prune(conn: asyncpg.Connection, older_than: datetime) -> int:
    """Delete entries created before `older_than`, delivered or not; how many."""
    status = await conn.execute(PRUNE_SQL, older_than)
    return int(status.split()[-1])


class AlertOutbox:
    """The sinks' reads and writes (alerts.outbox), on the gateway's pool."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def fetch_batch(self, after: OutboxCursor, limit: int) -> OutboxBatch:
        async with self.db.pool.acquire() as conn:
            return await fetch_batch(conn, after, limit)

    async def fetch_cursor(self, sink: str) -> OutboxCursor:
        async with self.db.pool.acquire() as conn:
            return await fetch_cursor(conn, sink)

    async def advance_cursor(self, sink: str, to: OutboxCursor) -> None:
        async with self.db.pool.acquire() as conn:
            await advance_cursor(conn, sink, to)

    async def prune(self, older_than: datetime) -> int:
        async with self.db.pool.acquire() as conn:
            return await prune(conn, older_than)

    async def listen(self, callback: Any) -> asyncpg.Connection:
        """A dedicated connection calling `callback(conn, pid, channel, payload)` on each wake."""
        return await self.db.listen(ALERTS_CHANNEL, callback)

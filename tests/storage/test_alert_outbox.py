"""storage/alert_outbox.py on a real PostgreSQL: delivery order (txid, id), settled entries only,
cursors that never move back, pruning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from hj212gw.storage import alert_outbox
from hj212gw.storage.alert_outbox import OutboxCursor

pytestmark = pytest.mark.integration

PAYLOAD = {"fingerprint": "fp", "labels": {"alertname": "over_limit"}}


async def save(conn: asyncpg.Connection, alert_id: int) -> alert_outbox.OutboxEntry:
    return await alert_outbox.save_entry(conn, alert_id=alert_id, type="firing", payload=PAYLOAD)


async def test_an_entry_behind_an_open_transaction_waits_and_then_comes_in_txid_order(
    db: object, pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    other = await asyncpg.connect(pg_dsn, server_settings={"search_path": schema})
    try:
        tx = other.transaction()
        await tx.start()
        await other.fetchval("SELECT pg_current_xact_id()")  # its txid is taken first ...
        async with conn.transaction():
            first_committed = await save(conn, 1)  # ... this one's id first
        batch = await alert_outbox.fetch_batch(conn, OutboxCursor(), 10)
        assert batch.entries == [] and batch.unsettled  # committed, but an older transaction is open
        taken_later = await save(other, 2)
        await tx.commit()
    finally:
        await other.close()
    assert taken_later.id > first_committed.id and taken_later.txid < first_committed.txid
    batch = await alert_outbox.fetch_batch(conn, OutboxCursor(), 10)
    assert [e.alert_id for e in batch.entries] == [2, 1] and not batch.unsettled  # (txid, id), not id
    assert batch.entries[1].payload == PAYLOAD
    after_first = await alert_outbox.fetch_batch(conn, batch.entries[0].position, 10)
    assert [e.alert_id for e in after_first.entries] == [1]


async def test_a_cursor_starts_at_the_beginning_and_never_moves_back(db: object, conn: asyncpg.Connection) -> None:
    assert await alert_outbox.fetch_cursor(conn, "mqtt") == OutboxCursor()
    await alert_outbox.advance_cursor(conn, "mqtt", OutboxCursor(10, 5))
    await alert_outbox.advance_cursor(conn, "mqtt", OutboxCursor(10, 4))  # a former leader, late
    await alert_outbox.advance_cursor(conn, "webhook", OutboxCursor(3, 1))
    assert await alert_outbox.fetch_cursor(conn, "mqtt") == OutboxCursor(10, 5)
    await alert_outbox.advance_cursor(conn, "mqtt", OutboxCursor(11, 1))
    assert await alert_outbox.fetch_cursor(conn, "mqtt") == OutboxCursor(11, 1)
    assert await alert_outbox.fetch_cursor(conn, "webhook") == OutboxCursor(3, 1)


async def test_prune_deletes_only_older_entries(db: object, conn: asyncpg.Connection) -> None:
    old, new = await save(conn, 1), await save(conn, 2)
    await conn.execute("UPDATE alert_outbox SET created_at = now() - interval '40 days' WHERE id = $1", old.id)
    assert await alert_outbox.prune(conn, datetime.now(UTC) - timedelta(days=30)) == 1
    assert [e.id for e in (await alert_outbox.fetch_batch(conn, OutboxCursor(), 10)).entries] == [new.id]

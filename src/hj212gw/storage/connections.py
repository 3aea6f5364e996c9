"""The `connections` table: ids handed out ahead, opens and closes written in batches.

The gateway takes ids from the sequence a block at a time (a connection gets its id when it is
accepted, without a round trip), and writes the log from its housekeeping task: opens before
closes, so a connection's row exists before its close is recorded. Both writes are idempotent.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import asyncpg

NEXT_IDS_SQL = "SELECT nextval(pg_get_serial_sequence('connections', 'id')) AS id FROM generate_series(1, $1)"
OPENED_SQL = (
    "INSERT INTO connections (id, gateway_id, peer, connected_at) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING"
)
CLOSED_SQL = (
    "UPDATE connections SET disconnected_at = $2, close_reason = $3, mn = $4,"
    " frames_ok = $5, frames_rejected = $6 WHERE id = $1"
)


class ConnectionOpened(NamedTuple):
    id: int
    gateway_id: str
    peer: str
    connected_at: datetime


class ConnectionClosed(NamedTuple):
    id: int
    disconnected_at: datetime
    close_reason: str
    mn: str | None
    frames_ok: int
    frames_rejected: int


async def fetch_connection_ids(conn: asyncpg.Connection, count: int) -> list[int]:
    """`count` new ids of the `connections` sequence."""
    return [r["id"] for r in await conn.fetch(NEXT_IDS_SQL, count)]


async def save_opened(conn: asyncpg.Connection, rows: Sequence[ConnectionOpened]) -> None:
    await conn.executemany(OPENED_SQL, rows)


async def save_closed(conn: asyncpg.Connection, rows: Sequence[ConnectionClosed]) -> None:
    await conn.executemany(CLOSED_SQL, rows)

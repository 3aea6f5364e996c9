"""Read queries for the HTTP API and the connection log: devices, data pages, connections.

Owns the SQL and the opaque keyset cursor of `fetch_data` pages. Device queries never return
the `pw` column: it is a secret and must not reach logs or the API (only the gateway's registry
reads it, through storage.devices).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

DEVICE_COLUMNS = (
    "mn, protocol_version, st, first_seen, last_seen, last_peer, name, site, enabled, status, "
    "heartbeat_reply, crc_variants"
)
DATA_COLUMNS = (
    "mn, cn, data_time, factor, factor_2017, rtd, min, avg, max, cou, zs_rtd, zs_min, zs_avg, zs_max, "
    "flag, eflag, sample_time, extra, qn, received_at, first_received_at, resend, "
    "revisions, time_suspect"
)


class BadCursor(ValueError):
    """A `fetch_data` cursor that this code did not produce."""


@dataclass(frozen=True, slots=True)
class DataPage:
    """Rows ordered by (data_time, factor); pass `next_cursor` back for the next page (None: done)."""

    rows: list[dict[str, Any]]
    next_cursor: str | None


def encode_cursor(data_time: datetime, factor: str) -> str:
    """Opaque keyset position after the row (data_time, factor)."""
    payload = json.dumps([data_time.isoformat(), factor]).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of encode_cursor; raises BadCursor."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, factor = json.loads(raw)
        return datetime.fromisoformat(when), str(factor)
    except (ValueError, TypeError, binascii.Error) as err:
        raise BadCursor(f"invalid cursor {cursor[:40]!r}") from err


async def fetch_devices(conn: asyncpg.Connection, *, after: str | None, limit: int | None) -> list[dict[str, Any]]:
    """Devices with mn > `after` (None: from the first), ordered by mn, at most `limit` (None: all).

    Ordered by code point (COLLATE "C"), as Python sorts str, so the API can merge live MNs in.
    """
    records = await conn.fetch(
        f"""SELECT {DEVICE_COLUMNS} FROM devices WHERE ($1::text IS NULL OR mn COLLATE "C" > $1)
            ORDER BY mn COLLATE "C" LIMIT $2""",
        after,
        limit,
    )
    return [dict(r) for r in records]


async def fetch_device(conn: asyncpg.Connection, mn: str) -> dict[str, Any] | None:
    record = await conn.fetchrow(f"SELECT {DEVICE_COLUMNS} FROM devices WHERE mn = $1", mn)
    return None if record is None else dict(record)


async def fetch_data(
    conn: asyncpg.Connection,
    *,
    mn: str,
    cn: str,
    start: datetime,
    end: datetime,
    code: str | None,
    limit: int,
    cursor: str | None,
) -> DataPage:
    """One page of `data` for mn/cn in [start, end), optionally one factor code (2005 or 2017)."""
    after_time, after_factor = decode_cursor(cursor) if cursor else (None, None)
    records = await conn.fetch(
        f"""SELECT {DATA_COLUMNS} FROM data
            WHERE mn = $1 AND cn = $2 AND data_time >= $3 AND data_time < $4
              AND ($5::text IS NULL OR factor = $5 OR factor_2017 = $5)
              AND ($6::timestamptz IS NULL OR (data_time, factor) > ($6, $7::text))
            ORDER BY data_time, factor
            LIMIT $8""",
        mn, cn, start, end, code, after_time, after_factor, limit + 1,
    )  # fmt: skip
    rows = [dict(r) for r in records[:limit]]
    more = len(records) > limit
    next_cursor = encode_cursor(rows[-1]["data_time"], rows[-1]["factor"]) if more else None
    return DataPage(rows, next_cursor)


async def insert_connection(conn: asyncpg.Connection, gateway_id: str, peer: str, at: datetime) -> int:
    return int(
        await conn.fetchval(
            "INSERT INTO connections (gateway_id, peer, connected_at) VALUES ($1, $2, $3) RETURNING id",
            gateway_id,
            peer,
            at,
        )
    )


async def close_connection(
    conn: asyncpg.Connection,
    connection_id: int,
    *,
    mn: str | None,
    at: datetime,
    close_reason: str,
    frames_ok: int,
    frames_rejected: int,
) -> None:
    await conn.execute(
        """UPDATE connections SET mn = coalesce($2, mn), disconnected_at = $3, close_reason = $4,
               frames_ok = $5, frames_rejected = $6
           WHERE id = $1""",
        connection_id, mn, at, close_reason, frames_ok, frames_rejected,
    )  # fmt: skip

"""Read queries for the HTTP API and the connection log: devices, data pages, versions, connections.

Owns the SQL and the opaque keyset cursors of `fetch_data` and `fetch_versions` pages. Device
queries never return the `pw` column: it is a secret and must not reach logs or the API (only the
gateway's registry reads it, through storage.devices).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
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
VERSION_COLUMNS = (
    "v.id AS version_id, v.mn, v.cn, v.data_time, v.factor, v.factor_2017, v.rtd, v.min, v.avg, v.max, v.cou, "
    "v.zs_rtd, v.zs_min, v.zs_avg, v.zs_max, v.flag, v.eflag, v.sample_time, v.extra, v.qn, v.received_at, "
    "v.resend, v.time_suspect, v.outcome, v.superseded_at, "
    "f.id AS raw_frame_id, f.connection_id, f.peer"
)


class BadCursor(ValueError):
    """A `fetch_data` cursor that this code did not produce."""


@dataclass(frozen=True, slots=True)
class DataPage:
    """Rows ordered by (data_time, factor); pass `next_cursor` back for the next page (None: done)."""

    rows: list[dict[str, Any]]
    next_cursor: str | None


async def fetch_up_to(
    fetch_page: Callable[[int, str | None], Awaitable[DataPage]], limit: int, page_size: int
) -> list[dict[str, Any]]:
    """At most `limit` rows of a cursor-paged read, `page_size` at a time: `fetch_page(limit, cursor)`."""
    rows: list[dict[str, Any]] = []
    cursor = None
    while len(rows) < limit:
        page = await fetch_page(min(page_size, limit - len(rows)), cursor)
        rows += page.rows
        cursor = page.next_cursor
        if cursor is None:
            break
    return rows


def encode_cursor(data_time: datetime, factor: str) -> str:
    """Opaque keyset position after the row (data_time, factor)."""
    payload = json.dumps([data_time.isoformat(), factor]).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of encode_cursor; raises BadCursor."""
    when, factor, _ = _decode(cursor, 2)
    return when, factor


def encode_version_cursor(data_time: datetime, factor: str, version_id: int) -> str:
    """Opaque keyset position after the version (data_time, factor, version_id)."""
    payload = json.dumps([data_time.isoformat(), factor, version_id]).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_version_cursor(cursor: str) -> tuple[datetime, str, int]:
    """Inverse of encode_version_cursor; raises BadCursor."""
    when, factor, version_id = _decode(cursor, 3)
    if not isinstance(version_id, int) or isinstance(version_id, bool) or not 0 < version_id < 2**63:
        raise BadCursor(f"invalid cursor {cursor[:40]!r}")
    return when, factor, version_id


def _decode(cursor: str, parts: int) -> tuple[datetime, str, object]:
    try:
        if len(cursor) > 4096:  # a cursor this code issues is a time, a factor code and an id
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        items = json.loads(raw)
        if not isinstance(items, list) or len(items) != parts:
            raise TypeError("wrong number of parts")
        return datetime.fromisoformat(items[0]), str(items[1]), items[2] if parts > 2 else None
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
    time_suspect: bool | None = None,
) -> DataPage:
    """One page of `data` for mn/cn in [start, end), optionally one factor code (2005 or 2017)
    and only rows whose `time_suspect` is the given value."""
    after_time, after_factor = decode_cursor(cursor) if cursor else (None, None)
    records = await conn.fetch(
        f"""SELECT {DATA_COLUMNS} FROM data
            WHERE mn = $1 AND cn = $2 AND data_time >= $3 AND data_time < $4
              AND ($5::text IS NULL OR factor = $5 OR factor_2017 = $5)
              AND ($6::timestamptz IS NULL OR (data_time, factor) > ($6, $7::text))
              AND ($9::boolean IS NULL OR time_suspect = $9)
            ORDER BY data_time, factor
            LIMIT $8""",
        mn, cn, start, end, code, after_time, after_factor, limit + 1, time_suspect,
    )  # fmt: skip
    rows = [dict(r) for r in records[:limit]]
    more = len(records) > limit
    next_cursor = encode_cursor(rows[-1]["data_time"], rows[-1]["factor"]) if more else None
    return DataPage(rows, next_cursor)


async def fetch_versions(
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
    """One page of `data_versions` for mn/cn in [start, end), ordered by (data_time, factor, version_id),
    each with its raw frame (the `raw_frames` row of the same mn, received_at and qn) if it is kept."""
    after_time, after_factor, after_id = decode_version_cursor(cursor) if cursor else (None, None, None)
    records = await conn.fetch(
        f"""SELECT {VERSION_COLUMNS} FROM data_versions v
            LEFT JOIN LATERAL (
                SELECT r.id, r.connection_id, r.peer FROM raw_frames r
                WHERE r.mn = v.mn AND r.received_at = v.received_at AND r.qn IS NOT DISTINCT FROM v.qn
                ORDER BY r.id LIMIT 1) f ON true
            WHERE v.mn = $1 AND v.cn = $2 AND v.data_time >= $3 AND v.data_time < $4
              AND ($5::text IS NULL OR v.factor = $5 OR v.factor_2017 = $5)
              AND ($6::timestamptz IS NULL OR (v.data_time, v.factor, v.id) > ($6, $7::text, $8::bigint))
            ORDER BY v.data_time, v.factor, v.id
            LIMIT $9""",
        mn, cn, start, end, code, after_time, after_factor, after_id, limit + 1,
    )  # fmt: skip
    rows = [dict(r) for r in records[:limit]]
    last = rows[-1] if len(records) > limit else None
    next_cursor = encode_version_cursor(last["data_time"], last["factor"], last["version_id"]) if last else None
    return DataPage(rows, next_cursor)

"""The SQL of `series` and `gaps` (migration 0010): what monitor.gaps keeps of each series' grid.

Owns the rows (`SeriesRow`, `GapRow`), the tracker's once-a-second write (`save`, in one
transaction that first locks the device's series rows, so a replica that lost a device to
another writes nothing of it), its load (`claim`: this replica takes the devices over and reads
their series and unfilled gaps), the periods stored in `data` for a re-check, and the keyset-paged
reads of the API and the CLI. `GapStore` runs them on the gateway's pool. Knows no HJ 212.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg

from hj212gw.storage.db import Database
from hj212gw.storage.queries import BadCursor, DataPage

GAP_STATUSES = ("open", "requested", "filled", "given_up", "dormant")
GAP_FIELDS = (
    "id, mn, cn, start_time, end_time, periods, status, requests, reason, opened_at, updated_at, last_requested_at"
)


class SeriesRow(NamedTuple):
    """One series: its period (seconds), oldest and newest stored period starts, its replica."""

    mn: str
    cn: str
    period_s: int
    first_time: datetime
    last_time: datetime
    owner: str | None
    updated_at: datetime


class GapRow(NamedTuple):
    """One run of missing periods; start_time and end_time are inclusive period starts."""

    id: int
    mn: str
    cn: str
    start_time: datetime
    end_time: datetime
    periods: int
    status: str
    requests: int
    reason: str | None
    opened_at: datetime
    updated_at: datetime
    last_requested_at: datetime | None


class Claimed(NamedTuple):
    """What a replica loads when it takes devices over: their series and unfilled gaps, and the
    MNs another replica held until now (what this one may still keep of them is stale)."""

    series: list[SeriesRow]
    gaps: list[GapRow]
    taken: frozenset[str] = frozenset()
    # (mn, cn) -> the DataTimes stored in `data` after the series row's last_time, oldest first
    # (at most TAIL_LIMIT): what the previous holder stored but had not written yet.
    tails: dict[tuple[str, str], list[datetime]] = {}  # noqa: RUF012 - a NamedTuple default, never mutated


TAIL_LIMIT = 5000
"""DataTimes read per series after its last written period (a replayed capture can add many)."""

# The periods a series' holder stored after it last wrote the series row: the tracker writes a
# series whose only change is newer data (no gap opened, filled or changed) at most every
# `gaps.series_write_s`, so a restart or a move reads them back from `data` instead.
TAILS_SQL = """
SELECT s.mn, s.cn, t.data_time
FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS s(mn, cn, last_time)
CROSS JOIN LATERAL (
    SELECT DISTINCT d.data_time FROM data d
    WHERE d.mn = s.mn AND d.data_time > s.last_time AND d.cn = s.cn AND NOT d.time_suspect
    ORDER BY d.data_time LIMIT $4
) AS t
ORDER BY s.mn, s.cn, t.data_time"""


SAVE_SERIES_SQL = """
INSERT INTO series (mn, cn, period_s, first_time, last_time, owner, updated_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[], $5::timestamptz[], $6::text[],
                     $7::timestamptz[])
ON CONFLICT (mn, cn) DO UPDATE SET period_s = excluded.period_s, first_time = excluded.first_time,
    last_time = excluded.last_time, owner = excluded.owner, updated_at = excluded.updated_at"""

SAVE_GAPS_SQL = f"""
INSERT INTO gaps ({GAP_FIELDS})
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::int[],
                     $7::text[], $8::int[], $9::text[], $10::timestamptz[], $11::timestamptz[], $12::timestamptz[])
ON CONFLICT (id) DO UPDATE SET start_time = excluded.start_time, end_time = excluded.end_time,
    periods = excluded.periods, status = excluded.status, requests = excluded.requests, reason = excluded.reason,
    updated_at = excluded.updated_at, last_requested_at = excluded.last_requested_at"""


async def new_gap_ids(conn: asyncpg.Connection, count: int) -> list[int]:
    """`count` fresh ids for new gap rows (the owner keeps them on its runs before they are saved)."""
    rows = await conn.fetch(
        "SELECT nextval(pg_get_serial_sequence('gaps', 'id')) AS id FROM generate_series(1, $1)", count
    )
    return [int(r["id"]) for r in rows]


async def save(conn: asyncpg.Connection, owner: str, series: Sequence[SeriesRow], gaps: Sequence[GapRow]) -> set[str]:
    """Write series and gap rows of devices `owner` still holds; return the MNs another replica
    claimed meanwhile (nothing of theirs is written)."""
    mns = sorted({row.mn for row in series} | {row.mn for row in gaps})
    async with conn.transaction():
        records = await conn.fetch(
            "SELECT mn, owner FROM series WHERE mn = ANY($1::text[]) ORDER BY mn, cn FOR UPDATE", mns
        )
        lost = {r["mn"] for r in records if r["owner"] is not None and r["owner"] != owner}
        kept_series = [row for row in series if row.mn not in lost]
        kept_gaps = [row for row in gaps if row.mn not in lost]
        if kept_series:
            await conn.execute(SAVE_SERIES_SQL, *_columns(kept_series, len(SeriesRow._fields)))
        if kept_gaps:
            await conn.execute(SAVE_GAPS_SQL, *_columns(kept_gaps, len(GapRow._fields)))
    return lost


async def claim(conn: asyncpg.Connection, owner: str, mns: Sequence[str] | None) -> Claimed:
    """Take devices over for `owner` and read their series and unfilled gaps: the MNs `mns`, or
    (None) every device `owner` already holds (a restart)."""
    taken: frozenset[str] = frozenset()
    async with conn.transaction():
        if mns is None:
            series = await conn.fetch("SELECT * FROM series WHERE owner = $1", owner)
        else:  # locked in the order `save` locks them, so two replicas never deadlock on them
            before = await conn.fetch(
                "SELECT mn, owner FROM series WHERE mn = ANY($1::text[]) ORDER BY mn, cn FOR UPDATE", list(mns)
            )
            taken = frozenset(r["mn"] for r in before if r["owner"] is not None and r["owner"] != owner)
            series = await conn.fetch(
                "UPDATE series SET owner = $1 WHERE mn = ANY($2::text[]) RETURNING *", owner, list(mns)
            )
        held = sorted({r["mn"] for r in series})
        gaps = await conn.fetch(
            f"""SELECT {GAP_FIELDS} FROM gaps WHERE mn = ANY($1::text[]) AND status <> 'filled'
                ORDER BY mn, cn, start_time""",
            held,
        )
        rows = [SeriesRow(*_pick(r, SeriesRow._fields)) for r in series]
        tails: dict[tuple[str, str], list[datetime]] = {}
        if rows:
            for record in await conn.fetch(
                TAILS_SQL, [r.mn for r in rows], [r.cn for r in rows], [r.last_time for r in rows], TAIL_LIMIT
            ):
                tails.setdefault((record["mn"], record["cn"]), []).append(record["data_time"])
    return Claimed(rows, [GapRow(*r.values()) for r in gaps], taken, tails)


async def stored_times(conn: asyncpg.Connection, mn: str, cn: str, start: datetime, end: datetime) -> list[datetime]:
    """The DataTimes stored in `data` for (mn, cn) in [start, end], each once (time_suspect rows
    left out, as the tracker leaves them out)."""
    rows = await conn.fetch(
        """SELECT DISTINCT data_time FROM data
           WHERE mn = $1 AND cn = $2 AND data_time >= $3 AND data_time <= $4 AND NOT time_suspect
           ORDER BY data_time""",
        mn, cn, start, end,
    )  # fmt: skip
    return [r["data_time"] for r in rows]


async def fetch_gaps(
    conn: asyncpg.Connection,
    *,
    mn: str | None = None,
    cn: str | None = None,
    status: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 1000,
    cursor: str | None = None,
) -> DataPage:
    """One page of gaps that overlap [start, end) (either bound may be open), oldest first:
    keyset-paged by (start_time, id). Raises BadCursor."""
    after_time, after_id = decode_gap_cursor(cursor) if cursor else (None, None)
    records = await conn.fetch(
        f"""SELECT {GAP_FIELDS} FROM gaps
            WHERE ($1::text IS NULL OR mn = $1) AND ($2::text IS NULL OR cn = $2)
              AND ($3::text IS NULL OR status = $3)
              AND ($4::timestamptz IS NULL OR end_time >= $4) AND ($5::timestamptz IS NULL OR start_time < $5)
              AND ($6::timestamptz IS NULL OR (start_time, id) > ($6, $7::bigint))
            ORDER BY start_time, id
            LIMIT $8""",
        mn, cn, status, start, end, after_time, after_id, limit + 1,
    )  # fmt: skip
    rows = [dict(r) for r in records[:limit]]
    last = rows[-1] if len(records) > limit else None
    return DataPage(rows, encode_gap_cursor(last["start_time"], last["id"]) if last else None)


def encode_gap_cursor(start_time: datetime, gap_id: int) -> str:
    """Opaque keyset position after the gap (start_time, id)."""
    return base64.urlsafe_b64encode(json.dumps(["gap", start_time.isoformat(), gap_id]).encode()).decode().rstrip("=")


def decode_gap_cursor(cursor: str) -> tuple[datetime, int]:
    """Inverse of encode_gap_cursor; raises BadCursor."""
    try:
        if len(cursor) > 256:
            raise ValueError("too long")
        kind, when, gap_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if kind != "gap" or not isinstance(gap_id, int) or isinstance(gap_id, bool) or not 0 < gap_id < 2**63:
            raise ValueError("not a gaps cursor")
        start = datetime.fromisoformat(when)
        if start.tzinfo is None:
            raise ValueError("no offset")
        return start, gap_id
    except (ValueError, TypeError, binascii.Error) as err:
        raise BadCursor(f"invalid cursor {cursor[:40]!r}") from err


class GapStore:
    """The gap SQL on a `Database`'s pool (the gateway's for the tracker, the API's for reads)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def new_ids(self, count: int) -> list[int]:
        async with self.db.pool.acquire() as conn:
            return await new_gap_ids(conn, count)

    async def save(self, owner: str, series: Sequence[SeriesRow], gaps: Sequence[GapRow]) -> set[str]:
        async with self.db.pool.acquire() as conn:
            return await save(conn, owner, series, gaps)

    async def claim(self, owner: str, mns: Sequence[str] | None) -> Claimed:
        async with self.db.pool.acquire() as conn:
            return await claim(conn, owner, mns)

    async def stored_times(self, mn: str, cn: str, start: datetime, end: datetime) -> list[datetime]:
        async with self.db.pool.acquire() as conn:
            return await stored_times(conn, mn, cn, start, end)

    async def fetch(self, **query: Any) -> DataPage:
        """`fetch_gaps` on the pool, within its acquire timeout (PoolBusy) when it has one."""
        async with self.db.reading() as conn:
            return await fetch_gaps(conn, **query)


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


def _pick(record: asyncpg.Record, fields: Sequence[str]) -> list[Any]:
    return [record[name] for name in fields]

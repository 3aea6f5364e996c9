"""The SQL of `alarm_events`: alarm uploads stored at their own AlarmTime (migration 0008).

Owns the rows (`AlarmRow`), their insert inside the batch transaction (storage.batch calls
`insert_alarms`; a resend of the same key keeps the first arrival) and the API's keyset-paged
read. Knows no HJ 212 parsing: ingest.alarms turns a packet into rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import NamedTuple

import asyncpg

from hj212gw.storage.queries import DataPage, decode_version_cursor, encode_version_cursor

INSERT_ALARMS_SQL = """
INSERT INTO alarm_events (mn, cn, alarm_time, factor, alarm_type, value, fields, qn, received_at)
SELECT a.mn, a.cn, a.alarm_time, a.factor, a.alarm_type, a.value, a.fields::jsonb, a.qn, a.received_at
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::float8[], $7::text[],
            $8::text[], $9::timestamptz[])
    AS a(mn, cn, alarm_time, factor, alarm_type, value, fields, qn, received_at)
ORDER BY a.mn, a.cn, a.alarm_time, a.factor, a.alarm_type
ON CONFLICT (mn, cn, alarm_time, factor, alarm_type) DO NOTHING"""

ALARM_COLUMNS = (
    "a.id AS alarm_id, a.mn, a.cn, a.alarm_time, a.factor, a.alarm_type, a.value, a.fields, a.qn, a.received_at, "
    "f.id AS raw_frame_id"
)


class AlarmRow(NamedTuple):
    """One factor of one alarm upload. `alarm_type` is '' when the upload carries none."""

    mn: str
    cn: str
    alarm_time: datetime
    factor: str
    alarm_type: str
    value: float | None
    fields: Mapping[str, str]
    qn: str | None
    received_at: datetime


async def insert_alarms(conn: asyncpg.Connection, rows: Sequence[AlarmRow]) -> None:
    """Insert alarm rows (inside the caller's transaction); an existing key is left as it is."""
    if not rows:
        return
    columns = list(zip(*rows, strict=True))
    fields = [json.dumps(dict(f), ensure_ascii=False, separators=(",", ":")) for f in columns[6]]
    await conn.execute(INSERT_ALARMS_SQL, *columns[:6], fields, *columns[7:])


async def fetch_alarms(
    conn: asyncpg.Connection, *, mn: str, start: datetime, end: datetime, limit: int, cursor: str | None
) -> DataPage:
    """One page of alarm events of `mn` with AlarmTime in [start, end), ordered by
    (alarm_time, factor, alarm_id), each with the id of its raw frame if it is kept. Raises BadCursor."""
    after_time, after_factor, after_id = decode_version_cursor(cursor) if cursor else (None, None, None)
    records = await conn.fetch(
        f"""SELECT {ALARM_COLUMNS} FROM alarm_events a
            LEFT JOIN LATERAL (
                SELECT r.id FROM raw_frames r
                WHERE r.mn = a.mn AND r.received_at = a.received_at AND r.qn IS NOT DISTINCT FROM a.qn
                ORDER BY r.id LIMIT 1) f ON true
            WHERE a.mn = $1 AND a.alarm_time >= $2 AND a.alarm_time < $3
              AND ($4::timestamptz IS NULL OR (a.alarm_time, a.factor, a.id) > ($4, $5::text, $6::bigint))
            ORDER BY a.alarm_time, a.factor, a.id
            LIMIT $7""",
        mn, start, end, after_time, after_factor, after_id, limit + 1,
    )  # fmt: skip
    rows = [dict(r) for r in records[:limit]]  # `fields` as a dict: the pool's jsonb codec
    last = rows[-1] if len(records) > limit else None
    next_cursor = encode_version_cursor(last["alarm_time"], last["factor"], last["alarm_id"]) if last else None
    return DataPage(rows, next_cursor)

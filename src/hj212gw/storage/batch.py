"""The write path of one batch: partitions, staged COPY + upsert of data, raw frames, devices.

Owns the SQL that `Database.save_batch` runs and the per-process cache of month partitions
known to exist. Resend semantics (documented in docs/schema.md): a row whose values differ
from the stored ones replaces them, `revisions` += 1, `first_received_at` kept; an identical
resend leaves the row untouched. Within one batch the last submitted row for a key wins.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import asyncpg

from hj212gw.storage.rows import DataRow, DeviceSeen, FrameRow

STAGE_TABLE = "data_stage"
STAGE_COLUMNS = (
    "mn", "cn", "data_time", "factor", "factor_2017",
    "rtd", "min", "avg", "max", "cou", "zs_rtd", "zs_min", "zs_avg", "zs_max",
    "flag", "eflag", "sample_time", "extra", "values_text", "qn", "received_at", "resend", "time_suspect",
)  # fmt: skip
_VALUE_COLUMNS = STAGE_COLUMNS[4:20]  # factor_2017 .. qn: replaced on a changed resend
_COMPARED = ("values_text", "flag", "eflag", "sample_time", "extra", "factor_2017")

CREATE_STAGE_SQL = f"""
CREATE TEMP TABLE IF NOT EXISTS {STAGE_TABLE} (
    mn text, cn text, data_time timestamptz, factor text, factor_2017 text,
    rtd float8, min float8, avg float8, max float8, cou float8,
    zs_rtd float8, zs_min float8, zs_avg float8, zs_max float8,
    flag text, eflag text, sample_time timestamptz, extra text, values_text text, qn text,
    received_at timestamptz, resend boolean, time_suspect boolean
) ON COMMIT DELETE ROWS"""
# extra and values_text arrive as JSON text (records.py encodes them) and are staged as text: COPY
# then encodes them in C instead of calling the Python jsonb codec per row. PostgreSQL parses
# them into jsonb in the upsert either way, so its cost is the same.
_JSON_COLUMNS = ("extra", "values_text")

_cols = ", ".join(STAGE_COLUMNS)
_select = ", ".join(f"{c}::jsonb" if c in _JSON_COLUMNS else c for c in STAGE_COLUMNS)
_updates = ", ".join(f"{c} = excluded.{c}" for c in (*_VALUE_COLUMNS, "received_at", "resend", "time_suspect"))
_old = ", ".join(f"d.{c}" for c in _COMPARED)
_new = ", ".join(f"excluded.{c}" for c in _COMPARED)
UPSERT_DATA_SQL = f"""
INSERT INTO data AS d ({_cols}, first_received_at, revisions)
SELECT DISTINCT ON (mn, cn, data_time, factor) {_select}, received_at, 0
FROM {STAGE_TABLE}
ORDER BY mn, cn, data_time, factor, ctid DESC  -- ctid: COPY order, so the last submitted wins
ON CONFLICT (mn, cn, data_time, factor) DO UPDATE
SET {_updates}, revisions = d.revisions + 1
WHERE ({_old}) IS DISTINCT FROM ({_new})"""

FRAME_COLUMNS = ("received_at", "connection_id", "peer", "mn", "cn", "qn", "verdict", "tolerances", "raw")

UPSERT_DEVICES_SQL = """
INSERT INTO devices AS v (mn, protocol_version, st, last_peer, first_seen, status, last_seen)
SELECT * , s.seen FROM unnest($1::text[], $2::smallint[], $3::text[], $4::text[], $5::timestamptz[], $6::text[])
    AS s(mn, protocol_version, st, last_peer, seen, status)
ORDER BY mn
ON CONFLICT (mn) DO UPDATE
SET protocol_version = coalesce(excluded.protocol_version, v.protocol_version),
    st = coalesce(excluded.st, v.st),
    last_peer = coalesce(excluded.last_peer, v.last_peer),
    first_seen = least(v.first_seen, excluded.first_seen),
    last_seen = greatest(v.last_seen, excluded.last_seen)"""


def month_of(moment: datetime) -> tuple[int, int]:
    """(year, month) of `moment` in UTC, the partition bounds' time zone."""
    utc = moment.astimezone(UTC)
    return utc.year, utc.month


def months_needed(
    data_rows: Sequence[DataRow],
    frame_rows: Sequence[FrameRow],
    data_records: Sequence[Sequence[object]] = (),
) -> set[tuple[str, tuple[int, int]]]:
    """Every (parent table, month) the batch writes into."""
    times = {r.data_time for r in data_rows} | {r[2] for r in data_records}
    needed = {("data", month_of(t)) for t in times}  # type: ignore[arg-type]
    needed |= {("raw_frames", month_of(r.received_at)) for r in frame_rows}
    return needed


class PartitionCache:
    """Month partitions this process knows exist; only misses cost a round trip."""

    def __init__(self) -> None:
        self._known: set[tuple[str, tuple[int, int]]] = set()

    def missing(self, needed: Iterable[tuple[str, tuple[int, int]]]) -> list[tuple[str, tuple[int, int]]]:
        return sorted(set(needed) - self._known)

    async def ensure(self, conn: asyncpg.Connection, needed: Iterable[tuple[str, tuple[int, int]]]) -> None:
        """Create missing partitions in one short transaction of their own.

        Not inside the batch transaction: CREATE ... PARTITION OF takes an ACCESS EXCLUSIVE lock on
        the parent, which would block every reader and writer for the whole batch.
        """
        todo = self.missing(needed)
        if not todo:
            return
        async with conn.transaction():
            for parent, (year, month) in todo:
                first = datetime(year, month, 1, tzinfo=UTC)
                await conn.execute("SELECT ensure_month_partition($1, $2)", parent, first)
        self._known.update(todo)


def _data_record(r: DataRow) -> tuple[object, ...]:
    return (
        r.mn, r.cn, r.data_time, r.factor, r.factor_2017,
        r.rtd, r.min, r.avg, r.max, r.cou, r.zs_rtd, r.zs_min, r.zs_avg, r.zs_max,
        r.flag, r.eflag, r.sample_time,
        None if r.extra is None else _json(r.extra), _json(r.values_text),
        r.qn, r.received_at, r.resend, r.time_suspect,
    )  # fmt: skip


def _json(mapping: object) -> str:
    return json.dumps(dict(mapping), ensure_ascii=False, separators=(",", ":"))  # type: ignore[call-overload]


def _frame_record(r: FrameRow) -> tuple[object, ...]:
    return (r.received_at, r.connection_id, r.peer, r.mn, r.cn, r.qn, r.verdict, list(r.tolerances), r.raw)


def _device_arrays(devices: Sequence[DeviceSeen]) -> list[list[object]]:
    latest: dict[str, DeviceSeen] = {}
    for seen in devices:
        kept = latest.get(seen.mn)
        if kept is None or seen.seen_at >= kept.seen_at:
            latest[seen.mn] = seen
    ordered = [latest[mn] for mn in sorted(latest)]
    return [
        [d.mn for d in ordered],
        [d.protocol_version for d in ordered],
        [d.st for d in ordered],
        [d.peer for d in ordered],
        [d.seen_at for d in ordered],
        [d.status for d in ordered],
    ]


async def write_batch(
    conn: asyncpg.Connection,
    data_rows: Sequence[DataRow],
    frame_rows: Sequence[FrameRow],
    devices_seen: Sequence[DeviceSeen],
    data_records: Sequence[Sequence[object]] = (),
) -> int:
    """Write everything in ONE transaction; return the number of data rows inserted or changed."""
    changed = 0
    async with conn.transaction():
        if data_rows or data_records:
            await conn.execute(CREATE_STAGE_SQL)
            records = [_data_record(r) for r in data_rows]
            records.extend(data_records)  # type: ignore[arg-type]
            await conn.copy_records_to_table(STAGE_TABLE, records=records, columns=STAGE_COLUMNS, schema_name="pg_temp")
            status = await conn.execute(UPSERT_DATA_SQL)
            changed = int(status.rsplit(" ", 1)[-1])
        if frame_rows:
            await conn.copy_records_to_table(
                "raw_frames", records=[_frame_record(r) for r in frame_rows], columns=FRAME_COLUMNS
            )
        if devices_seen:
            await conn.execute(UPSERT_DEVICES_SQL, *_device_arrays(devices_seen))
    return changed

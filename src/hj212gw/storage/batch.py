"""The write path of one batch: partitions, data (direct COPY or staged merge), raw frames; and
the upsert of device sightings, which the gateway writes apart from the batches.

Owns the SQL that `Database.save_batch` runs and the per-process cache of month partitions
known to exist. Resend semantics (docs/schema.md, "Resends"): per key the stored values follow a
precedence decided by data in the rows (a valid flag beats any other, then the later arrival);
a value set that loses or is replaced is kept in `data_versions`, `revisions` counts them; an
identical resend changes nothing. The merge is the SQL function merge_data_stage() (migration 0005).

Nearly every batch holds only keys that do not exist yet, and for those a plain COPY into `data`
costs PostgreSQL about half of COPY into a staging table + the merge. So a batch first tries the
direct COPY; a unique violation (a resend, a duplicate, the same key twice in the batch) or a
deadlock with another writer rolls its transaction back, and the batch is written again with the
staged merge, which gives every case its defined meaning. After a conflict the next
`DirectInsertGuard.COOL_DOWN` batches, and any batch carrying resends, go straight to the merge.
Month partitions are asked for only by rows inside the DataTime tolerance window (`months_needed`).

A batch of COPYs alone (the common batch: data and raw frames) takes two round trips, not four:
`BEGIN` travels in the simple-query message of the first COPY and `COMMIT` in that of the last
(`_copy_in_one_transaction`). Each round trip waits for the gateway's event loop to come back to
the writer's socket, and under load that wait is most of a commit (docs/benchmarks.md, round 13).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import asyncpg

from hj212gw.storage import pgcopy
from hj212gw.storage.alarms import AlarmRow, insert_alarms
from hj212gw.storage.columns import DATA_COLUMNS, FACTOR_COLUMNS, FRAME_COLUMNS, VALUE_COLUMNS, column_definitions
from hj212gw.storage.rows import DataRow, DeviceSeen, FrameRow, month_of
from hj212gw.storage.split_parts import SplitPartRow, insert_parts

STAGE_TABLE = "data_stage"

# `data_candidates` is merge_data_stage()'s working table (migration 0005); its column order is
# the function's.
_KEY = ("mn", "cn", "data_time")
_FACTOR_AND_VALUES = (*FACTOR_COLUMNS, *VALUE_COLUMNS)
CREATE_STAGE_SQL = f"""
CREATE TEMP TABLE IF NOT EXISTS {STAGE_TABLE} ({column_definitions(DATA_COLUMNS)}) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS data_candidates (
    {column_definitions((*_KEY, *_FACTOR_AND_VALUES))},
    {column_definitions(("qn", "received_at", "resend", "time_suspect"))},
    pos bigint, stored boolean, fresh boolean, win boolean
) ON COMMIT DELETE ROWS"""
MERGE_DATA_SQL = "SELECT merge_data_stage()"


def _copy_sql(table: str, columns: Sequence[str]) -> str:
    """What asyncpg's copy_to_table(table, columns=..., format="binary") sends."""
    quoted = ", ".join('"' + column + '"' for column in columns)
    return f"COPY {table} ({quoted}) FROM STDIN (FORMAT binary)"


COPY_DATA_SQL = _copy_sql("data", DATA_COLUMNS)
COPY_FRAMES_SQL = _copy_sql("raw_frames", FRAME_COLUMNS)

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


def months_needed(
    data_rows: Sequence[DataRow], frame_rows: Sequence[FrameRow], data_months: Iterable[tuple[int, int]] = ()
) -> set[tuple[str, tuple[int, int]]]:
    """Every (parent table, month) the batch needs a partition of.

    `data_months` are the months of the blocks inside the tolerance window; a `time_suspect` row
    never asks for one (PostgreSQL routes it to its month if that exists, else to `data_default`).
    `raw_frames` months come from the server's own receive time.
    """
    needed = {("data", month) for month in data_months}
    needed |= {("data", month_of(r.data_time)) for r in data_rows if not r.time_suspect}
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


class DirectInsertGuard:
    """Whether a batch may try the direct COPY into `data` (see the module docstring), and how
    the batches went: `copied` straight in, `conflicted` (tried, then upserted), `upserted`
    without trying (resends, or cooling down). Exposed as hj212gw_data_batches_total{path}."""

    COOL_DOWN = 20  # batches that skip the attempt after one conflicted

    def __init__(self) -> None:
        self._skip = 0
        self.copied = 0
        self.conflicted_batches = 0
        self.upserted = 0

    @property
    def cooling(self) -> int:
        """Batches left that take the upsert without trying the direct COPY."""
        return self._skip

    def try_direct(self) -> bool:
        if self._skip:
            self._skip -= 1
            return False
        return True

    def record(self, *, tried: bool, copied: bool) -> None:
        """How one batch went; a conflict starts the cool-down."""
        if copied:
            self.copied += 1
        elif tried:
            self.conflicted_batches += 1
            self._skip = self.COOL_DOWN
        else:
            self.upserted += 1


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
    data_copy: Sequence[bytes] = (),
    guard: DirectInsertGuard | None = None,
    *,
    may_copy: bool = True,
    split_parts: Sequence[SplitPartRow] = (),
    alarms: Sequence[AlarmRow] = (),
) -> int:
    """Write data, raw frames, split parts and alarm events in ONE transaction; return the number
    of data rows inserted or changed.

    `data_copy` holds rows already encoded by storage.pgcopy (the gateway encodes each packet's
    rows when it arrives); `data_rows` are encoded here. Without a `guard`, or with `may_copy`
    False (the batch carries resends), data takes the staged upsert. A direct COPY that meets
    an existing key (or a deadlock) rolls the whole transaction back, and the batch is written
    again with the upsert: no savepoint, so the common batch is BEGIN, two COPYs and COMMIT, in
    two round trips.
    """
    data = pgcopy.copy_data([*data_copy, *[pgcopy.data_row(r) for r in data_rows]]) if data_rows or data_copy else None
    frames = pgcopy.copy_data([pgcopy.frame_row(r) for r in frame_rows]) if frame_rows else None
    tried = data is not None and guard is not None and may_copy and guard.try_direct()
    if tried:
        try:
            changed = await _write(conn, data, frames, direct=True, split_parts=split_parts, alarms=alarms)
        except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError):
            pass  # rolled back: nothing of this batch was written
        else:
            if guard is not None:
                guard.record(tried=True, copied=True)
            return changed
    if guard is not None and data is not None:
        guard.record(tried=tried, copied=False)
    return await _write(conn, data, frames, direct=False, split_parts=split_parts, alarms=alarms)


async def _write(
    conn: asyncpg.Connection,
    data: memoryview | None,
    frames: memoryview | None,
    *,
    direct: bool,
    split_parts: Sequence[SplitPartRow] = (),
    alarms: Sequence[AlarmRow] = (),
) -> int:
    """One transaction: data (straight COPY or staged upsert), raw frames, split parts, alarm events."""
    if not split_parts and not alarms and (direct or data is None):
        copies = [(COPY_DATA_SQL, data)] if data is not None else []
        if frames is not None:
            copies.append((COPY_FRAMES_SQL, frames))
        statuses = await _copy_in_one_transaction(conn, copies)
        return int(statuses[0].rsplit(" ", 1)[-1]) if data is not None else 0
    changed = 0
    async with conn.transaction():
        if data is not None:
            if direct:
                status = await conn.copy_to_table("data", source=data, columns=DATA_COLUMNS, format="binary")
                changed = int(status.rsplit(" ", 1)[-1])
            else:
                changed = await _merge(conn, data)
        if frames is not None:
            await conn.copy_to_table("raw_frames", source=frames, columns=FRAME_COLUMNS, format="binary")
        await insert_parts(conn, split_parts)  # a split part's ack means stored, even as a fragment
        await insert_alarms(conn, alarms)  # a resent alarm keeps its first arrival
    return changed


async def write_sightings(conn: asyncpg.Connection, devices_seen: Sequence[DeviceSeen]) -> None:
    """Upsert device sightings (one statement, so one transaction); the latest per MN wins."""
    if devices_seen:
        await conn.execute(UPSERT_DEVICES_SQL, *_device_arrays(devices_seen))


async def _merge(conn: asyncpg.Connection, source: memoryview) -> int:
    """Stage the rows and merge them with merge_data_stage(); the number of keys inserted or replaced."""
    await conn.execute(CREATE_STAGE_SQL)
    await conn.copy_to_table(STAGE_TABLE, source=source, columns=DATA_COLUMNS, schema_name="pg_temp", format="binary")
    return int(await conn.fetchval(MERGE_DATA_SQL))


async def _copy_in_one_transaction(conn: asyncpg.Connection, copies: Sequence[tuple[str, memoryview]]) -> list[str]:
    """Run COPY ... FROM STDIN statements as one transaction, in one round trip each; the command
    tag each message ended with (`COPY n`; the last one's is `COMMIT` when there are several).
    Atomic, or raises with nothing written and the connection out of any transaction.

    A lone COPY is a transaction of its own. With more, the first one's simple-query message is
    `BEGIN; COPY …` and the last one's `COPY …; COMMIT`: PostgreSQL runs the statements of one
    message in order, the COPY's data follows in the same write, and a failing statement skips the
    rest of its message (a COMMIT after a failed COPY never runs). asyncpg's public copy_to_table()
    builds its own statement, so this calls the method under it, `Connection._copy_in` (asyncpg is
    pinned below the next release in pyproject.toml for that; tests/storage/test_db.py covers
    commits, conflicts and refusals on this path).
    """
    if not copies:
        return []
    last = len(copies) - 1
    statuses = []
    try:
        for i, (sql, source) in enumerate(copies):
            if last:
                sql = f"BEGIN; {sql}" if i == 0 else f"{sql}; COMMIT" if i == last else sql
            statuses.append(await conn._copy_in(sql, source, None))
    except BaseException:
        # A failed statement leaves the transaction aborted: roll it back here, so the pool
        # gets the connection back clean (if it is broken, the pool drops it).
        if not conn.is_closed() and conn.is_in_transaction():
            with contextlib.suppress(Exception):
                await conn.execute("ROLLBACK")
        raise
    return statuses

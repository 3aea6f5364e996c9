"""`Database`: the gateway's asyncpg pool and its public storage API.

Owns connecting (search_path = the configured schema, jsonb codec, running migrations and
creating the month partitions ahead of time, at start and from the gateway's housekeeping) and
delegates SQL to batch.py and queries.py. Connection-level failures surface as
`DatabaseUnavailable` so callers can tell an outage from a bug. Never logs `devices.pw`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
from asyncpg.exceptions._base import DataError as ClientDataError

from hj212gw.storage import alarms, announcements, connections, device_state, queries, split_parts
from hj212gw.storage.alarms import AlarmRow
from hj212gw.storage.batch import DirectInsertGuard, PartitionCache, months_needed, write_batch, write_sightings
from hj212gw.storage.connections import ConnectionClosed, ConnectionOpened
from hj212gw.storage.migrate import check_schema_name, migrate
from hj212gw.storage.queries import DataPage
from hj212gw.storage.rows import DataBlock, DataRow, DeviceSeen, FrameRow
from hj212gw.storage.split_parts import ExpiredTransfer, SplitKey, SplitPartRow, StoredPart

# How the gateway tells PostgreSQL errors apart (ingest.BatchWriter, the gateway's side writes):
# - an OUTAGE: the database, or the path to it, cannot take any write now (connection lost,
#   shutting down, out of disk or connections, an I/O error): retry the same rows with backoff;
# - a CONFLICT with another writer (deadlock, serialization failure): retry the same rows;
# - anything else PostgreSQL answers is about the ROWS (a value out of range, a NUL byte in text,
#   an index row too large for a 3,000-character code: SQLSTATE classes 22, 23, 54, ...): the same
#   rows can never succeed, so callers isolate the refused row and write the rest.
# Use `is_retryable` / `is_outage` rather than `except` order alone: asyncpg's client-side
# DataError (a Python value it cannot encode) is an InterfaceError, yet a row error.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.InterfaceError,
    asyncpg.InsufficientResourcesError,  # class 53: disk full, out of memory, too many connections
    asyncpg.OperatorInterventionError,  # class 57: shutdown, crash, cannot connect now, cancelled
    asyncpg.PostgresSystemError,  # class 58: I/O error
)
CONFLICT_ERRORS: tuple[type[BaseException], ...] = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
# Errors worth retrying the same batch for: outages plus lock conflicts between replicas.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (*OUTAGE_ERRORS, *CONFLICT_ERRORS)
# Every error about the rows (see above): everything PostgreSQL answers that is neither an outage
# nor a conflict, and values asyncpg cannot encode.
ROW_ERRORS: tuple[type[Exception], ...] = (asyncpg.PostgresError, ClientDataError)
# Everything a database write can raise that is not a bug: catch this, then ask `is_retryable`.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (*RETRYABLE_ERRORS, *ROW_ERRORS)


def is_outage(err: BaseException) -> bool:
    """The database or the path to it is gone (not a refused row, not a lock conflict)."""
    return isinstance(err, OUTAGE_ERRORS) and not isinstance(err, ClientDataError)


def is_retryable(err: BaseException) -> bool:
    """The same rows may succeed later: an outage or a conflict with another writer."""
    return is_outage(err) or isinstance(err, CONFLICT_ERRORS)


def sqlstate_of(err: BaseException) -> str:
    """The error's SQLSTATE, or "client" for a value asyncpg refused before sending it."""
    return str(getattr(err, "sqlstate", None) or "client")


AHEAD_MONTHS = 2


class DatabaseUnavailable(Exception):
    """PostgreSQL cannot be reached or dropped the connection."""


class PoolBusy(Exception):
    """No pooled connection became free within the acquire timeout (a reader pool's limit)."""


def _months_ahead(now: datetime, count: int) -> list[datetime]:
    year, month = now.year, now.month
    out = []
    for _ in range(count + 1):
        out.append(datetime(year, month, 1, tzinfo=UTC))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


def _encode_jsonb(value: Any) -> bytes:
    # Binary jsonb: version byte 1, then JSON text. A str is taken as JSON text already; anything
    # else is encoded here. (The write path encodes its jsonb itself: storage.pgcopy.)
    if isinstance(value, str):
        return b"\x01" + value.encode()
    return b"\x01" + json.dumps(value, ensure_ascii=False).encode()


def _decode_jsonb(data: bytes) -> Any:
    return json.loads(data[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python values (queries read `extra` as a dict), in the binary format.
    await conn.set_type_codec(
        "jsonb", encoder=_encode_jsonb, decoder=_decode_jsonb, schema="pg_catalog", format="binary"
    )


# Set on every pooled connection. backend_flush_after: a gateway backend writes out evicted data
# pages all the time (new rows fill shared_buffers); without the hint the kernel gathers them and
# writes them back in bursts, and the WAL fsync of every commit, so every ack, waits behind the
# burst (the PostgreSQL docs' "stalls when the OS writes data back in larger batches"). With it
# (Linux: sync_file_range every 256 kB), 10 alternating runs at 5,000 packets/s had fewer bad
# tails and no loss at saturation (docs/benchmarks.md, round 4). A user-level setting: it needs
# no server configuration.
SESSION_SETTINGS: dict[str, str] = {"backend_flush_after": "256kB"}


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release without asyncpg's reset query (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL):
    our pooled connections set no session state (search_path is a startup parameter, the staging
    table is meant to stay), and the query was one more round trip for every batch. asyncpg still
    rolls back a transaction left open before calling this."""


class Database:
    """An asyncpg pool bound to one schema; `connect()` migrates and creates partitions ahead.

    `Database.for_reading` makes the admin API's own small pool instead: read-only transactions,
    a server-side statement timeout and an acquire timeout, no migrations or partitions, so a slow
    or piled-up API query never holds a connection the batch writers wait for.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "hj212gw",
        min_size: int = 2,
        max_size: int = 8,
        command_timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        migrate_on_connect: bool = True,
        read_only: bool = False,
        statement_timeout_s: float | None = None,
        acquire_timeout_s: float | None = None,
    ) -> None:
        self.dsn = dsn
        self.schema = check_schema_name(schema)
        self.min_size = min_size
        self.max_size = max_size
        self.command_timeout_s = command_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.migrate_on_connect = migrate_on_connect and not read_only
        self.read_only = read_only
        self.statement_timeout_s = statement_timeout_s
        self.acquire_timeout_s = acquire_timeout_s
        self.partitions = PartitionCache()
        self.direct_guard = DirectInsertGuard()
        self._pool: asyncpg.Pool | None = None

    @classmethod
    def for_reading(
        cls, dsn: str, *, schema: str, pool_size: int, statement_timeout_s: float, acquire_timeout_s: float
    ) -> Database:
        """The admin API's pool: `pool_size` read-only connections; statements are cancelled by
        PostgreSQL after `statement_timeout_s` (QueryCanceledError); `PoolBusy` when no connection
        is free within `acquire_timeout_s`."""
        return cls(
            dsn,
            schema=schema,
            min_size=1,
            max_size=pool_size,
            command_timeout_s=statement_timeout_s + 5.0,  # client-side backstop if the server hangs
            connect_timeout_s=acquire_timeout_s,
            read_only=True,
            statement_timeout_s=statement_timeout_s,
            acquire_timeout_s=acquire_timeout_s,
        )

    def _server_settings(self) -> dict[str, str]:
        settings = {"search_path": f'"{self.schema}"', **SESSION_SETTINGS}
        if self.statement_timeout_s is not None:
            settings["statement_timeout"] = f"{max(1, round(self.statement_timeout_s * 1000))}ms"
        if self.read_only:
            settings["default_transaction_read_only"] = "on"
        return settings

    @contextlib.asynccontextmanager
    async def _acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for a read, within `acquire_timeout_s` when set; raises PoolBusy."""
        try:
            conn = await self.pool.acquire(timeout=self.acquire_timeout_s)
        except TimeoutError as err:
            if self.acquire_timeout_s is None:
                raise
            raise PoolBusy(f"no connection free within {self.acquire_timeout_s}s") from err
        try:
            yield conn
        finally:
            await self.pool.release(conn)

    def reading(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        """A pooled connection for a storage module's read (PoolBusy past `acquire_timeout_s`)."""
        return self._acquire()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("Database.connect() was not called")
        return self._pool

    async def connect(self) -> None:
        """Migrate (if enabled), open the pool, create this and the next AHEAD_MONTHS partitions.

        Raises:
            DatabaseUnavailable: PostgreSQL cannot be reached.
            MigrationError: the schema cannot be migrated (e.g. ChecksumMismatch).
        """
        try:
            if self.migrate_on_connect:
                conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout_s)
                try:
                    await migrate(conn, self.schema)
                finally:
                    await conn.close()
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.min_size,
                max_size=self.max_size,
                command_timeout=self.command_timeout_s,
                timeout=self.connect_timeout_s,
                server_settings=self._server_settings(),
                init=_init_connection,
                reset=_keep_session,
            )
            if not self.read_only:
                await self.ensure_partitions_ahead(datetime.now(UTC))
        except OUTAGE_ERRORS as err:
            raise DatabaseUnavailable(str(err)) from err

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def ensure_partitions_ahead(self, now: datetime) -> None:
        """Month partitions of data and raw_frames for now's month and the next AHEAD_MONTHS.

        Called at start and every second by the gateway's housekeeping; a round trip only when a
        month is not known to exist yet, so batches almost never create a partition themselves.
        """
        needed = {(t, (m.year, m.month)) for m in _months_ahead(now, AHEAD_MONTHS) for t in ("data", "raw_frames")}
        if not self.partitions.missing(needed):
            return
        async with self.pool.acquire() as conn:
            await self.partitions.ensure(conn, needed)

    async def ping(self) -> bool:
        """True if a trivial query round-trips within the connect timeout."""
        try:
            async with self.pool.acquire(timeout=self.connect_timeout_s) as conn:
                return bool(await conn.fetchval("SELECT true", timeout=self.connect_timeout_s))
        except OUTAGE_ERRORS:
            return False

    async def save_batch(
        self,
        data_rows: Sequence[DataRow],
        frame_rows: Sequence[FrameRow] = (),
        *,
        data_blocks: Sequence[DataBlock] = (),
        split_parts: Sequence[SplitPartRow] = (),
        alarms: Sequence[AlarmRow] = (),
    ) -> int:
        """Store one batch atomically; return how many data rows were inserted or changed.

        Missing month partitions are created first (their own short transaction), then data
        (`data_blocks` as encoded by the gateway, `data_rows` encoded here; direct COPY or staged
        merge, see storage.batch), raw frames (COPY), split parts and alarm events commit in ONE transaction.
        Device sightings are not part of a batch: `save_sightings`.
        Raises asyncpg errors unchanged so the writer can tell retryable from bad rows.
        """
        async with self.pool.acquire() as conn:
            months = {block.month for block in data_blocks if not block.time_suspect}
            await self.partitions.ensure(conn, months_needed(data_rows, frame_rows, months))
            resends = any(block.resend for block in data_blocks) or any(row.resend for row in data_rows)
            copies = [block.copy for block in data_blocks]
            return await write_batch(
                conn, data_rows, frame_rows, copies, self.direct_guard, may_copy=not resends, split_parts=split_parts,
                alarms=alarms,
            )  # fmt: skip

    # -- split transfers (storage.split_parts; assembled by hj212gw.ingest.splits) ----------------------

    async def fetch_complete_splits(self, keys: Sequence[SplitKey] | None, limit: int = 1000) -> list[SplitKey]:
        """Complete, unassembled transfers with a fragment: among `keys`, or any (None)."""
        async with self.pool.acquire() as conn:
            return await split_parts.fetch_complete(conn, keys, limit)

    async def fetch_split_parts(self, key: SplitKey) -> list[StoredPart]:
        async with self.pool.acquire() as conn:
            return await split_parts.fetch_parts(conn, key)

    async def finish_split(self, key: SplitKey, pnos: Sequence[int], data: DataBlock | None) -> bool:
        """Store an assembled transfer's data and mark its parts, once across replicas.

        In one transaction: lock the parts, and only if they are still exactly `pnos` and
        unassembled, merge `data` (None: nothing to store) and mark them assembled. Returns
        whether this call did it.
        """
        async with self.pool.acquire() as conn:
            if data is not None:
                await self.partitions.ensure(conn, months_needed((), (), () if data.time_suspect else {data.month}))
            async with conn.transaction():
                if not await split_parts.claim(conn, key, pnos):
                    return False
                if data is not None:
                    await write_batch(conn, (), (), [data.copy])
                await split_parts.mark_assembled(conn, key)
            return True

    async def expire_splits(self, cutoff: datetime, limit: int = 1000) -> list[ExpiredTransfer]:
        """Delete transfers begun before `cutoff` that are not waiting for assembly; each is
        returned to exactly one caller (replicas sweep concurrently)."""
        async with self.pool.acquire() as conn:
            return await split_parts.expire(conn, cutoff, limit)

    async def save_sightings(self, devices_seen: Sequence[DeviceSeen]) -> None:
        """Upsert device sightings outside any batch (the gateway writes them once a second)."""
        async with self.pool.acquire() as conn:
            await write_sightings(conn, devices_seen)

    async def fetch_devices(self, *, after: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Devices ordered by mn, without `pw`: those after mn `after`, at most `limit` (None: all)."""
        async with self._acquire() as conn:
            return await queries.fetch_devices(conn, after=after, limit=limit)

    async def fetch_device(self, mn: str) -> dict[str, Any] | None:
        """One device or None, without `pw`."""
        async with self._acquire() as conn:
            return await queries.fetch_device(conn, mn)

    async def fetch_device_states(self, mns: Sequence[str]) -> list[dict[str, Any]]:
        """The stored state of these devices (storage.device_state)."""
        async with self._acquire() as conn:
            return await device_state.fetch_states(conn, mns)

    async def fetch_devices_in_state(
        self, state: str, *, after: str | None, limit: int
    ) -> list[tuple[str, dict[str, Any] | None]]:
        """Devices whose stored state is `state`, by mn: (mn, registry columns or None), without `pw`."""
        async with self._acquire() as conn:
            return await device_state.fetch_devices_in_state(conn, state, after=after, limit=limit)

    async def fetch_device_events(self, mn: str, *, before: int | None, limit: int) -> list[dict[str, Any]]:
        """A device's state transitions, newest first, with an id below `before` (None: newest)."""
        async with self._acquire() as conn:
            return await device_state.fetch_events(conn, mn, before=before, limit=limit)

    async def fetch_data(
        self,
        mn: str,
        cn: str,
        start: datetime,
        end: datetime,
        code: str | None = None,
        limit: int = 1000,
        cursor: str | None = None,
        time_suspect: bool | None = None,
    ) -> DataPage:
        """One page of stored data in [start, end), keyset-paged by (data_time, factor).

        Args:
            mn: device MN.
            cn: data CN as text, e.g. "2051".
            start: inclusive lower bound of data_time.
            end: exclusive upper bound of data_time.
            code: only this factor (matches `factor` or `factor_2017`).
            limit: rows per page.
            cursor: `next_cursor` of the previous page.
            time_suspect: only rows with this `time_suspect` (None: all).

        Raises:
            BadCursor: `cursor` was not produced by this code.
        """
        async with self._acquire() as conn:
            return await queries.fetch_data(
                conn, mn=mn, cn=cn, start=start, end=end, code=code, limit=limit, cursor=cursor,
                time_suspect=time_suspect,
            )  # fmt: skip

    async def fetch_versions(
        self,
        mn: str,
        cn: str,
        start: datetime,
        end: datetime,
        code: str | None = None,
        limit: int = 1000,
        cursor: str | None = None,
    ) -> DataPage:
        """One page of superseded value sets (`data_versions`) in [start, end), with their raw frame.

        Same arguments as `fetch_data`; keyset-paged by (data_time, factor, version_id).

        Raises:
            BadCursor: `cursor` was not produced by this code.
        """
        async with self.pool.acquire() as conn:
            return await queries.fetch_versions(
                conn, mn=mn, cn=cn, start=start, end=end, code=code, limit=limit, cursor=cursor
            )

    async def fetch_alarms(
        self, mn: str, start: datetime, end: datetime, limit: int = 1000, cursor: str | None = None
    ) -> DataPage:
        """One page of alarm events with AlarmTime in [start, end) (storage.alarms); raises BadCursor."""
        async with self.pool.acquire() as conn:
            return await alarms.fetch_alarms(conn, mn=mn, start=start, end=end, limit=limit, cursor=cursor)

    async def fetch_connection_ids(self, count: int) -> list[int]:
        async with self.pool.acquire() as conn:
            return await connections.fetch_connection_ids(conn, count)

    async def save_connections_opened(self, rows: Sequence[ConnectionOpened]) -> None:
        async with self.pool.acquire() as conn:
            await connections.save_opened(conn, rows)

    async def save_connections_closed(self, rows: Sequence[ConnectionClosed]) -> None:
        async with self.pool.acquire() as conn:
            await connections.save_closed(conn, rows)

    async def announce(self, channel: str, payloads: Sequence[str]) -> None:
        async with self.pool.acquire() as conn:
            await announcements.announce(conn, channel, payloads)

    async def listen(self, channel: str, callback: announcements.Listener) -> asyncpg.Connection:
        """A dedicated connection delivering `channel`'s announcements (storage.announcements)."""
        return await announcements.listen(
            self.dsn, channel, callback, timeout_s=self.connect_timeout_s, schema=self.schema
        )

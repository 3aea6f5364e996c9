"""Side writes: what the gateway stores beside the data, buffered and written by housekeeping about
once a second, never in the batch a packet's ack waits for (an ack vouches for the data and the
raw frame, not for `last_seen`).

- device sightings (`devices.last_seen`, peer, version): the latest per MN until the next flush;
- the connection log (`connections` rows opened and closed), with a block of connection ids
  fetched ahead so a connection gets its id without a round trip.

While PostgreSQL is down the buffers are kept (bounded) and written on the next try; a row that
PostgreSQL refuses is dropped with one WARNING and the others are written.
"""

import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import structlog

from hj212gw.storage.connections import ConnectionClosed, ConnectionOpened
from hj212gw.storage.db import DATABASE_ERRORS, OUTAGE_ERRORS, Database, is_retryable
from hj212gw.storage.rows import DeviceSeen

_Row = TypeVar("_Row")

_ID_BLOCK = 500
_CONNECTION_LOG_LIMIT = 200_000
_LOG = structlog.get_logger("hj212gw.gateway")


class SideWrites:
    """Sightings and the connection log of one gateway process, until housekeeping writes them."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._ids: list[int] = []
        self._sightings: dict[str, DeviceSeen] = {}  # the latest per MN, until the next flush
        self._opened: list[ConnectionOpened] = []
        self._closed: list[ConnectionClosed] = []

    async def flush(self) -> None:
        """Write what is buffered, the connection log first; raises outages (the rows are kept)."""
        await self.flush_connection_log()
        await self.flush_sightings()

    async def refill_ids(self, *, when_low: bool = False) -> None:
        """Fetch a block of connection ids (only if fewer than half a block are left, `when_low`)."""
        if when_low and len(self._ids) >= _ID_BLOCK // 2:
            return
        with contextlib.suppress(*OUTAGE_ERRORS):
            self._ids.extend(await self.db.fetch_connection_ids(_ID_BLOCK))

    def next_connection_id(self) -> int | None:
        return self._ids.pop(0) if self._ids else None

    def record_open(self, row: ConnectionOpened) -> None:
        if len(self._opened) < _CONNECTION_LOG_LIMIT:
            self._opened.append(row)

    def record_close(self, row: ConnectionClosed) -> None:
        if len(self._closed) < _CONNECTION_LOG_LIMIT:
            self._closed.append(row)

    def record_sighting(self, seen: DeviceSeen) -> None:
        """A device was seen (a connection's first packet, then at most every 10 s)."""
        kept = self._sightings.get(seen.mn)
        if kept is None or seen.seen_at >= kept.seen_at:
            self._sightings[seen.mn] = seen

    async def flush_sightings(self) -> None:
        if not self._sightings:
            return
        sightings, self._sightings = self._sightings, {}
        try:
            await self._write_rows("sighting", list(sightings.values()), self.db.save_sightings)
        except (*OUTAGE_ERRORS, asyncpg.PostgresError):
            for seen in sightings.values():  # kept for the next try; newer sightings win
                self.record_sighting(seen)
            raise

    async def flush_connection_log(self) -> None:
        if not self._opened and not self._closed:
            return
        opened, closed = self._opened, self._closed
        self._opened, self._closed = [], []
        try:  # opened before closed: a connection's row exists before its close is recorded
            if opened:
                await self._write_rows("connection_log", opened, self.db.save_connections_opened)
            if closed:
                await self._write_rows("connection_log", closed, self.db.save_connections_closed)
        except (*OUTAGE_ERRORS, asyncpg.PostgresError):
            self._opened = opened + self._opened
            self._closed = closed + self._closed
            raise

    async def _write_rows(self, what: str, rows: list[_Row], write: Callable[[list[_Row]], Awaitable[None]]) -> None:
        """Write rows in one go; if PostgreSQL refuses them (anything but an outage or a lock
        conflict: a NUL byte from a tolerated header, an index row too large for a 3,000-character
        MN, ...), write them one at a time and drop each refused one with a WARNING. Writes are
        idempotent, so a retry after an outage may repeat some. Raises outages and conflicts."""
        try:
            await write(rows)
        except DATABASE_ERRORS as err:
            if is_retryable(err):
                raise
            for row in rows:
                try:
                    await write([row])
                except DATABASE_ERRORS as row_err:
                    if is_retryable(row_err):
                        raise
                    _LOG.warning(
                        f"{what}_rejected_by_database",
                        row=repr(row)[:200],
                        error=type(row_err).__name__,
                        sqlstate=getattr(row_err, "sqlstate", None),
                        detail=str(row_err)[:200],
                    )

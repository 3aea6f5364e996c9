"""Device state's SQL: `device_state` (one row per MN), `device_events` (every transition),
`gateway_leases` (one heartbeat per replica) and the registry's fixed periods.

The replica that follows a device writes its row and events in batches, about once a second
(`DeviceStateStore.save`). A row is written only by the replica holding the device's newest
binding (`bound_at`): a replica that still believed it held a device another one took over
cannot overwrite the newer holder's row. A replica whose heartbeat is older than the lease is
lost: the first live replica to notice takes its held devices offline (`gateway_lost`), once; a
restarted replica takes offline those it held before that did not come back to it within the lease
(`gateway_restarted`).
Knows no HJ 212 parsing and no monitoring types: rows in, rows out.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import asyncpg

from hj212gw.storage.queries import DEVICE_COLUMNS

if TYPE_CHECKING:  # db.py imports this module for the API's reads
    from hj212gw.storage.db import Database

STATE_COLUMNS = "mn, state, since, cause, gateway_id, connection_id, bound_at, last_data, periods, updated_at"

SAVE_EVENTS_SQL = """
INSERT INTO device_events (mn, at, state, previous, cause, gateway_id, connection_id, details)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[],
                     $8::jsonb[])"""

# A later holder wins (`bound_at`); a replica's own row is always its to write. last_data and
# periods are merged per CN, so a CN this replica has not seen keeps what the row had.
SAVE_STATES_SQL = """
INSERT INTO device_state AS s (mn, state, since, cause, gateway_id, connection_id, bound_at, last_data, periods,
                               updated_at)
SELECT u.*, now() FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::bigint[],
                              $7::timestamptz[], $8::jsonb[], $9::jsonb[]) AS u
ON CONFLICT (mn) DO UPDATE
SET state = excluded.state, since = excluded.since, cause = excluded.cause, gateway_id = excluded.gateway_id,
    connection_id = excluded.connection_id, bound_at = excluded.bound_at,
    last_data = s.last_data || excluded.last_data, periods = s.periods || excluded.periods,
    updated_at = excluded.updated_at
WHERE s.gateway_id IS NOT DISTINCT FROM excluded.gateway_id OR s.bound_at IS NULL
   OR excluded.bound_at >= s.bound_at"""

HEARTBEAT_SQL = """
INSERT INTO gateway_leases (gateway_id, heartbeat_at) VALUES ($1, now())
ON CONFLICT (gateway_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at
RETURNING heartbeat_at, xmax = 0 AS new_lease"""

# After a restart (started at $2): the devices this replica held before, whose rows no replica
# has written since and that it does not follow now ($3), go offline at their last write.
RESTART_SQL = """
WITH held AS (
    SELECT mn, state, gateway_id, connection_id, updated_at FROM device_state
    WHERE gateway_id = $1 AND state <> 'offline' AND updated_at < $2 AND mn <> ALL($3::text[]) FOR UPDATE
), changed AS (
    UPDATE device_state s SET state = 'offline', since = h.updated_at, cause = 'gateway_restarted',
                              connection_id = NULL, updated_at = now()
    FROM held h WHERE s.mn = h.mn
)
INSERT INTO device_events (mn, at, state, previous, cause, gateway_id, connection_id, details)
SELECT mn, updated_at, 'offline', state, 'gateway_restarted', gateway_id, connection_id, '{}'::jsonb FROM held
RETURNING mn, at, previous, gateway_id, connection_id"""

# Devices held by replicas whose lease expired go offline at their replica's last heartbeat.
# Deleting the lease first makes a concurrent takeover by another replica find nothing to do.
TAKE_OVER_SQL = """
WITH lost AS (
    DELETE FROM gateway_leases WHERE gateway_id <> $1 AND heartbeat_at < now() - make_interval(secs => $2)
    RETURNING gateway_id, heartbeat_at
), held AS (
    SELECT s.mn, s.state, s.gateway_id, s.connection_id, l.heartbeat_at
    FROM device_state s JOIN lost l USING (gateway_id) WHERE s.state <> 'offline' FOR UPDATE OF s
), changed AS (
    UPDATE device_state s SET state = 'offline', since = h.heartbeat_at, cause = 'gateway_lost',
                              connection_id = NULL, updated_at = now()
    FROM held h WHERE s.mn = h.mn
)
INSERT INTO device_events (mn, at, state, previous, cause, gateway_id, connection_id, details)
SELECT mn, heartbeat_at, 'offline', state, 'gateway_lost', gateway_id, connection_id,
       jsonb_build_object('taken_over_by', $1::text)
FROM held
RETURNING mn, at, previous, gateway_id, connection_id"""

FIXED_PERIODS_SQL = """
SELECT mn, min_interval_min, rtd_interval_s FROM devices
WHERE min_interval_min IS NOT NULL OR rtd_interval_s IS NOT NULL"""

OFFLINE_COUNT_SQL = "SELECT count(*) FROM device_state WHERE gateway_id = $1 AND state = 'offline'"


class DeviceEventRow(NamedTuple):
    mn: str
    at: datetime
    state: str
    previous: str | None
    cause: str
    gateway_id: str | None
    connection_id: int | None
    details: dict[str, Any]


class DeviceStateRow(NamedTuple):
    mn: str
    state: str
    since: datetime
    cause: str
    gateway_id: str | None
    connection_id: int | None
    bound_at: datetime | None
    last_data: dict[str, dict[str, str]]  # {cn: {"data_time": ISO 8601, "received_at": ISO 8601}}
    periods: dict[str, float]  # {cn: seconds}


class FixedPeriods(NamedTuple):
    """A device's periods as the registry fixes them (None: learned from its data)."""

    mn: str
    min_interval_min: int | None
    rtd_interval_s: int | None


class DeviceStateStore:
    """The tracker's reads and writes (monitor.devices), on the gateway's pool."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def save(self, events: Sequence[DeviceEventRow], rows: Sequence[DeviceStateRow]) -> None:
        """Store transitions and current states in one transaction."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            if events:
                await conn.execute(SAVE_EVENTS_SQL, *_columns(events, 8))
            if rows:
                await conn.execute(SAVE_STATES_SQL, *_columns(rows, 9))

    async def fetch(self, mns: Sequence[str]) -> list[dict[str, Any]]:
        async with self.db.pool.acquire() as conn:
            return await fetch_states(conn, mns)

    async def start_lease(self, gateway_id: str) -> datetime:
        """Renew (or take) this replica's lease at start; PostgreSQL's time of it."""
        async with self.db.pool.acquire() as conn:
            return await conn.fetchval(HEARTBEAT_SQL, gateway_id)  # type: ignore[no-any-return]  # heartbeat_at

    async def take_over_restart(
        self, gateway_id: str, started_at: datetime, followed: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Take offline what `gateway_id` held before it started at `started_at` and did not get
        back (not in `followed`, no row written since); the events made, as `heartbeat_and_take_over`."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            return [dict(r) for r in await conn.fetch(RESTART_SQL, gateway_id, started_at, list(followed))]

    async def heartbeat_and_take_over(self, gateway_id: str, lease_s: float) -> tuple[bool, list[dict[str, Any]]]:
        """Renew this replica's lease; take the devices of lost replicas offline. Returns whether
        the lease had to be taken anew (another replica found this one lost meanwhile) and the
        events made (mn, at, previous, gateway_id, connection_id)."""
        async with self.db.pool.acquire() as conn:
            lease = await conn.fetchrow(HEARTBEAT_SQL, gateway_id)
            async with conn.transaction():
                return bool(lease["new_lease"]), [dict(r) for r in await conn.fetch(TAKE_OVER_SQL, gateway_id, lease_s)]

    async def fetch_fixed_periods(self) -> list[FixedPeriods]:
        async with self.db.pool.acquire() as conn:
            return [FixedPeriods(*r) for r in await conn.fetch(FIXED_PERIODS_SQL)]

    async def count_offline(self, gateway_id: str) -> int:
        """Devices last held by `gateway_id` that are offline now."""
        async with self.db.pool.acquire() as conn:
            return int(await conn.fetchval(OFFLINE_COUNT_SQL, gateway_id))


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [[row[i] for row in rows] for i in range(width)]


# -- the admin API's reads -------------------------------------------------------------------------


async def fetch_states(conn: asyncpg.Connection, mns: Sequence[str]) -> list[dict[str, Any]]:
    """The `device_state` rows of these MNs (those that have one)."""
    records = await conn.fetch(f"SELECT {STATE_COLUMNS} FROM device_state WHERE mn = ANY($1::text[])", list(mns))
    return [dict(r) for r in records]


_REGISTRY_COLUMNS = ", ".join(f"d.{c.strip()}" for c in DEVICE_COLUMNS.split(",") if c.strip() != "mn")


async def fetch_devices_in_state(
    conn: asyncpg.Connection, state: str, *, after: str | None, limit: int
) -> list[tuple[str, dict[str, Any] | None]]:
    """Devices whose stored state is `state`, after `after` in code point order, at most `limit`:
    (MN, its registry columns or None when it has no `devices` row)."""
    records = await conn.fetch(
        f"""SELECT s.mn AS state_mn, d.mn IS NOT NULL AS registered, {_REGISTRY_COLUMNS}
            FROM device_state s LEFT JOIN devices d ON d.mn = s.mn
            WHERE s.state = $1 AND ($2::text IS NULL OR s.mn > $2) ORDER BY s.mn LIMIT $3""",
        state,
        after,
        limit,
    )
    out: list[tuple[str, dict[str, Any] | None]] = []
    for record in records:
        row = dict(record)
        mn, registered = row.pop("state_mn"), row.pop("registered")
        out.append((mn, {"mn": mn, **row} if registered else None))
    return out


async def fetch_events(conn: asyncpg.Connection, mn: str, *, before: int | None, limit: int) -> list[dict[str, Any]]:
    """A device's transitions, newest first: those with an id below `before` (None: the newest)."""
    records = await conn.fetch(
        """SELECT id, mn, at, state, previous, cause, gateway_id, connection_id, details FROM device_events
           WHERE mn = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3""",
        mn,
        before,
        limit,
    )
    return [dict(r) for r in records]


def encode_event_cursor(event_id: int) -> str:
    """Opaque keyset position after (older than) the event `event_id`."""
    return base64.urlsafe_b64encode(json.dumps(["event", event_id]).encode()).decode().rstrip("=")


def decode_event_cursor(cursor: str) -> int:
    """Inverse of encode_event_cursor; raises ValueError for a cursor it did not make."""
    try:
        if len(cursor) > 200:
            raise ValueError("too long")
        kind, event_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, binascii.Error) as err:
        raise ValueError("not an events cursor") from err
    if kind != "event" or not isinstance(event_id, int) or isinstance(event_id, bool) or not 0 < event_id < 2**63:
        raise ValueError("not an events cursor")
    return event_id

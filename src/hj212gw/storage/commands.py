"""The `commands` table: queue, claim, progress and read back platform->DAS commands.

A command is inserted `queued` and announced on the schema's command channel in the same
statement (PostgreSQL delivers the NOTIFY at COMMIT); the replica holding the MN claims it with
one conditional UPDATE, so exactly one replica sends it. Progress updates never move a row out
of a final state. Works on a pooled `Database` connection (jsonb codec) and on the plain
connection of the CLI alike: jsonb goes in as JSON text and comes out through `_json`.
Knows no HJ 212 parsing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from hj212gw.storage.db import Database

FINAL_STATES = ("succeeded", "failed", "timed_out", "refused", "device_offline")
STATES = ("queued", "sent", "acknowledged", *FINAL_STATES)

COLUMNS = (
    "id, mn, cn, name, params, over_time_s, re_count, qn, state, gateway_id, created_at, sent_at, acknowledged_at,"
    " finished_at, qn_rtn, exe_rtn, reason, result, requested_by, purpose, gap_id"
)

# The NOTIFY goes out at COMMIT, so a replica never hears of a row it cannot read yet.
INSERT_SQL = """
WITH c AS (
    INSERT INTO commands (mn, cn, name, params, over_time_s, re_count, requested_by, purpose, gap_id, state,
                          finished_at, reason)
    VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $10,
            CASE WHEN $10 = 'queued' THEN NULL ELSE now() END, $11)
    RETURNING id, mn, state
)
SELECT id, CASE WHEN state = 'queued' AND $12::text IS NOT NULL THEN pg_notify($12, id::text || ' ' || mn) END FROM c"""

# Only a fresh queued row is claimed: one queued while no replica held the device (or every
# replica was down) is left to expire, never sent later by surprise.
CLAIM_SQL = f"""
UPDATE commands SET state = 'sent', gateway_id = $2, qn = $3, sent_at = now()
WHERE id = $1 AND state = 'queued' AND created_at > now() - make_interval(secs => $4)
RETURNING {COLUMNS}"""

UPDATE_SQL = f"""
UPDATE commands SET state = $2,
    acknowledged_at = coalesce($3, acknowledged_at), finished_at = coalesce($4, finished_at),
    qn_rtn = coalesce($5, qn_rtn), exe_rtn = coalesce($6, exe_rtn), reason = coalesce($7, reason),
    result = coalesce($8::jsonb, result)
WHERE id = $1 AND state <> ALL(ARRAY{list(FINAL_STATES)}::text[])"""

EXPIRE_SQL = """
UPDATE commands SET state = 'device_offline', finished_at = now(),
    reason = 'no gateway replica held a connection of this device'
WHERE state = 'queued' AND created_at <= now() - make_interval(secs => $1)
RETURNING id"""

ABANDON_SQL = """
UPDATE commands SET state = 'failed', finished_at = now(), reason = $2
WHERE gateway_id = $1 AND state IN ('sent', 'acknowledged')
RETURNING id"""

FETCH_SQL = f"SELECT {COLUMNS} FROM commands WHERE id = $1"
FETCH_FOR_MN_SQL = f"""
SELECT {COLUMNS} FROM commands WHERE mn = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"""


def channel_of(schema: str) -> str:
    """The NOTIFY channel of queued commands, one per schema (replicas of one installation)."""
    return f"hj212gw_commands:{schema}"


@dataclass(frozen=True, slots=True)
class NewCommand:
    """A command to insert. `state` is 'queued', or a final state decided before any replica
    could claim it (`device_offline` for an MN this replica does not hold)."""

    mn: str
    cn: str
    name: str
    params: Mapping[str, object]
    over_time_s: float | None = None
    re_count: int | None = None
    requested_by: str | None = None
    purpose: str | None = None
    gap_id: int | None = None
    state: str = "queued"
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class CommandUpdate:
    """A move of one command to `state`; None fields keep what the row has."""

    id: int
    state: str
    acknowledged_at: datetime | None = None
    finished_at: datetime | None = None
    qn_rtn: int | None = None
    exe_rtn: int | None = None
    reason: str | None = None
    result: Mapping[str, Any] | None = None


def _json(value: Any) -> Any:
    """A jsonb value as Python: the pool's codec decodes it already, a plain connection gives text."""
    return json.loads(value) if isinstance(value, str) else value


def command_row(record: asyncpg.Record) -> dict[str, Any]:
    row = dict(record)
    row["params"] = _json(row["params"])
    row["result"] = _json(row["result"])
    return row


async def insert_command(conn: asyncpg.Connection, command: NewCommand, channel: str | None) -> int:
    """Insert the command and, if it is queued and `channel` is given, announce it there; its id."""
    record = await conn.fetchrow(
        INSERT_SQL, command.mn, command.cn, command.name, json.dumps(dict(command.params), ensure_ascii=False),
        command.over_time_s, command.re_count, command.requested_by, command.purpose, command.gap_id, command.state,
        command.reason, channel,
    )  # fmt: skip
    assert record is not None
    return int(record["id"])


async def claim_command(
    conn: asyncpg.Connection, command_id: int, gateway_id: str, qn: str, max_age_s: float
) -> dict[str, Any] | None:
    """Mark a queued command `sent` by this replica with `qn`; its row, or None if another
    replica claimed it, it ended, or it was queued more than `max_age_s` ago."""
    record = await conn.fetchrow(CLAIM_SQL, command_id, gateway_id, qn, max_age_s)
    return command_row(record) if record is not None else None


async def save_updates(conn: asyncpg.Connection, updates: Sequence[CommandUpdate]) -> None:
    """Apply the moves in order; a row already in a final state is left as it is."""
    await conn.executemany(
        UPDATE_SQL,
        [
            (
                u.id, u.state, u.acknowledged_at, u.finished_at, u.qn_rtn, u.exe_rtn, u.reason,
                None if u.result is None else json.dumps(dict(u.result), ensure_ascii=False),
            )
            for u in updates
        ],
    )  # fmt: skip


async def expire_queued(conn: asyncpg.Connection, older_than_s: float) -> int:
    """Commands queued at least `older_than_s` ago that nobody claimed end `device_offline`; how many."""
    return len(await conn.fetch(EXPIRE_SQL, older_than_s))


async def abandon_open(conn: asyncpg.Connection, gateway_id: str, reason: str) -> int:
    """Commands a previous run of this replica sent and never finished end `failed`; how many."""
    return len(await conn.fetch(ABANDON_SQL, gateway_id, reason))


async def fetch_command(conn: asyncpg.Connection, command_id: int) -> dict[str, Any] | None:
    record = await conn.fetchrow(FETCH_SQL, command_id)
    return command_row(record) if record is not None else None


async def fetch_commands_for_mn(
    conn: asyncpg.Connection, mn: str, *, before_id: int | None, limit: int
) -> list[dict[str, Any]]:
    """The MN's commands, newest first, with an id below `before_id` (None: from the newest)."""
    return [command_row(r) for r in await conn.fetch(FETCH_FOR_MN_SQL, mn, before_id, limit)]


class CommandStore:
    """The command SQL on a pool (the gateway's, or the API's); each call takes one connection,
    within the pool's acquire timeout when it has one (the API's: a TimeoutError, its 503)."""

    def __init__(self, db: Database) -> None:
        self._db = db  # its `pool` is read when used: the store may be made before it connects
        self.channel = channel_of(db.schema)

    async def insert(self, command: NewCommand, *, announce: bool = True) -> int:
        """Insert `command`; a queued one is announced to every replica unless `announce` is false
        (the caller claims it itself)."""
        async with self._db.pool.acquire(timeout=self._db.acquire_timeout_s) as conn:
            return await insert_command(conn, command, self.channel if announce else None)

    async def claim(self, command_id: int, gateway_id: str, qn: str, max_age_s: float) -> dict[str, Any] | None:
        async with self._db.pool.acquire(timeout=self._db.acquire_timeout_s) as conn:
            return await claim_command(conn, command_id, gateway_id, qn, max_age_s)

    async def save(self, updates: Sequence[CommandUpdate]) -> None:
        async with self._db.pool.acquire(timeout=self._db.acquire_timeout_s) as conn:
            await save_updates(conn, updates)

    async def expire(self, older_than_s: float) -> int:
        async with self._db.pool.acquire(timeout=self._db.acquire_timeout_s) as conn:
            return await expire_queued(conn, older_than_s)

    async def abandon(self, gateway_id: str, reason: str) -> int:
        async with self._db.pool.acquire(timeout=self._db.acquire_timeout_s) as conn:
            return await abandon_open(conn, gateway_id, reason)

    async def fetch(self, command_id: int) -> dict[str, Any] | None:
        async with self._db.pool.acquire(timeout=self._db.acquire_timeout_s) as conn:
            return await fetch_command(conn, command_id)

    async def fetch_for_mn(self, mn: str, *, before_id: int | None, limit: int) -> list[dict[str, Any]]:
        async with self._db.pool.acquire(timeout=self._db.acquire_timeout_s) as conn:
            return await fetch_commands_for_mn(conn, mn, before_id=before_id, limit=limit)

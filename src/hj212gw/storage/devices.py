"""The device registry's SQL: what the gateway loads, trust-on-first-use pins, and the operator
commands of `hj212gw devices` (list, add, set-pw, set-intervals, approve/reject, import).

`devices.pw` is a secret: only `fetch_registry` (the gateway's in-memory copy) and `save_pins`
read it; nothing here logs it, and `fetch_device_list` returns only whether one is set. A pin is
decided by PostgreSQL, first writer wins: two replicas that see a new MN at the same moment both
get the PW that committed first. Knows no HJ 212 parsing and no settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import asyncpg

REGISTRY_SQL = "SELECT mn, status, pw, enabled, heartbeat_reply, crc_variants FROM devices"

# ON CONFLICT … WHERE d.pw IS NULL: an existing PW (pinned or set by an operator) is never
# replaced by a device. The row lock taken by the conflict makes a concurrent pin of the same MN
# wait for this one's commit and then find the PW set; RETURNING leaves out the loser's rows.
# Rows are inserted in MN order, so two replicas pinning overlapping sets lock them in the same
# order and never deadlock.
PINS_SQL = """
INSERT INTO devices AS d (mn, status, pw, pw_source, pw_set_at)
SELECT p.mn, $3, p.pw, 'first_use', now() FROM unnest($1::text[], $2::text[]) AS p (mn, pw) ORDER BY p.mn
ON CONFLICT (mn) DO UPDATE SET pw = excluded.pw, pw_source = 'first_use', pw_set_at = excluded.pw_set_at
WHERE d.pw IS NULL
RETURNING mn, pw, status"""

PINNED_SQL = "SELECT mn, pw, status FROM devices WHERE mn = ANY($1::text[]) AND pw IS NOT NULL"

LIST_SQL = """
SELECT mn, name, site, tags, status, enabled, pw IS NOT NULL AS pw_set, pw = '' AS pw_empty, pw_source,
       pw_set_at, first_seen, last_seen, last_peer
FROM devices WHERE $1::text IS NULL OR status = $1 ORDER BY mn"""

ADD_SQL = """
INSERT INTO devices (mn, pw, pw_source, pw_set_at, name, site, tags, status, min_interval_min, rtd_interval_s)
VALUES ($1, $2, CASE WHEN $2::text IS NULL THEN NULL ELSE 'operator' END,
        CASE WHEN $2::text IS NULL THEN NULL ELSE now() END, $3, $4, $5, $6, $7, $8)
ON CONFLICT (mn) DO NOTHING
RETURNING mn"""

SET_PW_SQL = """
UPDATE devices SET pw = $2, pw_source = CASE WHEN $2::text IS NULL THEN NULL ELSE 'operator' END,
                   pw_set_at = CASE WHEN $2::text IS NULL THEN NULL ELSE now() END
WHERE mn = $1"""

# The periods the device state expects (docs/monitoring.md, "Device state"); null: learned.
SET_INTERVALS_SQL = """
UPDATE devices SET min_interval_min = CASE WHEN $4 THEN NULL ELSE coalesce($2, min_interval_min) END,
                   rtd_interval_s = CASE WHEN $4 THEN NULL ELSE coalesce($3, rtd_interval_s) END
WHERE mn = $1
RETURNING min_interval_min, rtd_interval_s"""

SET_STATUS_SQL = "UPDATE devices SET status = $2 WHERE mn = ANY($1::text[]) RETURNING mn"

# Import: a cell left empty keeps what the registry has; a PW given is the operator's.
IMPORT_SQL = """
INSERT INTO devices AS d (mn, pw, pw_source, pw_set_at, name, site, tags, status)
VALUES ($1, $2, CASE WHEN $2::text IS NULL THEN NULL ELSE 'operator' END,
        CASE WHEN $2::text IS NULL THEN NULL ELSE now() END, $3, $4, $5::text[], coalesce($6, 'accepted'))
ON CONFLICT (mn) DO UPDATE
SET pw = coalesce($2, d.pw),
    pw_source = CASE WHEN $2::text IS NULL THEN d.pw_source ELSE 'operator' END,
    pw_set_at = CASE WHEN $2::text IS NULL THEN d.pw_set_at ELSE now() END,
    name = coalesce($3, d.name),
    site = coalesce($4, d.site),
    tags = CASE WHEN cardinality($5::text[]) = 0 THEN d.tags ELSE $5::text[] END,
    status = coalesce($6, d.status)
RETURNING (xmax = 0) AS inserted"""


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """One registry row as `hj212gw devices import` and `add` write it (None: leave as is)."""

    mn: str
    pw: str | None = None
    name: str | None = None
    site: str | None = None
    tags: tuple[str, ...] = ()
    status: str | None = None
    min_interval_min: int | None = None  # MinInterval of its minute data; None: learned
    rtd_interval_s: int | None = None  # RtdInterval of its real-time data; None: learned


async def fetch_registry(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every device with the fields the gateway's admission needs, PW included."""
    return await conn.fetch(REGISTRY_SQL)  # type: ignore[no-any-return]


async def save_pins(conn: asyncpg.Connection, pins: Mapping[str, str], status: str) -> dict[str, tuple[str, str]]:
    """Pin each MN's PW (`pins`: MN -> PW) unless one is set; return MN -> (PW, status) that hold now.

    One statement for all MNs, plus one that reads back those whose PW was set already. New MNs
    are inserted with `status`. An MN missing from the result vanished between the two statements
    (an operator deleted it or cleared its PW): the caller tries it again. If PostgreSQL refuses
    one row, the statement fails as a whole and nothing is pinned.
    """
    mns = list(pins)
    rows = await conn.fetch(PINS_SQL, mns, [pins[mn] for mn in mns], status)
    held = {r["mn"]: (r["pw"], r["status"]) for r in rows}
    if len(held) < len(mns):  # PWs set before: read them in a new statement (a new snapshot sees them)
        rows = await conn.fetch(PINNED_SQL, [mn for mn in mns if mn not in held])
        held.update((r["mn"], (r["pw"], r["status"])) for r in rows)
    return held


async def fetch_device_list(conn: asyncpg.Connection, status: str | None = None) -> list[dict[str, object]]:
    """Registry rows for operators: whether a PW is set, never the PW."""
    return [dict(r) for r in await conn.fetch(LIST_SQL, status)]


async def add_device(conn: asyncpg.Connection, device: DeviceRecord) -> bool:
    """Insert a new device; False if the MN exists already."""
    added = await conn.fetchval(
        ADD_SQL, device.mn, device.pw, device.name, device.site, list(device.tags), device.status or "accepted",
        device.min_interval_min, device.rtd_interval_s,
    )  # fmt: skip
    return added is not None


async def set_pw(conn: asyncpg.Connection, mn: str, pw: str | None) -> bool:
    """Set (or with None clear, so the next PW presented is pinned) a device's PW; False if unknown."""
    return await conn.execute(SET_PW_SQL, mn, pw) != "UPDATE 0"  # type: ignore[no-any-return]


async def set_intervals(
    conn: asyncpg.Connection, mn: str, *, min_interval_min: int | None, rtd_interval_s: int | None, clear: bool
) -> tuple[int | None, int | None] | None:
    """Fix the given periods of a device (None: keep), or `clear` both (learned again).

    Returns (min_interval_min, rtd_interval_s) as they are now, or None for an unknown MN."""
    row = await conn.fetchrow(SET_INTERVALS_SQL, mn, min_interval_min, rtd_interval_s, clear)
    return None if row is None else (row[0], row[1])


async def set_status(conn: asyncpg.Connection, mns: Sequence[str], status: str) -> set[str]:
    """Set the status of the given devices; return the MNs that exist (and were updated)."""
    return {r["mn"] for r in await conn.fetch(SET_STATUS_SQL, list(mns), status)}


async def import_devices(conn: asyncpg.Connection, devices: Sequence[DeviceRecord]) -> tuple[int, int]:
    """Upsert every device in one transaction (all or nothing); return (added, updated)."""
    added = 0
    async with conn.transaction():
        for d in devices:
            inserted = await conn.fetchval(IMPORT_SQL, d.mn, d.pw, d.name, d.site, list(d.tags), d.status)
            added += bool(inserted)
    return added, len(devices) - added

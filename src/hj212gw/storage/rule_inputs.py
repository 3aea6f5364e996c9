"""What the leader's rule scans read (issue #13, alerts/scans.py): device states, given-up gaps,
firing alerts, and the data revisions recorded since the last scan. Plain rows; knows no rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg


class StateRow(NamedTuple):
    mn: str
    state: str
    since: datetime
    cause: str


class GivenUpRow(NamedTuple):
    mn: str
    cn: str
    start_time: datetime
    end_time: datetime
    periods: int
    reason: str | None


class FiringRow(NamedTuple):
    rule: str
    mn: str
    factor: str
    detail: str
    severity: str
    starts_at: datetime
    details: dict[str, Any]


class RevisionRow(NamedTuple):
    """A data_versions row with the value now stored for its key: `replaced` (the stored value
    was replaced: old = the version, new = the stored one) or `refused` (a resend lost: old = the
    stored one, new = the version). Values are Avg, else Rtd."""

    id: int
    mn: str
    cn: str
    factor: str
    data_time: datetime
    old: float | None
    new: float | None
    at: datetime


REVISIONS_SQL = """
SELECT v.id, v.mn, v.cn, v.factor, v.data_time, v.outcome, v.superseded_at,
       coalesce(v.avg, v.rtd) AS version_value, coalesce(d.avg, d.rtd) AS stored_value
FROM data_versions v
LEFT JOIN data d ON d.mn = v.mn AND d.data_time = v.data_time AND d.cn = v.cn AND d.factor = v.factor
WHERE v.id > $1
ORDER BY v.id
LIMIT $2"""


async def fetch_states(conn: asyncpg.Connection) -> list[StateRow]:
    rows = await conn.fetch("SELECT mn, state, since, cause FROM device_state")
    return [StateRow(r["mn"], r["state"], r["since"], r["cause"]) for r in rows]


async def fetch_given_up(conn: asyncpg.Connection) -> list[GivenUpRow]:
    rows = await conn.fetch(
        "SELECT mn, cn, start_time, end_time, periods, reason FROM gaps WHERE status = 'given_up' ORDER BY mn, cn"
    )
    return [GivenUpRow(*r.values()) for r in rows]


async def fetch_firing_alerts(conn: asyncpg.Connection, rules: Sequence[str]) -> list[FiringRow]:
    rows = await conn.fetch(
        """SELECT rule, mn, factor, detail, severity, starts_at, details FROM alerts
           WHERE status = 'firing' AND rule = ANY($1::text[])""",
        list(rules),
    )
    return [
        FiringRow(r["rule"], r["mn"], r["factor"], r["detail"], r["severity"], r["starts_at"], _object(r["details"]))
        for r in rows
    ]


async def fetch_revisions(conn: asyncpg.Connection, after_id: int, limit: int) -> list[RevisionRow]:
    rows = await conn.fetch(REVISIONS_SQL, after_id, limit)
    found = []
    for r in rows:
        version, stored = r["version_value"], r["stored_value"]
        old, new = (version, stored) if r["outcome"] == "replaced" else (stored, version)
        found.append(RevisionRow(r["id"], r["mn"], r["cn"], r["factor"], r["data_time"], old, new, r["superseded_at"]))
    return found


async def fetch_cursor(conn: asyncpg.Connection, name: str) -> int | None:
    value = await conn.fetchval("SELECT last_id FROM rule_cursors WHERE name = $1", name)
    return None if value is None else int(value)


async def fetch_revisions_end(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM data_versions"))


async def save_cursor(conn: asyncpg.Connection, name: str, last_id: int) -> None:
    await conn.execute(
        """INSERT INTO rule_cursors (name, last_id) VALUES ($1, $2)
           ON CONFLICT (name) DO UPDATE SET last_id = excluded.last_id, updated_at = now()""",
        name, last_id,
    )  # fmt: skip


def _object(value: object) -> dict[str, Any]:
    """A jsonb object as the pool's codec decodes it."""
    return dict(value) if isinstance(value, dict) else {}

"""The SQL of `alerts`, `alert_outbox` and `alert_sink_cursors` (migrations 0012, 0013).

Owns every statement of the alert lifecycle: raising (one firing alert per fingerprint, decided
by the unique partial index `alerts_firing_fingerprint` with ON CONFLICT, so two replicas that
raise the same alert at once end with one row and no error), updating, resolving,
acknowledging, reminders due, the outbox entries written in the caller's transaction, the
outbox backlog per sink, and the keyset-paged reads of the API and the CLI. Rows in, rows out:
knows no HJ 212 and no rules; payloads arrive as plain dicts (alerts.payload builds them).
jsonb parameters are sent as JSON text and read back whether or not the connection decodes
jsonb (the gateway's pool does; a CLI's plain connection does not).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from hj212gw.storage.alert_outbox import notify_alerts
from hj212gw.storage.db import Database
from hj212gw.storage.queries import BadCursor, DataPage

ALERT_STATUSES = ("firing", "resolved")
SEVERITIES = ("critical", "warning", "info")
OUTBOX_TYPES = ("firing", "resolved", "acknowledged", "reminder")


@dataclass(frozen=True, slots=True)
class NewAlert:
    """One alert to raise (a rule's Fire, as plain values)."""

    fingerprint: str
    rule: str
    severity: str
    mn: str
    factor: str
    detail: str
    summary_zh: str
    summary_en: str
    article: str
    value: float | None
    threshold: float | None
    details: Mapping[str, object]
    starts_at: datetime


@dataclass(frozen=True, slots=True)
class AlertUpdate:
    """New evidence for a firing alert: its latest value and details."""

    fingerprint: str
    value: float | None
    details: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One change to deliver: `type` one of OUTBOX_TYPES; `payload` the CloudEvent's data."""

    event_id: UUID
    alert_id: int
    type: str
    payload: Mapping[str, object]


# Registry labels of the device, taken when the alert is raised (a later registry change does not
# rewrite history). Tags joined with "," so every label is a string, as Alertmanager requires.
_LABELS_OF_DEVICE = """coalesce((SELECT jsonb_strip_nulls(jsonb_build_object(
        'name', d.name, 'site', d.site,
        'tags', CASE WHEN cardinality(d.tags) > 0 THEN array_to_string(d.tags, ',') END))
    FROM devices d WHERE d.mn = i.mn), '{}'::jsonb)"""

# Rows in fingerprint order: two replicas raising overlapping sets wait on the unique index in the
# same order. The losers of a race come back as no row (DO NOTHING), never as an error.
RAISE_SQL = f"""
INSERT INTO alerts (fingerprint, rule, severity, mn, factor, detail, labels, summary_zh, summary_en, article,
                    value, threshold, details, status, starts_at, updated_at, gateway_id)
SELECT i.fingerprint, i.rule, i.severity, i.mn, i.factor, i.detail, {_LABELS_OF_DEVICE}, i.summary_zh,
       i.summary_en, i.article, i.value, i.threshold, i.details::jsonb, 'firing', i.starts_at, $14, $15
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::text[], $10::float8[], $11::float8[], $12::text[], $13::timestamptz[])
     AS i (fingerprint, rule, severity, mn, factor, detail, summary_zh, summary_en, article, value, threshold,
           details, starts_at)
ORDER BY i.fingerprint
ON CONFLICT (fingerprint) WHERE status = 'firing' DO NOTHING
RETURNING *"""

UPDATE_SQL = """
UPDATE alerts a SET value = u.value, details = u.details::jsonb, updated_at = $4
FROM unnest($1::text[], $2::float8[], $3::text[]) AS u (fingerprint, value, details)
WHERE a.fingerprint = u.fingerprint AND a.status = 'firing'
RETURNING a.fingerprint"""

RESOLVE_SQL = """
UPDATE alerts a SET status = 'resolved', ends_at = greatest(c.ends_at, a.starts_at), updated_at = $3,
    details = CASE WHEN c.value IS NULL THEN a.details
                   ELSE a.details || jsonb_build_object('resolved_value', c.value) END
FROM unnest($1::text[], $2::timestamptz[], $4::float8[]) AS c (fingerprint, ends_at, value)
WHERE a.fingerprint = c.fingerprint AND a.status = 'firing'
RETURNING a.*"""

ACK_SQL = """
UPDATE alerts SET acked_at = $2, acked_by = $3, ack_note = $4
WHERE id = $1 AND acked_at IS NULL
RETURNING *"""

# SKIP LOCKED: an alert being resolved or acknowledged right now is reminded of next time.
REMIND_SQL = """
UPDATE alerts SET reminded_at = $1
WHERE id IN (SELECT id FROM alerts
             WHERE status = 'firing' AND acked_at IS NULL
               AND coalesce(reminded_at, starts_at) <= $1::timestamptz - make_interval(secs => $2)
             ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
RETURNING *"""

OUTBOX_SQL = """
INSERT INTO alert_outbox (event_id, alert_id, type, payload)
SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[]::jsonb[])"""

# Entries a sink has not delivered yet, in delivery order (see 0012_alerts.sql): per sink, how
# many and the age of the oldest.
BACKLOG_SQL = """
SELECT c.sink, count(o.id) AS depth, min(o.created_at) AS oldest
FROM alert_sink_cursors c
LEFT JOIN alert_outbox o ON (o.txid, o.id) > (c.last_txid, c.last_id)
GROUP BY c.sink ORDER BY c.sink"""

# Committed entries after (txid, id), in delivery order: only transactions older than every one
# still running, so none that commits later can sort before the last one returned.
OUTBOX_AFTER_SQL = """
SELECT id, event_id, alert_id, type, payload, created_at, txid::text AS txid FROM alert_outbox
WHERE (txid, id) > ($1::text::xid8, $2::bigint) AND txid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY txid, id LIMIT $3"""

OUTBOX_END_SQL = """
SELECT txid::text AS txid, id FROM alert_outbox
WHERE txid < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY txid DESC, id DESC LIMIT 1"""


def _json_text(value: Mapping[str, object]) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def decoded(row: asyncpg.Record | Mapping[str, Any]) -> dict[str, Any]:
    """A row as a dict with its jsonb columns as Python values (whether the connection decodes them or not)."""
    out = dict(row)
    for key in ("labels", "details", "payload"):
        if isinstance(out.get(key), str):
            out[key] = json.loads(out[key])
    return out


async def raise_alerts(
    conn: asyncpg.Connection, alerts: Sequence[NewAlert], now: datetime, gateway_id: str
) -> list[dict[str, Any]]:
    """Insert each alert as firing unless one of its fingerprint fires already; the rows inserted."""
    if not alerts:
        return []
    columns = [
        [a.fingerprint for a in alerts], [a.rule for a in alerts], [a.severity for a in alerts],
        [a.mn for a in alerts], [a.factor for a in alerts], [a.detail for a in alerts],
        [a.summary_zh for a in alerts], [a.summary_en for a in alerts], [a.article for a in alerts],
        [a.value for a in alerts], [a.threshold for a in alerts], [_json_text(a.details) for a in alerts],
        [a.starts_at for a in alerts],
    ]  # fmt: skip
    return [decoded(r) for r in await conn.fetch(RAISE_SQL, *columns, now, gateway_id)]


async def update_alerts(conn: asyncpg.Connection, updates: Sequence[AlertUpdate], now: datetime) -> set[str]:
    """Write the latest value and details of firing alerts; the fingerprints that were still firing."""
    if not updates:
        return set()
    rows = await conn.fetch(
        UPDATE_SQL, [u.fingerprint for u in updates], [u.value for u in updates],
        [_json_text(u.details) for u in updates], now,
    )  # fmt: skip
    return {r["fingerprint"] for r in rows}


async def resolve_alerts(
    conn: asyncpg.Connection, clears: Sequence[tuple[str, datetime, float | None]], now: datetime
) -> list[dict[str, Any]]:
    """Resolve the firing alerts of these (fingerprint, ends_at, value at the clear); the rows resolved.

    `ends_at` is never before the alert's start (a Clear for evidence older than the raise); the
    value at the clear, when given, goes to `details.resolved_value` (`value` keeps the firing one)."""
    if not clears:
        return []
    rows = await conn.fetch(RESOLVE_SQL, [c[0] for c in clears], [c[1] for c in clears], now, [c[2] for c in clears])
    return [decoded(r) for r in rows]


async def acknowledge(
    conn: asyncpg.Connection, alert_id: int, *, at: datetime, by: str, note: str | None
) -> dict[str, Any] | None:
    """Record who acknowledged the alert, when, and why; None if it is unknown or acknowledged already."""
    row = await conn.fetchrow(ACK_SQL, alert_id, at, by, note)
    return None if row is None else decoded(row)


async def remind_due(
    conn: asyncpg.Connection, now: datetime, reminder_s: float, limit: int = 500
) -> list[dict[str, Any]]:
    """Firing, unacknowledged alerts not raised nor reminded of for `reminder_s`: mark them reminded now."""
    return [decoded(r) for r in await conn.fetch(REMIND_SQL, now, float(reminder_s), limit)]


async def save_outbox(conn: asyncpg.Connection, entries: Sequence[OutboxEntry]) -> None:
    """Insert outbox entries (call inside the transaction of the alert change they describe) and
    wake the sinks: a NOTIFY inside a transaction is delivered when it commits, never before."""
    if entries:
        await conn.execute(
            OUTBOX_SQL, [e.event_id for e in entries], [e.alert_id for e in entries], [e.type for e in entries],
            [_json_text(e.payload) for e in entries],
        )  # fmt: skip
        await notify_alerts(conn)


async def fetch_firing(conn: asyncpg.Connection) -> list[tuple[str, str, str, str]]:
    """(fingerprint, rule, severity, mn) of every firing alert."""
    rows = await conn.fetch("SELECT fingerprint, rule, severity, mn FROM alerts WHERE status = 'firing'")
    return [(r["fingerprint"], r["rule"], r["severity"], r["mn"]) for r in rows]


async def fetch_backlog(conn: asyncpg.Connection) -> list[tuple[str, int, datetime | None]]:
    """Per sink with a cursor: (sink, undelivered entries, created_at of the oldest or None)."""
    return [(r["sink"], int(r["depth"]), r["oldest"]) for r in await conn.fetch(BACKLOG_SQL)]


async def fetch_alert(conn: asyncpg.Connection, alert_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT * FROM alerts WHERE id = $1", alert_id)
    return None if row is None else decoded(row)


async def fetch_alerts(
    conn: asyncpg.Connection,
    *,
    status: str | None = None,
    mn: str | None = None,
    rule: str | None = None,
    severity: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 1000,
    cursor: str | None = None,
) -> DataPage:
    """One page of alerts, newest first, keyset-paged by id. `start`/`end`: only alerts whose time
    (starts_at to ends_at, or still firing) overlaps [start, end). Raises BadCursor."""
    before = decode_alert_cursor(cursor) if cursor else None
    records = await conn.fetch(
        """SELECT * FROM alerts
           WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR mn = $2)
             AND ($3::text IS NULL OR rule = $3) AND ($4::text IS NULL OR severity = $4)
             AND ($5::timestamptz IS NULL OR ends_at IS NULL OR ends_at >= $5)
             AND ($6::timestamptz IS NULL OR starts_at < $6)
             AND ($7::bigint IS NULL OR id < $7)
           ORDER BY id DESC LIMIT $8""",
        status, mn, rule, severity, start, end, before, limit + 1,
    )  # fmt: skip
    rows = [decoded(r) for r in records[:limit]]
    return DataPage(rows, encode_alert_cursor(rows[-1]["id"]) if len(records) > limit else None)


async def fetch_outbox_end(conn: asyncpg.Connection) -> tuple[str, int]:
    """The (txid, id) of the last committed outbox entry, ("0", 0) when there is none."""
    row = await conn.fetchrow(OUTBOX_END_SQL)
    return ("0", 0) if row is None else (row["txid"], int(row["id"]))


async def fetch_outbox_after(
    conn: asyncpg.Connection, after: tuple[str, int], limit: int = 1000
) -> list[dict[str, Any]]:
    """Committed outbox entries after `after` = (txid, id) in delivery order (their `txid` as text)."""
    return [decoded(r) for r in await conn.fetch(OUTBOX_AFTER_SQL, after[0], after[1], limit)]


def encode_alert_cursor(alert_id: int) -> str:
    """Opaque keyset position: the next page holds alerts with a smaller id."""
    return base64.urlsafe_b64encode(json.dumps(["alert", alert_id]).encode()).decode().rstrip("=")


def decode_alert_cursor(cursor: str) -> int:
    """Inverse of encode_alert_cursor; raises BadCursor."""
    try:
        if len(cursor) > 200:
            raise ValueError("too long")
        kind, alert_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if kind != "alert" or not isinstance(alert_id, int) or isinstance(alert_id, bool) or not 0 < alert_id < 2**63:
            raise ValueError("not an alerts cursor")
        return alert_id
    except (ValueError, TypeError, binascii.Error) as err:
        raise BadCursor(f"invalid cursor {cursor[:40]!r}") from err


class AlertStore:
    """The alert reads on a `Database`'s pool (the API's, within its acquire timeout)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def fetch(self, **query: Any) -> DataPage:
        async with self.db.reading() as conn:
            return await fetch_alerts(conn, **query)

    async def fetch_one(self, alert_id: int) -> dict[str, Any] | None:
        async with self.db.reading() as conn:
            return await fetch_alert(conn, alert_id)

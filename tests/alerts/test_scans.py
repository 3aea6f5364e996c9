"""alerts/scans.py against a real PostgreSQL: a leader's round reads device states, given-up
gaps, firing alerts and data revisions, and its revisions cursor survives a change of leader."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from structlog.testing import capture_logs

from hj212gw.alerts.engine import AlertEngine
from hj212gw.alerts.scans import REVISIONS, LeaderScans
from hj212gw.rules.calendar import WorkCalendar
from hj212gw.rules.thresholds import Thresholds
from hj212gw.settings import AlertSettings
from hj212gw.storage.db import Database

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)
CALENDAR = WorkCalendar.from_library()


def scans_on(db: Database) -> LeaderScans:
    engine = AlertEngine(db, "gw-a", AlertSettings(), clock=lambda: NOW)
    return LeaderScans(db, engine, Thresholds.default, lambda: CALENDAR, interval_s=1.0, clock=lambda: NOW)


async def alerts(conn: asyncpg.Connection) -> list[tuple[object, ...]]:
    rows = await conn.fetch("SELECT rule, mn, factor, detail, status FROM alerts ORDER BY id")
    return [tuple(r.values()) for r in rows]


async def set_state(conn: asyncpg.Connection, mn: str, state: str, since: datetime) -> None:
    await conn.execute(
        """INSERT INTO device_state (mn, state, since, cause, updated_at) VALUES ($1, $2, $3, 'test', $3)
           ON CONFLICT (mn) DO UPDATE SET state = excluded.state, since = excluded.since""",
        mn, state, since,
    )  # fmt: skip


async def test_a_device_offline_beyond_its_tolerance_fires_and_clears_when_back(db: Database, conn) -> None:
    scans = scans_on(db)
    await set_state(conn, "LONG", "offline", NOW - timedelta(hours=1))
    await set_state(conn, "BRIEF", "offline", NOW - timedelta(minutes=2))  # within 10 min
    await scans.round()
    assert await alerts(conn) == [("device_offline", "LONG", "", "", "firing")]
    await set_state(conn, "LONG", "online", NOW)
    await scans.round()
    assert await alerts(conn) == [("device_offline", "LONG", "", "", "resolved")]


async def test_a_given_up_gap_fires_per_cn(db: Database, conn) -> None:
    await conn.execute(
        """INSERT INTO gaps (id, mn, cn, start_time, end_time, periods, status, requests, reason, opened_at, updated_at)
           VALUES (1, 'GAPPY', '2061', $1, $1, 1, 'given_up', 4, 'no_answer', $1, $1)""",
        NOW - timedelta(days=1),
    )  # fmt: skip
    await scans_on(db).round()
    assert await alerts(conn) == [("gap_given_up", "GAPPY", "", "2061", "firing")]


async def revision(conn: asyncpg.Connection, old: float, new: float) -> None:
    t = NOW - timedelta(hours=2)
    await conn.execute(
        """INSERT INTO data (mn, cn, data_time, factor, avg, received_at, first_received_at)
           VALUES ('REVISED', '2061', $1, 'a21026', $2, $1, $1)
           ON CONFLICT (mn, data_time, cn, factor) DO UPDATE SET avg = excluded.avg""",
        t, new,
    )  # fmt: skip
    await conn.execute(
        """INSERT INTO data_versions (mn, cn, data_time, factor, avg, received_at, resend, time_suspect, outcome,
                                      superseded_at)
           VALUES ('REVISED', '2061', $1, 'a21026', $2, $1, false, false, 'replaced', $3)""",
        t, old, NOW,
    )  # fmt: skip


async def test_revisions_are_alerted_once_from_where_the_last_leader_stopped(db: Database, conn) -> None:
    await revision(conn, 10.0, 11.0)  # before the rules ever ran: not alerted
    first = scans_on(db)
    assert await first.round() == []
    await revision(conn, 11.0, 12.5)
    changes = await first.round()
    assert [type(c).__name__ for c in changes] == ["Fire", "Clear"]
    assert await alerts(conn) == [("value_revised", "REVISED", "a21026", "2061", "resolved")]
    await revision(conn, 12.5, 12.5)  # the value did not change (a flag did): nothing
    second = scans_on(db)  # a new leader continues from the cursor
    assert await second.round() == []
    await revision(conn, 12.5, 13.0)
    await second.round()
    assert [r[4] for r in await alerts(conn)] == ["resolved", "resolved"]
    last = await conn.fetchval("SELECT max(id) FROM data_versions")
    assert await conn.fetchval("SELECT last_id FROM rule_cursors WHERE name = $1", REVISIONS) == last


async def test_a_year_the_calendar_does_not_know_is_warned_once(db: Database, conn) -> None:
    await conn.execute(
        """INSERT INTO alerts (fingerprint, rule, severity, mn, factor, detail, summary_zh, summary_en, status,
                               starts_at, updated_at)
           VALUES ('f1', 'flag_episode', 'warning', 'FAULTY', 'a21026', 'D', '故障', 'fault', 'firing', $1, $1)""",
        datetime(2031, 1, 5, tzinfo=UTC),
    )  # fmt: skip
    later = datetime(2031, 1, 20, tzinfo=UTC)
    engine = AlertEngine(db, "gw-a", AlertSettings(), clock=lambda: later)
    calendar = WorkCalendar.from_library()
    scans = LeaderScans(db, engine, Thresholds.default, lambda: calendar, interval_s=1.0, clock=lambda: later)
    with capture_logs() as logs:
        await scans.round()
        await scans.round()
    told = [entry for entry in logs if entry["event"] == "working_calendar_year_unknown"]
    assert [entry["year"] for entry in told] == [2031]

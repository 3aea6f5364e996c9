"""AlertEngine on a real PostgreSQL schema: the lifecycle, the throttle, two replicas racing,
atomic outbox entries, reminders and acknowledgements. Only the clock is fake."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from hj212gw.alerts.acks import AlertAcks
from hj212gw.alerts.engine import AlertEngine, Applied
from hj212gw.metrics import Metrics
from hj212gw.rules.model import AlertKey, Clear, Fire, Severity
from hj212gw.settings import AlertSettings
from hj212gw.storage.db import Database

pytestmark = pytest.mark.integration

MN = "88888880000001"
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
KEY = AlertKey("over_limit", MN, "a21026", "")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def fire(key: AlertKey = KEY, value: float = 120.0, at: datetime = T0, **details: Any) -> Fire:
    return Fire(
        key, Severity.CRITICAL, started_at=at, at=at, summary_zh="二氧化硫超标", summary_en="SO2 over limit",
        article="Art. 25", value=value, threshold=100.0, details=details,
    )  # fmt: skip


def engine_on(db: Database, clock: Clock, gateway_id: str = "gw-a", **settings: Any) -> AlertEngine:
    return AlertEngine(db, gateway_id, AlertSettings(**settings), clock=clock)


async def alerts(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM alerts ORDER BY id")


async def outbox(conn: asyncpg.Connection) -> list[tuple[str, int, dict[str, Any]]]:
    rows = await conn.fetch("SELECT type, alert_id, payload::text FROM alert_outbox ORDER BY txid, id")
    return [(r["type"], r["alert_id"], json.loads(r["payload"])) for r in rows]


@pytest.fixture
async def second_db(pg_dsn: str, schema: str, db: Database) -> AsyncIterator[Database]:
    """Another replica's pool on the same schema."""
    other = Database(pg_dsn, schema=schema, min_size=1, max_size=2, migrate_on_connect=False)
    await other.connect()
    yield other
    await other.close()


async def test_raise_update_resolve_and_raise_again(db: Database, conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO devices (mn, name, site, tags) VALUES ($1, 'Boiler 1', '太原一厂', '{flue,key}')", MN
    )
    clock = Clock()
    engine = engine_on(db, clock)
    applied = await engine.apply([fire()])
    (row,) = await alerts(conn)
    assert applied.raised == [row["id"]] and row["status"] == "firing" and row["value"] == 120.0
    assert row["starts_at"] == T0 and row["gateway_id"] == "gw-a" and row["ends_at"] is None
    ((kind, alert_id, payload),) = await outbox(conn)
    assert (kind, alert_id) == ("firing", row["id"])
    assert payload == {
        "fingerprint": KEY.fingerprint, "status": "firing",
        "labels": {"alertname": "over_limit", "severity": "critical", "mn": MN, "factor": "a21026",
                   "name": "Boiler 1", "site": "太原一厂", "tags": "flue,key"},
        "annotations": {"summary_zh": "二氧化硫超标", "summary_en": "SO2 over limit", "article": "Art. 25",
                        "value": 120.0, "threshold": 100.0},
        "startsAt": "2026-12-01T08:00:00Z", "endsAt": None, "alertId": row["id"], "acknowledgement": None,
        "details": {},
    }  # fmt: skip

    clock.advance(5)
    assert (await engine.apply([fire(value=125.0)])).updated == []  # under 10 %, within the interval: no write
    assert (await engine.apply([fire(value=140.0, peak=140)])).updated == [KEY.fingerprint]
    (row,) = await alerts(conn)
    assert row["value"] == 140.0 and row["updated_at"] == clock.now and len(await outbox(conn)) == 1
    clock.advance(60)
    assert (await engine.apply([fire(value=140.0)])).updated == [KEY.fingerprint]  # the interval passed

    clock.advance(10)
    applied = await engine.apply([Clear(KEY, at=clock.now, value=90.0)])
    (row,) = await alerts(conn)
    assert applied.resolved == [row["id"]] and row["status"] == "resolved" and row["ends_at"] == clock.now
    assert row["value"] == 140.0 and json.loads(row["details"]) == {"resolved_value": 90.0}  # details of the last write
    assert [(k, p["status"], p["endsAt"]) for k, _, p in await outbox(conn)] == [
        ("firing", "firing", None),
        ("resolved", "resolved", "2026-12-01T08:01:15Z"),
    ]
    assert KEY.fingerprint not in engine.firing

    applied = await engine.apply([fire(at=clock.now)])
    first, second = await alerts(conn)
    assert applied.raised == [second["id"]] and second["id"] != first["id"] and second["status"] == "firing"
    assert [k for k, _, _ in await outbox(conn)] == ["firing", "resolved", "firing"]


async def test_a_clear_of_an_alert_not_firing_and_a_throttled_fire_cost_no_query(
    pg_dsn: str, schema: str, db: Database
) -> None:
    clock = Clock()
    engine = engine_on(db, clock)
    await engine.apply([fire()])
    offline = engine_on(Database(pg_dsn, schema=schema), clock)  # never connected: any query would raise
    offline.firing = set(engine.firing)
    offline._written = dict(engine._written)
    other = AlertKey("flatline", MN, "a21026")
    assert await offline.apply([Clear(other, at=T0), fire(value=121.0)]) == await engine.apply([])


async def test_clears_of_a_device_with_nothing_firing_are_dropped_and_one_that_fires_still_resolves(
    db: Database, conn: asyncpg.Connection
) -> None:
    """A device's first data clears every flag letter and rule of every factor: for an MN with no
    alert firing they are dropped before any fingerprint or query; the MN of an alert raised here
    (or loaded by a refresh) keeps its Clears."""
    engine = engine_on(db, Clock())
    quiet = [Clear(AlertKey(rule, "88888880000002", "a21026", ""), at=T0) for rule in ("over_limit", "flatline")]
    assert await engine.apply(quiet) == Applied()
    await engine.apply([fire()])
    applied = await engine.apply([*quiet, Clear(KEY, at=T0)])
    assert applied.resolved == [(await alerts(conn))[0]["id"]]
    await engine.apply([fire()])  # raised anew
    restarted = engine_on(db, Clock())  # a new process: the MN comes back with the refresh
    await restarted.refresh()
    assert len((await restarted.apply([Clear(KEY, at=T0)])).resolved) == 1


async def test_fire_then_clear_in_one_batch_raises_and_resolves(db: Database, conn: asyncpg.Connection) -> None:
    engine = engine_on(db, Clock())
    applied = await engine.apply([fire(), fire(value=130.0), Clear(KEY, at=T0 + timedelta(minutes=1))])
    (row,) = await alerts(conn)
    assert applied.raised == applied.resolved == [row["id"]] and row["status"] == "resolved"
    assert row["value"] == 130.0  # the last Fire of the run
    assert [k for k, _, _ in await outbox(conn)] == ["firing", "resolved"]


async def test_two_replicas_racing_on_the_same_fire_raise_one_alert(
    db: Database, second_db: Database, conn: asyncpg.Connection
) -> None:
    clock = Clock()
    a, b = engine_on(db, clock, "gw-a"), engine_on(second_db, clock, "gw-b")
    keys = [AlertKey("device_offline", f"MN{i:04d}") for i in range(20)]
    for _ in range(5):
        results = await asyncio.gather(a.apply([fire(k) for k in keys]), b.apply([fire(k) for k in reversed(keys)]))
        assert sorted(results[0].raised + results[1].raised) == [
            r["id"] for r in await alerts(conn) if r["status"] == "firing"
        ]
        await asyncio.gather(a.refresh(), b.refresh())
        assert a.firing == b.firing == {k.fingerprint for k in keys}
        await asyncio.gather(
            a.apply([Clear(k, at=clock.now) for k in keys]), b.apply([Clear(k, at=clock.now) for k in keys])
        )
        clock.advance(1)
    rows = await alerts(conn)
    assert len(rows) == 5 * len(keys) and {r["status"] for r in rows} == {"resolved"}
    entries = await outbox(conn)
    assert sorted(k for k, _, _ in entries) == ["firing"] * 100 + ["resolved"] * 100
    assert len({(k, alert_id) for k, alert_id, _ in entries}) == 200  # one of each per alert


async def test_a_failed_batch_leaves_neither_alert_nor_outbox_entry(db: Database, conn: asyncpg.Connection) -> None:
    # A real refusal inside the transaction, after the alerts were inserted: a trigger on the outbox.
    await conn.execute(
        """CREATE FUNCTION refuse_entry() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
           CREATE TRIGGER refuse BEFORE INSERT ON alert_outbox FOR EACH ROW
           WHEN (NEW.payload->'labels'->>'mn' = 'REFUSED') EXECUTE FUNCTION refuse_entry()"""
    )
    engine = engine_on(db, Clock())
    with pytest.raises(asyncpg.RaiseError):
        await engine.apply([fire(), fire(AlertKey("over_limit", "REFUSED", "a21026"))])
    assert await alerts(conn) == [] and await outbox(conn) == [] and engine.firing == set()
    await conn.execute("DROP TRIGGER refuse ON alert_outbox")
    assert len((await engine.apply([fire(), fire(AlertKey("over_limit", "REFUSED", "a21026"))])).raised) == 2
    assert len(await outbox(conn)) == 2


async def test_changes_by_another_replica_are_seen_after_a_refresh(
    db: Database, second_db: Database, conn: asyncpg.Connection
) -> None:
    clock = Clock()
    a, b = engine_on(db, clock, "gw-a"), engine_on(second_db, clock, "gw-b")
    await a.apply([fire()])
    assert (await b.apply([Clear(KEY, at=clock.now)])).resolved == []  # b does not know it yet
    await b.refresh()
    assert (await b.apply([Clear(KEY, at=clock.now)])).resolved == [(await alerts(conn))[0]["id"]]
    # a still believes it fires; its next written Fire finds it resolved and raises it anew.
    clock.advance(61)
    applied = await a.apply([fire(at=clock.now)])
    assert len(applied.raised) == 1 and [r["status"] for r in await alerts(conn)] == ["resolved", "firing"]


async def test_reminders_until_acknowledged_and_the_ack_entry(db: Database, conn: asyncpg.Connection) -> None:
    clock = Clock()
    engine = engine_on(db, clock, reminder_s=600)
    (alert_id,) = (await engine.apply([fire()])).raised
    clock.advance(599)
    assert await engine.remind() == 0
    clock.advance(1)
    assert await engine.remind() == 1 and await engine.remind() == 0
    clock.advance(600)
    assert await engine.remind() == 1
    acks = AlertAcks(db)
    done = await acks.acknowledge(alert_id, by="operator 王", note="on site", at=clock.now + timedelta(seconds=30))
    assert done.outcome == "acknowledged" and done.alert is not None and done.alert["acked_by"] == "operator 王"
    assert (await acks.acknowledge(alert_id, by="someone else", note=None)).outcome == "already"
    assert (await acks.acknowledge(alert_id + 1000, by="x", note=None)).outcome == "unknown"
    clock.advance(6000)
    assert await engine.remind() == 0  # acknowledged: no more reminders
    entries = await outbox(conn)
    assert [k for k, _, _ in entries] == ["firing", "reminder", "reminder", "acknowledged"]
    assert entries[-1][2]["acknowledgement"] == {"by": "operator 王", "at": "2026-12-01T08:20:30Z", "note": "on site"}
    assert entries[-1][2]["status"] == "firing"
    (row,) = await alerts(conn)
    assert row["acked_at"] - row["starts_at"] == timedelta(minutes=20, seconds=30)  # the response time


async def test_refresh_reports_firing_alerts_and_each_sinks_backlog(db: Database, conn: asyncpg.Connection) -> None:
    clock = Clock()
    metrics = Metrics()
    engine = AlertEngine(db, "gw-a", AlertSettings(), observer=metrics, clock=clock)
    await conn.execute("INSERT INTO alert_sink_cursors (sink) VALUES ('mqtt'), ('webhook')")
    await engine.apply([fire(), fire(AlertKey("device_offline", MN)), fire(AlertKey("device_offline", "OTHER"))])
    await engine.apply([Clear(AlertKey("device_offline", "OTHER"), at=T0)])
    # mqtt delivered everything up to the first entry
    await conn.execute(
        """UPDATE alert_sink_cursors SET (last_txid, last_id) =
               (SELECT txid, id FROM alert_outbox ORDER BY txid, id LIMIT 1)
           WHERE sink = 'mqtt'"""
    )
    clock.now = datetime.now(UTC) + timedelta(seconds=30)
    await engine.refresh()
    value = metrics.registry.get_sample_value
    assert value("hj212gw_alerts_firing", {"rule": "device_offline", "severity": "critical"}) == 1
    assert value("hj212gw_alerts_firing", {"rule": "over_limit", "severity": "critical"}) == 1
    assert value("hj212gw_alert_changes_total", {"type": "firing"}) == 3
    assert value("hj212gw_alert_changes_total", {"type": "resolved"}) == 1
    assert value("hj212gw_alert_outbox_depth", {"sink": "mqtt"}) == 3
    assert value("hj212gw_alert_outbox_depth", {"sink": "webhook"}) == 4
    assert 29 < value("hj212gw_alert_outbox_oldest_age_seconds", {"sink": "webhook"}) < 60
    await engine.apply([Clear(KEY, at=T0), Clear(AlertKey("device_offline", MN), at=T0)])
    await engine.refresh()
    assert value("hj212gw_alerts_firing", {"rule": "over_limit", "severity": "critical"}) is None

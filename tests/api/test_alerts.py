"""The alert endpoints over alerts the engine wrote: filters, paging newest first, one alert, and the
acknowledgement (token always, once, with its outbox entry and response time)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from hj212gw.alerts.acks import AlertAcks
from hj212gw.alerts.engine import AlertEngine
from hj212gw.rules.model import AlertKey, Clear, Fire, Severity
from hj212gw.settings import AlertSettings
from hj212gw.storage.db import Database
from tests.api.harness import MN, OTHER, Harness, make_harness

pytestmark = pytest.mark.integration

TOKEN = "t" * 24
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def fire(key: AlertKey, severity: Severity, at: datetime, value: float | None = None) -> Fire:
    return Fire(
        key, severity, started_at=at, at=at, summary_zh=f"{key.rule} 告警", summary_en=f"{key.rule} alert",
        article="Art. 18(3)", value=value, threshold=None if value is None else 100.0,
    )  # fmt: skip


async def store_alerts(db: Database) -> list[int]:
    """Five alerts, ids ascending: [0] over_limit MN resolved (08:00-08:30), [1] device_offline MN
    firing (09:00), [2] flatline OTHER firing (10:00, info), [3] over_limit OTHER firing (11:00),
    [4] device_silent MN firing (12:00, warning)."""
    engine = AlertEngine(db, "gw-test", AlertSettings(), clock=lambda: T0 + timedelta(hours=13))
    plan = [
        (AlertKey("over_limit", MN, "a21026"), Severity.CRITICAL, 150.0),
        (AlertKey("device_offline", MN), Severity.CRITICAL, None),
        (AlertKey("flatline", OTHER, "a21002"), Severity.INFO, 3.0),
        (AlertKey("over_limit", OTHER, "a21026"), Severity.CRITICAL, 130.0),
        (AlertKey("device_silent", MN, "", "2051"), Severity.WARNING, None),
    ]
    ids = []
    for hour, (key, severity, value) in enumerate(plan):
        ids += (await engine.apply([fire(key, severity, T0 + timedelta(hours=hour), value)])).raised
        if hour == 0:
            await engine.apply([Clear(key, at=T0 + timedelta(minutes=30))])
    return ids


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Harness]:
    harness = make_harness(db, token=TOKEN, alert_acks=AlertAcks(db))
    async with harness.client:
        yield harness


async def get(api: Harness, path: str, expect: int = 200, **params: str) -> Any:
    resp = await api.client.get(path, params=params or None, headers=AUTH)
    answer = await resp.json()
    assert resp.status == expect, answer
    return answer


async def ack(api: Harness, alert_id: int, body: Any, status: int, headers: dict[str, str] = AUTH) -> Any:
    resp = await api.client.post(f"/api/v1/alerts/{alert_id}/ack", json=body, headers=headers)
    answer = await resp.json()
    assert resp.status == status, answer
    return answer


async def test_alerts_are_listed_newest_first_and_filtered(api: Harness, db: Database) -> None:
    ids = await store_alerts(db)
    body = await get(api, "/api/v1/alerts")
    assert [a["id"] for a in body["alerts"]] == ids[::-1] and body["next_cursor"] is None
    first = body["alerts"][-1]
    assert first == {
        "id": ids[0], "fingerprint": AlertKey("over_limit", MN, "a21026").fingerprint, "status": "resolved",
        "rule": "over_limit", "severity": "critical", "mn": MN, "factor": "a21026", "detail": "",
        "labels": {"alertname": "over_limit", "severity": "critical", "mn": MN, "factor": "a21026"},
        "summary_zh": "over_limit 告警", "summary_en": "over_limit alert", "article": "Art. 18(3)",
        "value": 150.0, "threshold": 100.0, "details": {}, "starts_at": "2026-12-01T08:00:00Z",
        "ends_at": "2026-12-01T08:30:00Z", "updated_at": "2026-12-01T21:00:00Z", "reminded_at": None,
        "acknowledgement": None, "response_s": None, "gateway_id": "gw-test",
    }  # fmt: skip
    cases = [
        ({"status": "firing"}, ids[1:][::-1]),
        ({"status": "resolved"}, [ids[0]]),
        ({"mn": OTHER}, [ids[3], ids[2]]),
        ({"rule": "over_limit"}, [ids[3], ids[0]]),
        ({"severity": "critical", "mn": MN}, [ids[1], ids[0]]),
        ({"start": "2026-12-01T08:45:00Z", "end": "2026-12-01T11:00:00Z"}, [ids[2], ids[1]]),
        ({"end": "2026-12-01T08:10:00Z"}, [ids[0]]),
    ]
    for params, expected in cases:
        assert [a["id"] for a in (await get(api, "/api/v1/alerts", **params))["alerts"]] == expected, params


async def test_pages_follow_the_cursor_and_bad_input_is_400(api: Harness, db: Database) -> None:
    ids = await store_alerts(db)
    seen, params = [], {"limit": "2"}
    while True:
        body = await get(api, "/api/v1/alerts", **params)
        seen += [a["id"] for a in body["alerts"]]
        if body["next_cursor"] is None:
            break
        assert body["next"].startswith("/api/v1/alerts?") and "limit=2" in body["next"]
        params = {"limit": "2", "cursor": body["next_cursor"]}
    assert seen == ids[::-1]
    assert (await get(api, "/api/v1/alerts", 400, cursor="bm9wZQ"))["error"] == "bad_cursor"
    assert (await get(api, "/api/v1/alerts", 400, status="open"))["error"] == "bad_parameter"
    assert (await get(api, "/api/v1/alerts", 400, start="yesterday"))["error"] == "bad_parameter"
    assert (await get(api, f"/api/v1/alerts/{ids[-1] + 100}", 404))["error"] == "unknown_alert"
    assert (await get(api, "/api/v1/alerts/abc", 400))["error"] == "bad_parameter"
    assert (await get(api, f"/api/v1/alerts/{ids[2]}"))["rule"] == "flatline"


async def test_an_acknowledgement_is_stored_once_with_its_outbox_entry(
    api: Harness, db: Database, conn: asyncpg.Connection
) -> None:
    ids = await store_alerts(db)
    assert (await ack(api, ids[1], {"by": "王工"}, 401, headers={}))["error"] == "unauthorized"
    assert (await ack(api, ids[1], {"note": "x"}, 400))["error"] == "bad_body"
    assert (await ack(api, ids[1], {"by": "a", "when": "now"}, 400))["error"] == "bad_body"
    assert (await ack(api, ids[-1] + 100, {"by": "a"}, 404))["error"] == "unknown_alert"
    before = datetime.now(UTC)
    done = await ack(api, ids[1], {"by": "王工", "note": "technician sent"}, 200)
    assert done["acknowledgement"]["by"] == "王工" and done["acknowledgement"]["note"] == "technician sent"
    acked_at = datetime.fromisoformat(done["acknowledgement"]["at"])
    assert acked_at >= before and done["response_s"] == round((acked_at - T0 - timedelta(hours=1)).total_seconds(), 3)
    again = await ack(api, ids[1], {"by": "someone else"}, 409)
    assert again["error"] == "already_acknowledged" and again["alert"]["acknowledgement"]["by"] == "王工"
    entries = await conn.fetch("SELECT type, alert_id FROM alert_outbox WHERE type = 'acknowledged'")
    assert [(e["type"], e["alert_id"]) for e in entries] == [("acknowledged", ids[1])]
    # a resolved alert can be acknowledged too (late, but measured)
    assert (await ack(api, ids[0], {"by": "a"}, 200))["status"] == "resolved"


async def test_acknowledging_needs_a_token_even_on_an_open_api(db: Database) -> None:
    ids = await store_alerts(db)
    open_api = make_harness(db, alert_acks=AlertAcks(db))
    async with open_api.client:
        resp = await open_api.client.post(f"/api/v1/alerts/{ids[1]}/ack", json={"by": "a"})
        assert resp.status == 403 and (await resp.json())["error"] == "token_required"
        resp = await open_api.client.get("/api/v1/alerts", params={"status": "firing"})
        assert (await resp.json())["count"] == 4

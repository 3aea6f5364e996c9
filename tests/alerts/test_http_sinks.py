"""alerts/http_sinks.py against a small real aiohttp server, through the outbox loop and PostgreSQL:
the Alertmanager v2 alert list and the structured-mode CloudEvent, retries after 5xx and an
unreachable receiver with nothing lost, and an entry the receiver refuses skipped alone."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from hj212gw.alerts.http_sinks import AlertmanagerSink, WebhookSink, alertmanager_alert
from hj212gw.alerts.outbox import OutboxDelivery
from hj212gw.metrics import Metrics
from hj212gw.settings import AlertSinkSettings
from hj212gw.storage import alert_outbox
from hj212gw.storage.db import Database
from tests.alerts.conftest import add_entries, payload
from tests.alerts.test_outbox import running
from tests.integration.waiting import eventually

pytestmark = pytest.mark.integration


@dataclass
class Receiver:
    """An HTTP server that records each POST and answers with the next planned status (then 200)."""

    url: str = ""
    posts: list[tuple[str, str, Any]] = field(default_factory=list)  # path, content type, JSON body
    statuses: list[int] = field(default_factory=list)
    refuse_mn: str | None = None  # Alertmanager-like: 400 for any batch holding this MN

    async def handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.posts.append((request.path, request.headers["Content-Type"], body))
        if self.refuse_mn and any(a["labels"].get("mn") == self.refuse_mn for a in body):
            return web.Response(status=400, text="bad alert")
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", found.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    found.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield found
    await runner.cleanup()


def settings(**urls: str) -> AlertSinkSettings:
    return AlertSinkSettings(batch_size=10, poll_interval_s=0.1, backoff_initial_s=0.05, backoff_max_s=0.2,
                             http_timeout_s=2.0, **urls)  # fmt: skip


async def at_end(conn: asyncpg.Connection, sink: str, entry: alert_outbox.OutboxEntry) -> bool:
    return await alert_outbox.fetch_cursor(conn, sink) == entry.position


async def test_alertmanager_gets_v2_alert_lists_in_batches_and_retries_a_5xx(
    db: Database, conn: asyncpg.Connection, receiver: Receiver
) -> None:
    receiver.statuses = [503, 500]
    metrics = Metrics()
    sink = AlertmanagerSink(settings(alertmanager_url=receiver.url + "/"), observer=metrics)
    entries = await add_entries(conn, 15)
    async with running(OutboxDelivery(db, sink, lambda: True, settings=settings(), observer=metrics).run):
        await eventually(lambda: at_end(conn, "alertmanager", entries[-1]))
    await sink.close()
    paths = {path for path, _, _ in receiver.posts}
    assert paths == {"/api/v2/alerts"} and all(ct == "application/json" for _, ct, _ in receiver.posts)
    assert [len(body) for _, _, body in receiver.posts] == [10, 10, 10, 5]  # two refusals, then 10 + 5
    sent = receiver.posts[2][2] + receiver.posts[3][2]
    assert [a["annotations"]["event_id"] for a in sent] == [str(e.event_id) for e in entries]
    assert sent[0] == {
        "labels": {"alertname": "over_limit", "severity": "critical", "mn": "MN001", "factor": "w01018"},
        "annotations": {"summary_zh": "超标", "summary_en": "over the limit #0", "article": "Art. 25",
                        "summary": "over the limit #0", "event_id": str(entries[0].event_id)},
        "startsAt": "2026-12-04T09:00:00Z",
    }  # fmt: skip
    assert metrics.registry.get_sample_value("hj212gw_alerts_delivered_total", {"sink": "alertmanager"}) == 15
    assert metrics.registry.get_sample_value("hj212gw_alert_publish_errors_total", {"sink": "alertmanager"}) == 2


async def test_a_batch_alertmanager_refuses_is_resent_one_by_one_and_only_the_bad_alert_skipped(
    db: Database, conn: asyncpg.Connection, receiver: Receiver
) -> None:
    receiver.refuse_mn = "BAD"
    good = await add_entries(conn, 2)
    bad = await add_entries(conn, 1, mn="BAD")
    after = await add_entries(conn, 2, mn="MN009")
    with capture_logs() as logs:
        sink = AlertmanagerSink(settings(alertmanager_url=receiver.url))
        async with running(OutboxDelivery(db, sink, lambda: True, settings=settings()).run):
            await eventually(lambda: at_end(conn, "alertmanager", after[-1]))
        await sink.close()
    accepted = [
        a["annotations"]["event_id"] for _, _, body in receiver.posts[1:] for a in body if a["labels"]["mn"] != "BAD"
    ]
    assert accepted == [str(e.event_id) for e in good + after]
    refused = [e for e in logs if e["event"] == "alert_refused"]
    assert [(e["event_id"], e["sink"], e["reason"]) for e in refused] == [
        (str(bad[0].event_id), "alertmanager", "HTTP 400: bad alert")
    ]


async def test_the_webhook_gets_each_cloudevent_in_structured_mode_and_waits_out_an_outage(
    db: Database, conn: asyncpg.Connection, receiver: Receiver
) -> None:
    entries = await add_entries(conn, 4)
    sink = WebhookSink(settings(webhook_url=receiver.url + "/hook"), "gw1")
    delivery = OutboxDelivery(db, sink, lambda: True, settings=settings())
    receiver.statuses = [200, 200, 502]  # the third entry fails: the first two are confirmed
    assert await delivery.deliver_once() == (False, False)
    assert await alert_outbox.fetch_cursor(conn, "webhook") == entries[1].position
    assert sink.dependency.is_up is False
    async with running(delivery.run):
        await eventually(lambda: at_end(conn, "webhook", entries[-1]))
    await sink.close()
    bodies = [body for _, _, body in receiver.posts]
    assert [b["id"] for b in bodies] == [str(e.event_id) for e in entries[:3] + entries[2:]]
    path, content_type, event = receiver.posts[0]
    assert (path, content_type) == ("/hook", "application/cloudevents+json; charset=utf-8")
    assert event == {
        "specversion": "1.0", "id": str(entries[0].event_id), "source": "hj212gw/gw1",
        "type": "hj212gw.alert.firing", "time": event["time"], "subject": "fp-over_limit-MN001-0",
        "datacontenttype": "application/json", "data": payload(n=0),
    }  # fmt: skip
    assert event["time"].endswith("Z")


async def test_an_unreachable_receiver_is_an_outage_not_a_loss(db: Database, conn: asyncpg.Connection) -> None:
    entries = await add_entries(conn, 2)
    sink = WebhookSink(settings(webhook_url="http://127.0.0.1:9/nothing-listens"), "gw1")
    delivery = OutboxDelivery(db, sink, lambda: True, settings=settings())
    assert await delivery.deliver_once() == (False, False)
    await sink.close()
    assert await alert_outbox.fetch_cursor(conn, "webhook") == alert_outbox.OutboxCursor()
    assert sink.dependency.is_up is False and entries


def test_a_resolved_alert_has_its_end_and_labels_become_strings() -> None:
    resolved = {**payload(), "status": "resolved", "endsAt": "2026-12-04T10:00:00Z",
                "labels": {"alertname": "flag_episode", "severity": "warning", "mn": "M1", "tags": ["a", "b"],
                           "detail": "", "site": None, "bad-name": 3},
                "acknowledgement": {"by": "ops", "at": "2026-12-04T09:30:00Z", "note": None}}  # fmt: skip
    entry = alert_outbox.OutboxEntry(1, uuid.uuid4(), 1, "resolved", resolved, datetime.now(UTC), txid=5)
    alert = alertmanager_alert(entry)
    assert alert["endsAt"] == "2026-12-04T10:00:00Z"
    assert alert["labels"] == {
        "alertname": "flag_episode",
        "severity": "warning",
        "mn": "M1",
        "tags": "a,b",
        "bad_name": "3",
    }
    assert alert["annotations"]["acknowledged_by"] == "ops"
    assert "acknowledged_note" not in alert["annotations"]

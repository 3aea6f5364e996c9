"""The alert pipeline end to end when the broker fails: alerts raised while it is away are all
delivered once it returns, the gateway's Last Will says offline meanwhile, and consumers dedupe
by event id (issue #13, Tests)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest

from hj212gw.cli.serve import Running
from hj212gw.simulator.scenarios import Scenario
from tests.alerts.conftest import BrokerProxy, Subscribe
from tests.alerts.e2e import WiredDevice, alert_settings, events, recent_start, thresholds
from tests.integration.serving import start
from tests.integration.waiting import eventually, until

pytestmark = pytest.mark.integration

START = recent_start(hours_ago=5)
EPISODES = "[defaults]\nepisode_merge_gap_s = 1200\noffline_alert_after_s = 0.5\n"


def device(*scenarios: Scenario, start_at: datetime = START, seed: int = 1) -> WiredDevice:
    return WiredDevice(st="32", start=start_at, scenarios=scenarios, uploads=frozenset({"2051"}), seed=seed)


async def outbox(conn: asyncpg.Connection) -> list[tuple[str, int, str]]:
    """(event id, alert id, type) of every outbox entry, in delivery order."""
    rows = await conn.fetch("SELECT event_id, alert_id, type FROM alert_outbox ORDER BY txid, id")
    return [(str(r["event_id"]), r["alert_id"], r["type"]) for r in rows]


async def test_alerts_raised_while_the_broker_is_away_are_all_delivered_when_it_returns(
    gateways: list[Running], pg_dsn: str, schema: str, root: str, subscribe: Subscribe, broker_proxy: BrokerProxy,
    conn: asyncpg.Connection, tmp_path: Path,
) -> None:  # fmt: skip
    sub = await subscribe(f"{root}/#")
    settings = alert_settings(root, broker_port=broker_proxy.port, thresholds_file=thresholds(tmp_path, EPISODES))
    running = await start(gateways, pg_dsn, schema, **settings)
    status = f"{root}/v1/gateways/gw1/status"
    await until(lambda: sub.on(status) == [b"online"])
    das = device(
        Scenario("fault", flag="D", start_s=1800, duration_s=1800),  # every factor: an alert and its resolve each
        Scenario("fault", flag="M", factors=("w01018",), start_s=3.5 * 3600),
    )
    await das.plug(running)
    await das.run(3600)  # the D episodes fire while the broker is there
    n = len(das.spec.factors)
    await until(lambda: len(events(sub.messages)) == n, timeout_s=10)
    broker_proxy.cut()
    await until(lambda: sub.on(status) == [b"online", b"offline"], timeout_s=10)  # the Last Will
    await das.run(3 * 3600)  # resolved, and an M episode fires: all while the broker is away
    await eventually(lambda: _count(conn, 2 * n + 1))
    assert len(events(sub.messages)) == n
    broker_proxy.restore()
    await until(lambda: len({e["id"] for e in events(sub.messages)}) == 2 * n + 1, timeout_s=15)
    await until(lambda: sub.on(status)[-1:] == [b"online"])
    entries = await outbox(conn)
    received = events(sub.messages)
    assert {e["id"] for e in received} == {event_id for event_id, _, _ in entries}  # every change, by its id
    by_id = {e["id"]: (e["data"]["alertId"], e["type"].rsplit(".", 1)[1]) for e in received}
    assert Counter(by_id.values()) == Counter((alert_id, kind) for _, alert_id, kind in entries)  # one id each
    assert Counter(kind for _, _, kind in entries) == {"firing": n + 1, "resolved": n}
    await das.unplug()


async def _count(conn: asyncpg.Connection, n: int) -> bool:
    return await conn.fetchval("SELECT count(*) FROM alert_outbox") == n

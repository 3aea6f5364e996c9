"""The alert pipeline end to end on two replicas of one schema: the same device on both gives one
alert and one event per condition, and when the elected replica loses its election another leads
within seconds and delivers (issue #13, Tests)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from hj212gw.alerts.pipeline import AlertPipeline
from hj212gw.cli.serve import Running
from hj212gw.simulator.scenarios import Scenario
from tests.alerts.conftest import Subscribe
from tests.alerts.e2e import WiredDevice, alert_settings, alerts, events, recent_start, thresholds
from tests.integration.serving import start
from tests.integration.waiting import eventually, until

pytestmark = pytest.mark.integration

SHANGHAI = ZoneInfo("Asia/Shanghai")
START = recent_start(hours_ago=5)
EPISODES = "[defaults]\nepisode_merge_gap_s = 1200\noffline_alert_after_s = 0.5\n"


def device(*scenarios: Scenario, start_at: datetime = START, seed: int = 1) -> WiredDevice:
    return WiredDevice(st="32", start=start_at, scenarios=scenarios, uploads=frozenset({"2051"}), seed=seed)


def pipeline(running: Running) -> AlertPipeline:
    assert running.gateway.alerts is not None
    return running.gateway.alerts


async def outbox(conn: asyncpg.Connection) -> list[tuple[str, int, str]]:
    """(event id, alert id, type) of every outbox entry, in delivery order."""
    rows = await conn.fetch("SELECT event_id, alert_id, type FROM alert_outbox ORDER BY txid, id")
    return [(str(r["event_id"]), r["alert_id"], r["type"]) for r in rows]


async def delivered(conn: asyncpg.Connection) -> bool:
    """The MQTT sink's cursor reached the last outbox entry."""
    last = await conn.fetchval("SELECT max(id) FROM alert_outbox")
    done = await conn.fetchval("SELECT last_id FROM alert_sink_cursors WHERE sink = 'mqtt'")
    return last is not None and done == last


async def test_two_replicas_raise_one_alert_per_condition_and_one_firing_event(
    gateways: list[Running], pg_dsn: str, schema: str, root: str, subscribe: Subscribe, conn: asyncpg.Connection,
    tmp_path: Path,
) -> None:  # fmt: skip
    sub = await subscribe(f"{root}/v1/alerts/#")
    path = thresholds(tmp_path, EPISODES)
    first = await start(gateways, pg_dsn, schema, **alert_settings(root, "gw1", thresholds_file=path))
    second = await start(gateways, pg_dsn, schema, **alert_settings(root, "gw2", thresholds_file=path))
    das = device(Scenario("fault", flag="D", factors=("w01018",), start_s=1800, duration_s=3600))
    await das.plug(first)
    await das.run(3600)  # D on the first replica: fired there
    await eventually(lambda: _firing(conn, "flag_episode"))
    await das.unplug()
    await das.plug(second)  # the same device on the other replica: still D, then N again
    await das.run(2 * 3600)
    await eventually(lambda: _resolved(conn, "flag_episode"))
    await das.unplug()  # offline: both replicas' trackers know it, the leader alone scans
    await eventually(lambda: _firing(conn, "device_offline"), timeout_s=10)
    await eventually(lambda: delivered(conn), timeout_s=10)
    await until(lambda: len(events(sub.messages)) == 3, timeout_s=10)
    assert [(a.rule, a.status) for a in await alerts(conn)] == [
        ("flag_episode", "resolved"),
        ("device_offline", "firing"),
    ]
    assert [(e["data"]["labels"]["alertname"], e["type"]) for e in events(sub.messages)] == [
        ("flag_episode", "hj212gw.alert.firing"), ("flag_episode", "hj212gw.alert.resolved"),
        ("device_offline", "hj212gw.alert.firing"),
    ]  # fmt: skip
    assert [pipeline(r).leader.is_leader for r in (first, second)].count(True) == 1


async def _firing(conn: asyncpg.Connection, rule: str) -> bool:
    return any(a.status == "firing" for a in await alerts(conn, rule))


async def _resolved(conn: asyncpg.Connection, rule: str) -> bool:
    return any(a.status == "resolved" for a in await alerts(conn, rule))


async def test_when_the_leaders_election_dies_another_replica_leads_within_seconds_and_delivers(
    gateways: list[Running], pg_dsn: str, schema: str, root: str, subscribe: Subscribe, conn: asyncpg.Connection,
    tmp_path: Path,
) -> None:  # fmt: skip
    sub = await subscribe(f"{root}/v1/alerts/#")
    path = thresholds(tmp_path, EPISODES)
    replicas = [
        await start(gateways, pg_dsn, schema, **alert_settings(root, f"gw{n}", thresholds_file=path)) for n in (1, 2)
    ]
    await until(lambda: any(pipeline(r).leader.is_leader for r in replicas))
    leader, follower = sorted(replicas, key=lambda r: not pipeline(r).leader.is_leader)
    election = pipeline(leader).leader._conn
    assert election is not None
    assert await conn.fetchval("SELECT pg_terminate_backend($1)", election.get_server_pid())
    await until(lambda: pipeline(follower).leader.is_leader, timeout_s=3)  # leader_check_s is 0.3 s
    assert not pipeline(leader).leader.is_leader
    das = device(Scenario("fault", flag="D", factors=("w01018",), start_s=0))
    await das.plug(leader)  # raised on the replica that lost the election, delivered by the new leader
    await das.run(1800)
    await until(lambda: len(events(sub.messages)) == 1, timeout_s=10)
    assert events(sub.messages)[0]["source"] == "hj212gw/" + follower.gateway.settings.gateway_id
    await das.unplug()  # and the new leader's scan raises device_offline
    await until(lambda: len(events(sub.messages, "device_offline")) == 1, timeout_s=10)

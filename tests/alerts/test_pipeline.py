"""The alert pipeline end to end: simulated data loggers on a virtual clock send to a real gateway
(PostgreSQL, Mosquitto); each per-packet rule fires and resolves from a simulator scenario, the
leader's scan raises device_offline, and the MQTT stream carries every change as a CloudEvent
next to the retained device state and the gateway's status with its Last Will (issue #13, Tests).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from hj212gw.cli.serve import Running
from hj212gw.simulator.scenarios import Scenario
from tests.alerts.conftest import Subscribe
from tests.alerts.e2e import WiredDevice, alert_settings, alerts, events, recent_start, thresholds
from tests.integration.das import data_packet
from tests.integration.serving import exists, start
from tests.integration.waiting import eventually, until

pytestmark = pytest.mark.integration

SHANGHAI = ZoneInfo("Asia/Shanghai")
START = recent_start(hours_ago=8)  # the longest run is 7 simulated hours


def at(minutes: float) -> datetime:
    """The moment `minutes` after START, in UTC (as PostgreSQL returns it)."""
    return (START + timedelta(minutes=minutes)).astimezone(UTC)


def device(*scenarios: Scenario, st: str = "32", **spec: object) -> WiredDevice:
    return WiredDevice(**{"st": st, "start": START, "scenarios": scenarios, "uploads": frozenset({"2051"}), **spec})


async def gateway(started: list[Running], pg_dsn: str, schema: str, root: str, path: Path) -> Running:
    return await start(started, pg_dsn, schema, **alert_settings(root, thresholds_file=path))


async def test_a_fault_episode_fires_and_resolves_on_the_broker_with_the_device_state_and_gateway_status(
    gateways: list[Running], pg_dsn: str, schema: str, root: str, subscribe: Subscribe, conn: asyncpg.Connection,
    tmp_path: Path,
) -> None:  # fmt: skip
    sub = await subscribe(f"{root}/#")
    running = await gateway(
        gateways, pg_dsn, schema, root, thresholds(tmp_path, "[defaults]\nepisode_merge_gap_s = 1200\n")
    )
    das = device(Scenario("fault", flag="D", factors=("w01018",), start_s=1800, duration_s=1800))
    await das.plug(running)
    await das.run(2 * 3600)
    await until(lambda: len(events(sub.messages, "flag_episode")) == 2, timeout_s=10)
    [alert] = await alerts(conn, "flag_episode")
    assert (alert.status, alert.factor, alert.detail) == ("resolved", "w01018", "D")
    assert alert.starts_at == at(30) and alert.ends_at == at(60)  # the first D value; N resumed
    firing, resolved = events(sub.messages, "flag_episode")
    mn = das.spec.mn
    assert firing["topic"] == resolved["topic"] == f"{root}/v1/alerts/warning/flag_episode/{mn}"
    assert [firing["type"], resolved["type"]] == ["hj212gw.alert.firing", "hj212gw.alert.resolved"]
    assert firing["specversion"] == "1.0" and firing["source"] == "hj212gw/gw1"
    assert firing["subject"] == resolved["subject"] == firing["data"]["fingerprint"]
    assert firing["data"]["alertId"] == resolved["data"]["alertId"] == alert.id and firing["id"] != resolved["id"]
    assert firing["data"]["labels"] == {"alertname": "flag_episode", "severity": "warning", "mn": mn,
                                        "factor": "w01018", "detail": "D"}  # fmt: skip
    assert firing["data"]["endsAt"] is None and resolved["data"]["endsAt"] is not None
    assert sub.on(f"{root}/v1/gateways/gw1/status") == [b"online"]
    state_topic = f"{root}/v1/devices/{mn}/state"
    await until(lambda: bool(sub.on(state_topic)), timeout_s=5)
    assert json.loads(sub.on(state_topic)[-1])["state"] == "online"
    await das.unplug()
    await until(lambda: json.loads(sub.on(state_topic)[-1])["state"] == "offline", timeout_s=5)
    later = await subscribe(f"{root}/v1/devices/+/state")  # retained: a new subscriber gets it at once
    await until(lambda: [json.loads(p)["state"] for p in later.on(state_topic)] == ["offline"])


async def test_over_limit_fires_on_hour_data_flagged_n_only_and_resolves(
    gateways: list[Running], pg_dsn: str, schema: str, root: str, subscribe: Subscribe, conn: asyncpg.Connection,
    tmp_path: Path,
) -> None:  # fmt: skip
    sub = await subscribe(f"{root}/v1/alerts/critical/#")
    running = await gateway(gateways, pg_dsn, schema, root, thresholds(tmp_path, "[factors.w01018]\nlimit = 50\n"))
    das = device(
        Scenario("over_limit", factors=("w01018",), start_s=3600, duration_s=4 * 3600),
        Scenario("fault", flag="D", factors=("w01018",), start_s=3600, duration_s=2 * 3600),  # over, but not N
        uploads=frozenset({"2061"}),
    )
    await das.plug(running)
    await das.run(7 * 3600, step_s=3600)
    await until(lambda: len(events(sub.messages, "over_limit")) == 2, timeout_s=10)
    [alert] = await alerts(conn, "over_limit")
    assert (alert.status, alert.factor) == ("resolved", "w01018")
    assert alert.starts_at == at(180) and alert.value is not None and alert.value > 50  # hours 1 and 2 were D
    assert alert.ends_at == at(300)  # the first hour back under the limit
    assert [e["type"] for e in events(sub.messages, "over_limit")] == ["hj212gw.alert.firing", "hj212gw.alert.resolved"]
    await das.unplug()


async def test_flatline_fires_after_the_points_and_resolves_at_the_first_other_value(
    gateways: list[Running], pg_dsn: str, schema: str, root: str, subscribe: Subscribe, conn: asyncpg.Connection,
    tmp_path: Path,
) -> None:  # fmt: skip
    sub = await subscribe(f"{root}/v1/alerts/warning/flatline/#")
    running = await gateway(gateways, pg_dsn, schema, root, thresholds(tmp_path, "[defaults]\nflatline_points = 5\n"))
    das = device(Scenario("flatline", factors=("w01018",), start_s=3600, duration_s=3600))
    await das.plug(running)
    await das.run(3 * 3600)
    # Only w01018's: the site's other factors follow a daily curve whose rounded values can stand
    # still for five minutes at some hours of the day (a real flatline at flatline_points = 5).
    await until(lambda: len(_of_factor(events(sub.messages), "w01018")) == 2, timeout_s=10)
    [alert] = [a for a in await alerts(conn, "flatline") if a.factor == "w01018"]
    assert (alert.status, alert.factor, alert.detail) == ("resolved", "w01018", "2051")
    assert alert.starts_at == at(60) and alert.ends_at == at(120)  # six stuck minutes: 60 … 110
    await das.unplug()


def _of_factor(found: list[dict[str, Any]], factor: str) -> list[dict[str, Any]]:
    return [e for e in found if e["data"]["labels"].get("factor") == factor]


async def test_dilution_fires_on_high_o2_and_resolves(
    gateways: list[Running], pg_dsn: str, schema: str, root: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    running = await gateway(gateways, pg_dsn, schema, root, thresholds(tmp_path, "[defaults]\nanomaly_points = 3\n"))
    das = device(Scenario("dilution", start_s=3600, duration_s=3600), st="31")
    await das.plug(running)
    await das.run(3 * 3600)
    await eventually(lambda: _resolved(conn, "dilution_suspected"), timeout_s=10)
    [alert] = await alerts(conn, "dilution_suspected")
    assert (alert.factor, alert.value, alert.starts_at, alert.ends_at) == ("a19001", 20.6, at(60), at(120))
    await das.unplug()


async def test_a_changed_instrument_range_in_3020_is_a_parameter_changed_event(
    gateways: list[Running], pg_dsn: str, schema: str, root: str, subscribe: Subscribe, conn: asyncpg.Connection,
    tmp_path: Path,
) -> None:  # fmt: skip
    sub = await subscribe(f"{root}/v1/alerts/warning/parameter_changed/#")
    running = await gateway(gateways, pg_dsn, schema, root, thresholds(tmp_path, ""))
    das = device(Scenario("parameter_change", factors=("w01018",), start_s=2 * 3600))
    await das.plug(running)
    await das.run(4 * 3600)
    await until(lambda: len(events(sub.messages)) == 2, timeout_s=10)
    [alert] = await alerts(conn, "parameter_changed")  # one change: hours 0, 1 at 0-500, then 0-1000
    assert (alert.status, alert.factor, alert.detail) == ("resolved", "w01018", "i13001")
    firing, resolved = events(sub.messages)
    assert firing["data"]["details"] | {} == {"parameter": "i13001", "old": "0-500", "new": "0-1000"}
    assert resolved["type"] == "hj212gw.alert.resolved"  # an event: fired and cleared at once
    await das.unplug()


async def _resolved(conn: asyncpg.Connection, rule: str) -> bool:
    return any(a.status == "resolved" for a in await alerts(conn, rule))


async def test_a_resend_with_another_value_is_a_value_revised_event(
    gateways: list[Running], pg_dsn: str, schema: str, root: str, subscribe: Subscribe, conn: asyncpg.Connection,
    tmp_path: Path,
) -> None:  # fmt: skip
    sub = await subscribe(f"{root}/v1/alerts/warning/value_revised/#")
    running = await gateway(gateways, pg_dsn, schema, root, thresholds(tmp_path, ""))
    await eventually(lambda: exists(conn, "SELECT 1 FROM rule_cursors WHERE name = 'value_revised'"))  # first round
    das = device()
    await das.plug(running)
    await das.run(3600)
    assert das.das is not None
    await das.das.send(data_packet("20990101000000001", mn=das.spec.mn, data_time=_hj(20), values={"w01018": "99.5"}))
    assert (await das.das.reply()).packet.cn == "9014"
    await until(lambda: len(events(sub.messages)) == 2, timeout_s=10)
    [alert] = await alerts(conn, "value_revised")
    assert (alert.status, alert.factor, alert.detail, alert.value) == ("resolved", "w01018", "2051", 99.5)
    details = events(sub.messages)[0]["data"]["details"]
    assert details["new"] == 99.5 and details["old"] != 99.5 and details["data_time"] == at(20).isoformat()
    await das.unplug()


async def test_device_offline_is_raised_by_the_leaders_scan_and_resolved_when_it_returns(
    gateways: list[Running], pg_dsn: str, schema: str, root: str, subscribe: Subscribe, conn: asyncpg.Connection,
    tmp_path: Path,
) -> None:  # fmt: skip
    sub = await subscribe(f"{root}/v1/alerts/critical/device_offline/#")
    path = thresholds(tmp_path, "[defaults]\noffline_alert_after_s = 0.5\n")
    running = await gateway(gateways, pg_dsn, schema, root, path)
    das = device()
    await das.plug(running)
    await das.run(1800)
    await eventually(lambda: exists(conn, "SELECT 1 FROM device_state WHERE state = 'online'"))
    await das.unplug()
    await until(lambda: len(events(sub.messages)) == 1, timeout_s=10)
    [alert] = await alerts(conn, "device_offline")
    assert alert.status == "firing" and events(sub.messages)[0]["data"]["labels"]["mn"] == das.spec.mn
    await das.plug(running)
    await das.run(600)  # an MN is bound by its first packet
    await until(lambda: len(events(sub.messages)) == 2, timeout_s=10)
    assert [a.status for a in await alerts(conn, "device_offline")] == ["resolved"]
    await das.unplug()


def _hj(minutes: float) -> str:
    return (START + timedelta(minutes=minutes)).strftime("%Y%m%d%H%M%S")

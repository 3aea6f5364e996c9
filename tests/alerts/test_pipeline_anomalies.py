"""The anomaly rules flagging should have caught, end to end (晋环规〔2024〕2号 Art. 22(4), 29(4)):
a simulated data logger on a virtual clock sends to a real gateway (PostgreSQL, Mosquitto); zero,
negative, out-of-range, jumping and near-limit values from simulator scenarios fire each rule, with
a row in `alerts` and a firing event on the broker, and the rule resolves when the values clear
(issue #13, Tests). w01018 (COD) runs at 40 ± 28 % and at 82.9 … 85.1 in over_limit (limit 50).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from hj212gw.cli.serve import Running
from hj212gw.simulator.scenarios import Scenario
from tests.alerts.conftest import Subscribe
from tests.alerts.e2e import AlertRow, WiredDevice, alert_settings, alerts, events, recent_start, thresholds
from tests.integration.serving import start
from tests.integration.waiting import until

pytestmark = pytest.mark.integration

START = recent_start(hours_ago=4)  # each run is 3 simulated hours


def at(minutes: float) -> datetime:
    """The moment `minutes` after START, in UTC (as PostgreSQL returns it)."""
    return (START + timedelta(minutes=minutes)).astimezone(UTC)


async def raised(
    kind: str, rule: str, toml: str, gateways: list[Running], pg_dsn: str, schema: str, root: str,
    subscribe: Subscribe, conn: asyncpg.Connection, tmp_path: Path, detail: str = "2051",
    factor: str = "w01018",
) -> tuple[list[AlertRow], list[dict[str, Any]]]:  # fmt: skip
    """Run one device for 3 simulated hours with a `kind` scenario on `factor` from minute 60 to 120,
    and return the alerts of `rule` (all resolved, detail the CN judged) and its events once each
    alert's resolution is on the broker."""
    sub = await subscribe(f"{root}/v1/alerts/warning/{rule}/#")
    running = await start(gateways, pg_dsn, schema, **alert_settings(root, thresholds_file=thresholds(tmp_path, toml)))
    das = WiredDevice(st="32", start=START, uploads=frozenset({"2051"}),
                      scenarios=(Scenario(kind, factors=(factor,), start_s=3600, duration_s=3600),))  # fmt: skip
    await das.plug(running)
    await das.run(3 * 3600)
    await until(lambda: _settled(events(sub.messages)), timeout_s=10)
    await das.unplug()
    found = await alerts(conn, rule)
    assert {(a.status, a.factor, a.detail) for a in found} == {("resolved", factor, detail)}
    assert [e["data"]["labels"]["mn"] for e in events(sub.messages)] == [das.spec.mn] * 2 * len(found)
    return found, events(sub.messages)


def _settled(found: list[dict[str, Any]]) -> bool:
    types = [e["type"] for e in found]
    return bool(types) and types.count("hj212gw.alert.firing") == types.count("hj212gw.alert.resolved")


async def test_zero_values_fire_zero_value_and_a_non_zero_value_resolves_it(
    gateways: list[Running], pg_dsn: str, schema: str, root: str, subscribe: Subscribe, conn: asyncpg.Connection,
    tmp_path: Path,
) -> None:  # fmt: skip
    [alert], _ = await raised("zero", "zero_value", "[defaults]\nanomaly_points = 3\n",
                              gateways, pg_dsn, schema, root, subscribe, conn, tmp_path)  # fmt: skip
    assert alert.value == 0.0 and alert.ends_at == at(120)


async def test_negative_values_fire_negative_value_and_a_value_of_zero_or_more_resolves_it(
    gateways: list[Running], pg_dsn: str, schema: str, root: str, subscribe: Subscribe, conn: asyncpg.Connection,
    tmp_path: Path,
) -> None:  # fmt: skip
    [alert], _ = await raised("negative", "negative_value", "[defaults]\nanomaly_points = 3\n",
                              gateways, pg_dsn, schema, root, subscribe, conn, tmp_path)  # fmt: skip
    assert alert.value is not None and alert.value < 0 and alert.ends_at == at(120)


async def test_values_over_the_configured_range_fire_out_of_range_and_resolve_back_inside(
    gateways: list[Running], pg_dsn: str, schema: str, root: str, subscribe: Subscribe, conn: asyncpg.Connection,
    tmp_path: Path,
) -> None:  # fmt: skip
    toml = "[defaults]\nanomaly_points = 3\n[factors.w01018]\nrange_min = 0\nrange_max = 70\n"
    [alert], _ = await raised(
        "over_limit", "out_of_range", toml, gateways, pg_dsn, schema, root, subscribe, conn, tmp_path
    )
    assert alert.value is not None and alert.value > 70 and alert.ends_at == at(120)


async def test_a_jump_up_and_a_jump_down_are_two_sudden_jump_events_each_cleared_by_the_next_value(
    gateways: list[Running], pg_dsn: str, schema: str, root: str, subscribe: Subscribe, conn: asyncpg.Connection,
    tmp_path: Path,
) -> None:  # fmt: skip
    toml = "[factors.w01018]\njump_factor = 1.4\njump_min_delta = 10\n"  # noise moves it ≤ 1.22× a step
    up, down = (await raised("over_limit", "sudden_jump", toml, gateways, pg_dsn, schema, root, subscribe, conn,
                             tmp_path))[0]  # fmt: skip
    assert (up.starts_at, up.ends_at) == (at(60), at(70)) and up.value is not None and up.value > 80
    assert (down.starts_at, down.ends_at) == (at(120), at(130)) and down.value is not None and down.value < 60


async def test_values_held_just_under_the_limit_fire_near_limit_and_resolve_when_they_move_away(
    gateways: list[Running], pg_dsn: str, schema: str, root: str, subscribe: Subscribe, conn: asyncpg.Connection,
    tmp_path: Path,
) -> None:  # fmt: skip
    # constant: exactly the base, 40.0, inside [40.02 × 0.999, 40.02]; the noisy values are not 4 in a row
    toml = '[factors.w01018]\nlimit = 40.02\nlimit_cn = "2051"\nnear_limit_band = 0.001\nnear_limit_points = 4\n'
    [alert], _ = await raised("constant", "near_limit", toml, gateways, pg_dsn, schema, root, subscribe, conn, tmp_path,
                              detail="")  # fmt: skip
    assert alert.value == 40.0 and alert.ends_at == at(120)


async def test_a_zero_flow_while_concentrations_report_fires_flow_zero_with_concentration_and_resolves(
    gateways: list[Running], pg_dsn: str, schema: str, root: str, subscribe: Subscribe, conn: asyncpg.Connection,
    tmp_path: Path,
) -> None:  # fmt: skip
    [alert], _ = await raised("zero", "flow_zero_with_concentration", "[defaults]\nanomaly_points = 3\n", gateways,
                              pg_dsn, schema, root, subscribe, conn, tmp_path, factor="w00000")  # fmt: skip
    assert alert.value == 0.0 and alert.ends_at == at(120)
    assert await alerts(conn, "zero_value") == []  # a flow at zero is this rule's, not zero_value's

"""The command channel end to end: a real gateway, real PostgreSQL, a simulated DAS on a real socket.

Each command goes in as a `commands` row (through `CommandRunner.submit`, as the backfill will, or
through the API) and is followed to its final state: the row, the awaited outcome and the metric.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from hj212gw.api.app import bound_port
from hj212gw.cli.serve import Running
from hj212gw.monitor.commands import CommandOutcome
from hj212gw.protocol.commands import UnknownCommand
from hj212gw.storage.commands import CommandStore, NewCommand
from hj212gw.storage.db import Database
from tests.conftest import StartGateway
from tests.integration.linked import SHANGHAI, LinkedDevice
from tests.integration.serving import sample, start
from tests.integration.waiting import eventually, until

pytestmark = pytest.mark.integration

FAST = {"over_time_s": 1.0, "re_count": 1, "offline_timeout_s": 0.5, "settle_s": 2.0}


@pytest.fixture
async def gateway(start_gateway: StartGateway) -> Running:
    return await start_gateway(commands=FAST)


@pytest.fixture
async def linked(gateway: Running) -> AsyncIterator[LinkedDevice]:
    assert gateway.gateway.port is not None
    device = await LinkedDevice.connect(gateway.gateway.port)
    yield device
    await device.close()


async def run(gateway: Running, mn: str, command: str, params: dict[str, Any] | None = None) -> CommandOutcome:
    ticket = await gateway.gateway.commands.submit(mn, command, params or {}, purpose="test")
    return await _within(ticket.outcome, 10)


async def _within(awaitable: Any, seconds: float) -> Any:
    return await asyncio.wait_for(awaitable, seconds)


async def row(conn: asyncpg.Connection, command_id: int) -> asyncpg.Record:
    async def final() -> bool:
        state = await conn.fetchval("SELECT state FROM commands WHERE id = $1", command_id)
        return state not in ("queued", "sent", "acknowledged")

    await eventually(final)
    record = await conn.fetchrow("SELECT * FROM commands WHERE id = $1", command_id)
    assert record is not None
    return record


async def test_a_get_succeeds_with_the_answer_recorded(
    gateway: Running, linked: LinkedDevice, conn: asyncpg.Connection
) -> None:
    outcome = await run(gateway, linked.mn, "get_min_interval")
    assert outcome.state == "succeeded" and outcome.exe_rtn == 1
    assert outcome.result == {"cp": {"MinInterval": "10"}}
    stored = await row(conn, outcome.id)
    assert stored["cn"] == "1063" and stored["name"] == "get_min_interval" and stored["purpose"] == "test"
    assert stored["qn_rtn"] == 1 and stored["exe_rtn"] == 1 and stored["gateway_id"] == "test"
    assert stored["sent_at"] <= stored["acknowledged_at"] <= stored["finished_at"]
    assert '"MinInterval": "10"' in stored["result"]
    assert sample(gateway, "hj212gw_commands_total", outcome="succeeded") == 1


async def test_a_history_fetch_brings_its_rows_and_counts_them(
    gateway: Running, linked: LinkedDevice, conn: asyncpg.Connection
) -> None:
    begin = linked.das.local_now().replace(minute=0, second=0)
    first, last = (begin.replace(hour=h).strftime("%Y%m%d%H%M%S") for h in (0, 1))
    outcome = await run(gateway, linked.mn, "fetch_hour_history", {"BeginTime": first, "EndTime": last})
    assert outcome.state == "succeeded" and outcome.exe_rtn == 1 and not outcome.no_data
    assert outcome.result is not None
    assert outcome.result["packets"] == 2 and outcome.result["packets_stored"] == 2
    # Final only once the rows are committed: they are there when the outcome is.
    hours = await conn.fetch("SELECT DISTINCT data_time FROM data WHERE mn = $1 AND cn = '2061'", linked.mn)
    assert len(hours) == 2
    assert outcome.result["data_time_first"] == min(r["data_time"] for r in hours).isoformat().replace("+00:00", "Z")


async def test_a_fetch_of_a_range_without_data_ends_with_exe_rtn_100(
    gateway: Running, linked: LinkedDevice, conn: asyncpg.Connection
) -> None:
    outcome = await run(gateway, linked.mn, "2061", {"BeginTime": "20200101000000", "EndTime": "20200101020000"})
    assert outcome.state == "succeeded" and outcome.no_data and outcome.reason == "no data (ExeRtn=100)"
    assert (await row(conn, outcome.id))["exe_rtn"] == 100


async def test_a_refused_command_ends_refused_with_its_qn_rtn(
    gateway: Running, linked: LinkedDevice, conn: asyncpg.Connection
) -> None:
    outcome = await run(gateway, linked.mn, "get_site_info", {"InfoId": "i12001"})  # unknown to the simulator
    assert outcome.state == "refused" and outcome.qn_rtn == 8 and outcome.reason == "QnRtn=8 (cn_error)"
    assert (await row(conn, outcome.id))["state"] == "refused"
    assert sample(gateway, "hj212gw_commands_total", outcome="refused") == 1


async def test_a_notification_ends_with_its_9013(gateway: Running, linked: LinkedDevice) -> None:
    outcome = await run(gateway, linked.mn, "stop_realtime")
    assert outcome.state == "succeeded" and outcome.qn_rtn == 1


async def test_a_device_that_never_answers_times_out_after_overtime_and_recount(
    gateway: Running, conn: asyncpg.Connection
) -> None:
    assert gateway.gateway.port is not None
    mute = await LinkedDevice.connect(gateway.gateway.port, mute=True, index=1)
    try:
        started = time.monotonic()
        outcome = await run(gateway, mute.mn, "get_time")
        took = time.monotonic() - started
        assert outcome.state == "timed_out" and outcome.reason == "no_reply"
        assert 2.0 <= took < 5.0  # OverTime 1 s x (1 + ReCount 1), polled once a second
        assert mute.received.count("1011") == 2  # the request and its one resend
        assert (await row(conn, outcome.id))["state"] == "timed_out"
    finally:
        await mute.close()


async def test_a_command_to_a_device_this_replica_does_not_hold_is_device_offline(
    gateway: Running, conn: asyncpg.Connection
) -> None:
    outcome = await run(gateway, "NOSUCHDEVICE0000000000", "get_time")
    assert outcome.state == "device_offline"
    assert (await row(conn, outcome.id))["state"] == "device_offline"


async def test_a_closed_connection_fails_its_pending_command(gateway: Running, conn: asyncpg.Connection) -> None:
    assert gateway.gateway.port is not None
    mute = await LinkedDevice.connect(gateway.gateway.port, mute=True, index=2)
    ticket = await gateway.gateway.commands.submit(mute.mn, "get_time", {})
    await until(lambda: "1011" in mute.received)
    await mute.close()
    outcome = await _within(ticket.outcome, 5)
    assert outcome.state == "failed" and outcome.reason.startswith("connection closed")
    assert (await row(conn, outcome.id))["reason"].startswith("connection closed")


async def test_submit_refuses_an_unknown_command_before_storing_anything(
    gateway: Running, conn: asyncpg.Connection
) -> None:
    with pytest.raises(UnknownCommand):
        await gateway.gateway.commands.submit("X", "9999", {})
    assert await conn.fetchval("SELECT count(*) FROM commands") == 0


TOKEN = "r" * 24


async def api_call(running: Running, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{bound_port(running.http_runner)}{path}"
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session,
        session.request(method, url, json=body) as resp,
    ):
        return resp.status, await resp.json()


async def final_over_api(running: Running, command_id: int) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def done() -> bool:
        _, seen["command"] = await api_call(running, "GET", f"/api/v1/commands/{command_id}")
        return seen["command"]["state"] not in ("queued", "sent", "acknowledged")

    await eventually(done, timeout_s=10)
    return seen["command"]


async def test_a_command_posted_to_one_replica_is_sent_by_the_replica_holding_the_device(
    gateways: list[Running], pg_dsn: str, schema: str
) -> None:
    first = await start(gateways, pg_dsn, schema, gateway_id="first", http_token=TOKEN, commands=FAST)
    second = await start(gateways, pg_dsn, schema, gateway_id="second", http_token=TOKEN, commands=FAST)
    assert second.gateway.port is not None
    device = await LinkedDevice.connect(second.gateway.port)
    try:
        status, created = await api_call(first, "POST", f"/api/v1/devices/{device.mn}/commands", {"cn": "1011"})
        assert status == 201
        command = await final_over_api(first, created["id"])
        assert command["state"] == "succeeded" and command["gateway_id"] == "second"
        assert set(command["result"]["cp"]) == {"SystemTime"}
        assert sample(second, "hj212gw_commands_total", outcome="succeeded") == 1
        assert sample(first, "hj212gw_commands_total", outcome="succeeded") == 0
        _, listed = await api_call(first, "GET", f"/api/v1/devices/{device.mn}/commands")
        assert [c["id"] for c in listed["commands"]] == [created["id"]]
    finally:
        await device.close()


async def test_a_command_posted_for_a_device_no_replica_holds_ends_device_offline(
    start_gateway: StartGateway,
) -> None:
    running = await start_gateway(http_token=TOKEN, commands=FAST)
    status, created = await api_call(running, "POST", "/api/v1/devices/OFFLINE000000000/commands", {"cn": "1011"})
    assert status == 201
    command = await final_over_api(running, created["id"])
    assert command["state"] == "device_offline" and command["sent_at"] is None
    assert command["reason"] == "no gateway replica held a connection of this device"
    assert sample(running, "hj212gw_commands_total", outcome="device_offline") == 1


async def test_a_command_queued_while_every_replica_was_down_is_never_sent_later(
    start_gateway: StartGateway, pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    first = await start_gateway(commands=FAST)
    assert first.gateway.port is not None
    device = await LinkedDevice.connect(first.gateway.port)
    await device.close()
    await first.stop()
    store = CommandStore(first.db)
    await first.db.connect()  # the stopped gateway's pool, reopened to queue as the CLI would
    command_id = await store.insert(NewCommand(device.mn, "1011", "get_time", {}))
    await first.db.close()
    await asyncio.sleep(0.6)  # older than the offline timeout
    second = await start_gateway(commands=FAST)
    assert second.gateway.port is not None
    again = await LinkedDevice.connect(second.gateway.port)
    try:
        assert (await row(conn, command_id))["state"] == "device_offline"
        assert "1011" not in again.received
    finally:
        await again.close()


async def test_set_time_without_system_time_sets_the_device_to_the_gateways_clock(
    gateway: Running, linked: LinkedDevice
) -> None:
    def drift() -> timedelta:  # the device's clock (naive, device time) against the gateway's
        return abs(linked.das.local_now().replace(tzinfo=None) - datetime.now(SHANGHAI).replace(tzinfo=None))

    assert drift() > timedelta(hours=1)  # the simulated device lives in yesterday
    outcome = await run(gateway, linked.mn, "set_time")
    assert outcome.state == "succeeded"
    assert drift() < timedelta(seconds=5)


async def test_commands_a_previous_run_left_open_end_failed_when_the_replica_starts(
    start_gateway: StartGateway, db: Database, conn: asyncpg.Connection
) -> None:
    store = CommandStore(db)
    ids = [await store.insert(NewCommand("MN1", "1011", "get_time", {}), announce=False) for _ in range(3)]
    await conn.execute("UPDATE commands SET state = 'sent', gateway_id = 'test' WHERE id = $1", ids[0])
    await conn.execute("UPDATE commands SET state = 'acknowledged', gateway_id = 'other' WHERE id = $1", ids[1])
    running = await start_gateway(commands=FAST)
    first = await row(conn, ids[0])
    assert first["state"] == "failed" and first["reason"] == "the gateway restarted before it finished"
    assert (await conn.fetchval("SELECT state FROM commands WHERE id = $1", ids[1])) == "acknowledged"  # not ours
    assert (await row(conn, ids[2]))["state"] == "device_offline"  # queued, never announced: expired
    assert sample(running, "hj212gw_commands_total", outcome="failed") == 1


async def test_a_password_the_device_took_is_pinned_so_its_next_packets_are_admitted(
    gateway: Running, linked: LinkedDevice, conn: asyncpg.Connection
) -> None:
    outcome = await run(gateway, linked.mn, "set_password", {"NewPW": "654321"})
    assert outcome.state == "succeeded"
    answered = await run(gateway, linked.mn, "get_min_interval")  # its answer carries the new PW
    assert answered.state == "succeeded" and answered.result == {"cp": {"MinInterval": "10"}}
    await eventually(lambda: _pw_is(conn, linked.mn, "654321"))


async def _pw_is(conn: asyncpg.Connection, mn: str, pw: str) -> bool:
    return await conn.fetchval("SELECT pw FROM devices WHERE mn = $1", mn) == pw

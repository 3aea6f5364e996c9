"""monitor/devices.py with a real gateway, PostgreSQL and sockets: a device's state follows its
connection and its data, is stored in `device_state` and `device_events`, and shows in the API;
and the tracker on its own behind a proxy (an outage, a device followed from another's row)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from hj212gw.api import bound_port
from hj212gw.cli.serve import Running
from hj212gw.metrics import Metrics
from hj212gw.monitor.devices import DeviceTracker
from hj212gw.monitor.hub import StoredData
from hj212gw.monitor.state import DeviceState, DeviceStateChanged
from hj212gw.settings import DeviceStateSettings
from hj212gw.storage.db import OUTAGE_ERRORS, Database
from hj212gw.storage.device_state import DeviceStateStore
from tests.conftest import Dial, StartGateway
from tests.integration.das import MN, data_packet
from tests.integration.proxy import TcpProxy
from tests.integration.serving import connect, start
from tests.integration.waiting import eventually, until

pytestmark = pytest.mark.integration

# Real-time data every second (fixed in the registry): silent after 3 s without one.
FAST = {"tolerance": 3.0, "floor_s": 0.5, "scan_interval_s": 0.1, "last_data_interval_s": 0}


def rtd(n: int, mn: str = MN) -> bytes:
    data_time = (datetime(2024, 3, 15, 10, 0) + timedelta(seconds=n)).strftime("%Y%m%d%H%M%S")
    return data_packet(f"20240315100000{n:03d}", mn=mn, cn="2011", data_time=data_time)


async def api_get(running: Running, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{bound_port(running.http_runner)}{path}") as resp,  # type: ignore[arg-type]
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def stored_state(conn: asyncpg.Connection, mn: str = MN) -> str | None:
    return await conn.fetchval("SELECT state FROM device_state WHERE mn = $1", mn)  # type: ignore[no-any-return]


async def state_becomes(conn: asyncpg.Connection, state: str, mn: str = MN, timeout_s: float = 5.0) -> None:
    async def check() -> bool:
        return await stored_state(conn, mn) == state

    await eventually(check, timeout_s)


def transitions(running: Running) -> list[DeviceStateChanged]:
    seen: list[DeviceStateChanged] = []
    running.gateway.device_tracker.subscribers.append(seen.append)
    return seen


async def test_a_device_goes_online_silent_online_offline_and_online_again(
    start_gateway: StartGateway, dial: Dial, db: Database, conn: asyncpg.Connection
) -> None:
    await db.pool.execute("INSERT INTO devices (mn, rtd_interval_s) VALUES ($1, 1)", MN)
    running = await start_gateway(device_state=FAST)
    events = transitions(running)
    das = await dial(running)
    for n in range(3):
        await das.send(rtd(n))
        assert (await das.reply()).packet.cn == "9014"
        await asyncio.sleep(0.3)
    await state_becomes(conn, "online")

    await state_becomes(conn, "silent", timeout_s=8)  # nothing for 3 s
    row = await conn.fetchrow("SELECT cause, last_data, periods, gateway_id FROM device_state WHERE mn = $1", MN)
    assert (row["cause"], row["gateway_id"], json.loads(row["periods"])) == ("data_overdue", "test", {"2011": 1.0})
    assert json.loads(row["last_data"])["2011"]["data_time"] == "2024-03-15T02:00:02+00:00"  # 10:00:02 in Asia/Shanghai

    await das.send(rtd(3))
    await state_becomes(conn, "online")
    await das.close()
    await state_becomes(conn, "offline")
    assert [(e.old, e.new, e.cause) for e in events] == [
        (None, DeviceState.ONLINE, "connected"),
        (DeviceState.ONLINE, DeviceState.SILENT, "data_overdue"),
        (DeviceState.SILENT, DeviceState.ONLINE, "data_resumed"),
        (DeviceState.ONLINE, DeviceState.OFFLINE, "peer_closed"),
    ]
    assert MN not in running.gateway.device_tracker.states  # offline and stored: the row is its state

    again = await dial(running)
    await again.send(rtd(4))
    await state_becomes(conn, "online")
    page = await api_get(running, f"/api/v1/devices/{MN}/events?limit=3")
    assert [(e["previous"], e["state"], e["cause"]) for e in page["events"]] == [
        ("offline", "online", "connected"),
        ("online", "offline", "peer_closed"),
        ("silent", "online", "data_resumed"),
    ]
    rest = await api_get(running, page["next"])
    assert [(e["previous"], e["state"]) for e in rest["events"]] == [("online", "silent"), (None, "online")]
    assert rest["next_cursor"] is None
    device = await api_get(running, f"/api/v1/devices/{MN}")
    assert (device["state"], device["state_cause"], device["online"]) == ("online", "connected", True)
    assert device["last_data"]["2011"]["data_time"] == "2024-03-15T02:00:04Z"
    offline = await api_get(running, "/api/v1/devices?state=offline")
    assert offline["devices"] == []
    online = await api_get(running, "/api/v1/devices?state=online")
    assert [d["mn"] for d in online["devices"]] == [MN]
    assert sample(running, "hj212gw_device_transitions_total", state="silent", cause="data_overdue") == 1
    await until(lambda: sample(running, "hj212gw_devices", state="online") == 1)


def sample(running: Running, name: str, **labels: str) -> float:
    return running.gateway.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_reset_right_after_a_frame_without_cr_lf_takes_the_device_offline(
    start_gateway: StartGateway, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start_gateway()
    das = await dial(running)
    await das.send(rtd(0))
    assert (await das.reply()).packet.cn == "9014"
    await das.send(rtd(1)[:-2])  # complete but for its CR LF: taken only at the end of the stream
    await asyncio.sleep(0.1)
    sock = das.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() sends RST
    das.writer.transport.abort()

    await eventually(lambda: _count(conn, "SELECT count(*) FROM data WHERE cn = '2011'", 2))
    await until(lambda: MN not in running.gateway.online())
    await state_becomes(conn, "offline")
    assert await conn.fetchval("SELECT cause FROM device_state WHERE mn = $1", MN) == "peer_error"
    device = await api_get(running, f"/api/v1/devices/{MN}")
    assert (device["online"], device["state"]) == (False, "offline")


async def _count(conn: asyncpg.Connection, query: str, expected: int) -> bool:
    return await conn.fetchval(query) == expected  # type: ignore[no-any-return]


async def test_idle_timeout_closes_offline_with_its_reason_and_a_replaced_connection_stays_online(
    start_gateway: StartGateway, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start_gateway(connections={"idle_timeout_s": 3.0}, devices={"move_interval_s": 0})
    events = transitions(running)
    older = await dial(running)
    await older.send(rtd(0))
    assert (await older.reply()).packet.cn == "9014"
    newer = await dial(running)
    await newer.send(rtd(1))
    assert (await newer.reply()).packet.cn == "9014"
    assert await older.closed_by_gateway()
    await state_becomes(conn, "online")
    assert [e.new for e in events] == [DeviceState.ONLINE]  # the replacement is no transition

    assert await newer.closed_by_gateway(timeout_s=8)  # idle for 3 s
    await state_becomes(conn, "offline")
    assert await conn.fetchval("SELECT cause FROM device_state WHERE mn = $1", MN) == "idle_timeout"


async def test_a_restart_keeps_since_and_last_data_of_a_device_that_comes_back(
    gateways: list[Running], pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    first = await start(gateways, pg_dsn, schema)
    das = await connect(first)
    await das.send(rtd(0))
    assert (await das.reply()).packet.cn == "9014"
    await state_becomes(conn, "online")
    since = await conn.fetchval("SELECT since FROM device_state WHERE mn = $1", MN)
    await first.stop()  # shutdown: the device keeps its state until the gateway is back
    gateways.remove(first)
    await das.close()
    assert await stored_state(conn) == "online"

    second = await start(gateways, pg_dsn, schema, device_state={"lease_s": 30, "last_data_interval_s": 0})
    back = await connect(second)
    await back.send(rtd(1))
    assert (await back.reply()).packet.cn == "9014"
    await asyncio.sleep(1.5)
    row = await conn.fetchrow("SELECT state, since, last_data FROM device_state WHERE mn = $1", MN)
    assert (row["state"], row["since"]) == ("online", since)
    assert json.loads(row["last_data"])["2011"]["data_time"] == "2024-03-15T02:00:01+00:00"
    assert await conn.fetchval("SELECT count(*) FROM device_events") == 1  # online once, never offline
    await back.close()


async def test_a_restarted_gateway_takes_its_devices_offline_when_they_do_not_come_back(
    gateways: list[Running], pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    first = await start(gateways, pg_dsn, schema)
    das = await connect(first)
    await das.send(rtd(0))
    assert (await das.reply()).packet.cn == "9014"
    await state_becomes(conn, "online")
    await first.stop()
    gateways.remove(first)
    await das.close()

    second = await start(gateways, pg_dsn, schema, device_state={"lease_s": 1})
    events = transitions(second)
    await state_becomes(conn, "offline")
    assert await conn.fetchval("SELECT cause FROM device_state WHERE mn = $1", MN) == "gateway_restarted"
    assert [(e.mn, e.old, e.cause) for e in events] == [(MN, DeviceState.ONLINE, "gateway_restarted")]


async def test_a_device_moved_to_another_replica_stays_online_and_a_lost_replicas_devices_go_offline(
    gateways: list[Running], pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    a = await start(gateways, pg_dsn, schema, gateway_id="replica-a", device_state={"lease_s": 2})
    b = await start(gateways, pg_dsn, schema, gateway_id="replica-b", device_state={"lease_s": 2})
    older = await connect(a)
    await older.send(rtd(0))
    assert (await older.reply()).packet.cn == "9014"
    other = await connect(a)
    await other.send(rtd(0, mn="OTHER"))
    assert (await other.reply()).packet.cn == "9014"
    await state_becomes(conn, "online")
    since = await conn.fetchval("SELECT since FROM device_state WHERE mn = $1", MN)

    newer = await connect(b)
    await newer.send(rtd(1))
    assert (await newer.reply()).packet.cn == "9014"
    assert await older.closed_by_gateway(timeout_s=5)
    await eventually(lambda: _is(conn, "SELECT gateway_id FROM device_state WHERE mn = $1", "replica-b"))
    await asyncio.sleep(1.2)  # replica-a's last flush has passed: it must not write the row back
    row = await conn.fetchrow("SELECT state, since, gateway_id FROM device_state WHERE mn = $1", MN)
    assert (row["state"], row["since"], row["gateway_id"]) == ("online", since, "replica-b")
    assert await conn.fetchval("SELECT count(*) FROM device_events WHERE mn = $1", MN) == 1

    # replica-a dies without a word (its tasks stop, its rows stay): replica-b takes its devices over.
    await a.gateway.supervisor.stop()
    await state_becomes(conn, "offline", mn="OTHER", timeout_s=8)
    event = await conn.fetchrow(
        "SELECT previous, cause, details FROM device_events WHERE mn = 'OTHER' ORDER BY id DESC"
    )
    assert (event["previous"], event["cause"], json.loads(event["details"])) == (
        "online",
        "gateway_lost",
        {"taken_over_by": "replica-b"},
    )
    assert await stored_state(conn) == "online"

    # replica-a was only cut off: its next heartbeat finds its lease gone and reports OTHER again.
    await a.gateway.device_tracker.heartbeat()
    await a.gateway.device_tracker.flush()
    row = await conn.fetchrow("SELECT state, cause, gateway_id FROM device_state WHERE mn = 'OTHER'")
    assert tuple(row) == ("online", "gateway_resumed", "replica-a")
    for das in (older, other, newer):
        await das.close()


async def _is(conn: asyncpg.Connection, query: str, expected: object) -> bool:
    return await conn.fetchval(query, MN) == expected


# -- the tracker on its own -------------------------------------------------------------------------

T1 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
async def proxied(proxy: TcpProxy, pg_dsn: str, schema: str) -> AsyncIterator[Database]:
    database = Database(proxy.dsn_via(pg_dsn), schema=schema, min_size=1, max_size=2, command_timeout_s=2)
    await database.connect()
    yield database
    proxy.restore()
    await database.close()


def tracker_on(db: Database, gateway_id: str = "gw-a") -> DeviceTracker:
    return DeviceTracker(DeviceStateStore(db), DeviceStateSettings(), gateway_id, Metrics())


async def test_transitions_wait_through_an_outage_and_are_stored_in_order_after_it(
    proxied: Database, proxy: TcpProxy, conn: asyncpg.Connection
) -> None:
    tracker = tracker_on(proxied)
    tracker.bound(MN, 1, "10.0.0.1:5000", T1)
    await tracker.flush()  # its (missing) row is read, then the device is followed
    proxy.cut()
    tracker.stored(StoredData(MN, "2051", T1, T1 + timedelta(seconds=2), False, False))
    tracker.released(MN, 1, "peer_error", T1 + timedelta(seconds=5))
    with pytest.raises(OUTAGE_ERRORS):
        await tracker.flush()
    proxy.restore()
    await tracker.flush()
    events = await conn.fetch("SELECT state, previous, cause, at FROM device_events ORDER BY id")
    assert [tuple(e) for e in events] == [
        ("online", None, "connected", T1),
        ("offline", "online", "peer_error", T1 + timedelta(seconds=5)),
    ]
    row = await conn.fetchrow("SELECT state, cause, gateway_id, connection_id, last_data FROM device_state")
    assert (row["state"], row["cause"], row["gateway_id"], row["connection_id"]) == (
        "offline",
        "peer_error",
        "gw-a",
        None,
    )
    assert MN not in tracker.states  # offline and stored: no longer followed


async def test_a_device_bound_here_is_followed_from_the_row_another_replica_wrote(
    proxied: Database, conn: asyncpg.Connection
) -> None:
    other = tracker_on(proxied, "gw-b")
    other.bound(MN, 7, "10.0.0.1:5000", T1)
    other.stored(StoredData(MN, "2061", T1, T1 + timedelta(seconds=1), False, False))
    await other.flush()
    await other.flush()

    here = tracker_on(proxied, "gw-a")
    later = T1 + timedelta(minutes=5)
    here.bound(MN, 9, "10.0.0.2:5000", later)
    here.stored(StoredData(MN, "2051", later, later, False, False))
    assert MN not in here.states  # its signals wait for its row
    await here.flush()
    row = await conn.fetchrow("SELECT state, since, gateway_id, connection_id, bound_at FROM device_state")
    assert tuple(row) == ("online", T1, "gw-a", 9, later)  # moved: since kept, no new event
    assert await conn.fetchval("SELECT count(*) FROM device_events") == 1
    snapshot = here.states.snapshot(MN)
    assert snapshot is not None and set(snapshot.series) == {"2051", "2061"}  # last data carried over

    other.stored(StoredData(MN, "2061", T1 + timedelta(hours=1), later, False, False))  # a late packet
    await other.flush(with_data=True)  # gw-b's older binding cannot write the row back
    assert await conn.fetchval("SELECT gateway_id FROM device_state") == "gw-a"

    # New data alone is stored every last_data_interval_s (10 s by default), not every flush.
    here.stored(StoredData(MN, "2051", later + timedelta(minutes=1), later, False, False))
    await here.flush()
    assert (
        json.loads(await conn.fetchval("SELECT last_data FROM device_state"))["2051"]["data_time"] == later.isoformat()
    )
    await here.flush(with_data=True)
    stored = json.loads(await conn.fetchval("SELECT last_data FROM device_state"))
    assert stored["2051"]["data_time"] == (later + timedelta(minutes=1)).isoformat()

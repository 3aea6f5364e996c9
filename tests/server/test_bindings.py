"""server/bindings.py: an MN moves to a newer connection (here or on another replica), the older
one retires after sending its acks; a wrong PW never takes a device's binding."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from hj212gw.cli.serve import Running
from hj212gw.storage.db import Database
from tests.conftest import Dial, StartGateway
from tests.integration.das import MN, data_packet
from tests.integration.serving import connect, minute, sample, start

pytestmark = pytest.mark.integration


async def test_a_replaced_connection_still_gets_the_acks_of_what_it_already_sent(
    gateways: list[Running], pg_dsn: str, schema: str
) -> None:
    # A long linger keeps the older connection's packet uncommitted when the newer one binds.
    running = await start(gateways, pg_dsn, schema, writer={"linger_ms": 400})
    older = await connect(running)
    newer = await connect(running)
    await older.send(data_packet("20240315101000001"))
    await asyncio.sleep(0.05)
    await newer.send(data_packet("20240315101000002", data_time="20240315100100"))
    assert (await older.reply(timeout_s=5)).packet.qn == "20240315101000001"
    assert (await newer.reply(timeout_s=5)).packet.qn == "20240315101000002"
    assert await older.closed_by_gateway()
    assert running.gateway.online()[MN].connection_id == running.gateway.bindings.by_mn[MN].connection_id
    await older.close()
    await newer.close()


async def test_a_newer_connection_on_another_replica_retires_the_older_one(
    gateways: list[Running], pg_dsn: str, schema: str
) -> None:
    first = await start(gateways, pg_dsn, schema, gateway_id="replica-a")
    second = await start(gateways, pg_dsn, schema, gateway_id="replica-b")
    older = await connect(first)
    await older.send(data_packet("20240315101000001"))
    assert (await older.reply(timeout_s=5)).packet.cn == "9014"
    await asyncio.sleep(1.5)  # replica-a's own announcement has gone out: it must not retire itself
    assert not await older.closed_by_gateway(timeout_s=0.2)
    newer = await connect(second)
    await newer.send(data_packet("20240315101000002", data_time="20240315100100"))
    assert (await newer.reply(timeout_s=5)).packet.cn == "9014"
    with capture_logs() as logs:
        assert await older.closed_by_gateway(timeout_s=5)  # announced within a second, then retired
    (replaced,) = [e for e in logs if e["event"] == "das_replaced"]
    assert replaced["by"] == "gateway replica-b"
    assert MN not in first.gateway.bindings.by_mn and MN in second.gateway.bindings.by_mn
    assert not await newer.closed_by_gateway(timeout_s=0.2)
    await older.close()
    await newer.close()


async def test_a_newer_connection_for_the_same_mn_closes_the_older_one(start_gateway: StartGateway, dial: Dial) -> None:
    running = await start_gateway()
    older = await dial(running)
    await older.send(data_packet("20240315101000001"))
    assert (await older.reply()).packet.qn == "20240315101000001"

    newer = await dial(running)
    await newer.send(data_packet("20240315101000002", data_time=minute(1)))

    assert (await newer.reply()).packet.qn == "20240315101000002"
    assert await older.closed_by_gateway()
    await newer.send(data_packet("20240315101000003", data_time=minute(2)))
    assert (await newer.reply()).packet.qn == "20240315101000003"
    assert sample(running, "hj212gw_connections_closed_total", reason="replaced_by_newer_connection") == 1
    assert set(running.gateway.online()) == {MN}


async def test_a_packet_with_a_wrong_pw_does_not_replace_the_devices_live_connection(
    start_gateway: StartGateway, dial: Dial, db: Database
) -> None:
    await db.pool.execute("INSERT INTO devices (mn, pw) VALUES ($1, $2)", MN, "654321")
    running = await start_gateway()
    device = await dial(running)
    await device.send(data_packet("20240315101000001", pw="654321"))
    assert (await device.reply()).packet.qn == "20240315101000001"

    impostor = await dial(running)
    await impostor.send(data_packet("20240315101000002", pw="000000", data_time=minute(1)))
    assert (await impostor.reply()).packet.cp == "QnRtn=3"
    assert await impostor.closed_by_gateway()

    await device.send(data_packet("20240315101000003", pw="654321", data_time=minute(2)))
    assert (await device.reply()).packet.qn == "20240315101000003"
    assert sample(running, "hj212gw_connections_closed_total", reason="replaced_by_newer_connection") == 0
    assert running.gateway.online()[MN].connection_id == running.gateway.bindings.by_mn[MN].connection_id

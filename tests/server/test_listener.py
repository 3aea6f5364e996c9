"""server/listener.py policies that span connections, and secrets in logs: quarantine, graceful replacement
of a connection by a newer one for the same MN, and the PW never reaching a log line."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import cast

import asyncpg
import pytest
from structlog.testing import capture_logs

from hj212gw.cli import serve
from hj212gw.cli.serve import Running
from hj212gw.protocol.framing import encode_frame
from hj212gw.server.connection import DasConnection
from hj212gw.storage.rows import DeviceSeen
from tests.integration.das import MN, PW, DasClient, data_packet, settings_for
from tests.integration.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def gateways(pg_dsn: str, schema: str) -> AsyncIterator[list[Running]]:
    started: list[Running] = []
    yield started
    for running in started:
        await running.stop()


async def start(started: list[Running], pg_dsn: str, schema: str, **overrides: object) -> Running:
    running = await serve.start(settings_for(pg_dsn, schema, **overrides))
    started.append(running)
    return running


async def connect(running: Running) -> DasClient:
    assert running.gateway.port is not None
    return await DasClient.connect(running.gateway.port)


async def test_quarantine_registers_the_device_archives_and_acks_but_stores_no_data(
    gateways: list[Running], pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    running = await start(gateways, pg_dsn, schema, devices={"unknown_mn": "quarantine"})
    das = await connect(running)
    await das.send(data_packet("20240315101000001"))
    reply = await das.reply()
    assert (reply.packet.cn, reply.packet.qn) == ("9014", "20240315101000001")  # the raw frame is stored

    async def registered() -> bool:  # sightings are written within about a second, not with the batch
        return await conn.fetchval("SELECT status FROM devices WHERE mn = $1", MN) == "quarantined"

    await eventually(registered)
    assert await conn.fetchval("SELECT count(*) FROM raw_frames WHERE mn = $1 AND verdict = 'ok'", MN) == 1
    assert await conn.fetchval("SELECT count(*) FROM data") == 0
    await das.close()
    # After the registry refresh the device stays quarantined: its status is not overwritten.
    await running.gateway.registry.refresh(running.db)
    assert running.gateway.registry.admit(MN, PW).action == "archive"  # with its pinned PW


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


async def test_a_connection_refreshes_its_device_sighting_at_most_every_ten_seconds(
    gateways: list[Running], pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    running = await start(gateways, pg_dsn, schema)

    async def last_seen() -> datetime | None:
        return await conn.fetchval("SELECT last_seen FROM devices WHERE mn = $1", MN)  # type: ignore[no-any-return]

    das = await connect(running)
    await das.send(data_packet("20240315101000001"))
    assert (await das.reply()).packet.cn == "9014"

    async def sighted() -> bool:  # written by the housekeeping task, about once a second
        return await last_seen() is not None

    await eventually(sighted)
    first = await last_seen()
    await das.send(data_packet("20240315101000002", data_time="20240315100100"))
    assert (await das.reply()).packet.cn == "9014"
    await asyncio.sleep(1.5)  # a housekeeping round later: no new sighting from the same connection
    assert await last_seen() == first
    assert await conn.fetchval("SELECT count(*) FROM data WHERE mn = $1", MN) == 2  # both stored
    again = await connect(running)  # a new connection writes a sighting with its first packet
    await again.send(data_packet("20240315101000003", data_time="20240315100200"))
    assert (await again.reply()).packet.cn == "9014"

    async def moved_on() -> bool:
        seen = await last_seen()
        return seen is not None and first is not None and seen > first

    await eventually(moved_on)
    await das.close()
    await again.close()


async def test_the_access_password_never_reaches_a_log_line(gateways: list[Running], pg_dsn: str, schema: str) -> None:
    running = await start(gateways, pg_dsn, schema)
    das = await connect(running)
    bad_crc = encode_frame(b"QN=20240315101000001;ST=32;CN=2051;PW=S3cr3t;MN=M1;Flag=5;CP=&&DataTime=20240315100000&&")
    bad_crc = bad_crc[:-6] + b"0000\r\n"
    with capture_logs() as logs:
        await das.send(bad_crc)
        assert await das.nothing_within(0.3)
    rejected = [entry for entry in logs if entry["event"] == "frame_rejected"]
    assert rejected and "PW=***" in rejected[0]["raw"]
    assert all("S3cr3t" not in repr(entry) for entry in logs)
    await das.close()


async def test_a_value_postgresql_refuses_in_a_sighting_or_the_connection_log_stops_nothing_else(
    gateways: list[Running], pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    # PostgreSQL text cannot hold NUL bytes. The parser rejects an MN with one (and removes them
    # from other values), so none comes off the wire; a sighting and a connection-log row that
    # PostgreSQL refuses anyway are injected below. Each is dropped with a WARNING, and the
    # housekeeping that writes them goes on writing everybody else's. Without authentication, so
    # that no first-use pin is involved (tests/hostile/test_auth.py).
    running = await start(gateways, pg_dsn, schema, devices={"auth": "off"})
    with capture_logs() as logs:
        odd = await connect(running)
        await odd.send(data_packet("20240315101000001", mn="BAD\x00MN"))
        await odd.nothing_within(0.3)  # rejected by the parser: no ack
        await odd.close()
        running.gateway.side_writes.record_sighting(DeviceSeen("BAD\x00MN", 1, None, "127.0.0.1:1", datetime.now(UTC)))
        gone = SimpleNamespace(connection_id=10**9, mn="BAD\x00MN", frames_ok=0, frames_rejected=1)
        running.gateway.record_close(cast(DasConnection, gone), "peer_closed")
        await asyncio.sleep(1.5)  # a housekeeping round meets the refused rows
        das = await connect(running)
        await das.send(data_packet("20240315101000002"))
        assert (await das.reply()).packet.cn == "9014"
        await das.close()

        async def written() -> bool:
            seen = await conn.fetchval("SELECT count(*) FROM devices WHERE mn = $1", MN)
            closed = await conn.fetchval("SELECT count(*) FROM connections WHERE mn = $1", MN)
            return bool(seen and closed)

        await eventually(written, timeout_s=10.0)
    assert [e["reason"] for e in logs if e["event"] == "frame_rejected"] == ["bad_field_value"]
    refused = {e["event"] for e in logs if e["event"].endswith("_rejected_by_database")}
    assert {"sighting_rejected_by_database", "connection_log_rejected_by_database"} <= refused

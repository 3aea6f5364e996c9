"""ingest/side_writes.py: sightings and the connection log, written by housekeeping apart from the
batches acks wait for; a row PostgreSQL refuses is dropped alone."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import cast

import asyncpg
import pytest
from structlog.testing import capture_logs

from hj212gw.cli.serve import Running
from hj212gw.server.connection import DasConnection
from hj212gw.storage.rows import DeviceSeen
from tests.integration.das import MN, data_packet
from tests.integration.serving import connect, start
from tests.integration.waiting import eventually

pytestmark = pytest.mark.integration


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

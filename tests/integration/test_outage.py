"""The gateway during a PostgreSQL outage: no acks while down, not ready, nothing acked is lost.

The gateway reaches PostgreSQL through a TCP proxy that the test cuts and restores; the DAS is
a plain asyncio client, and what is stored is checked on a direct connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import aiohttp
import asyncpg
import pytest
from structlog.testing import capture_logs

from hj212gw.api import bound_port
from hj212gw.cli import serve
from hj212gw.cli.serve import Running
from hj212gw.storage.db import OUTAGE_ERRORS
from tests.integration.das import MN, PW, DasClient, data_packet, settings_for
from tests.integration.proxy import TcpProxy
from tests.integration.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def running(pg_dsn: str, schema: str, proxy: TcpProxy) -> AsyncIterator[Running]:
    """A gateway whose every database connection goes through the proxy."""
    started = await serve.start(settings_for(proxy.dsn_via(pg_dsn), schema))
    yield started
    proxy.restore()
    await started.stop()


@pytest.fixture
async def das(running: Running) -> AsyncIterator[DasClient]:
    assert running.gateway.port is not None
    client = await DasClient.connect(running.gateway.port)
    yield client
    await client.close()


async def register(running: Running) -> None:
    """Give the device its PW before the outage, as an operator would: a new MN's first-use pin
    needs PostgreSQL (tests/hostile/test_auth.py), a registered device only the write queue."""
    await running.db.pool.execute("INSERT INTO devices (mn, pw, pw_source) VALUES ($1, $2, 'operator')", MN, PW)
    await running.gateway.registry.refresh(running.db)


def packet(n: int) -> bytes:
    return data_packet(f"20240315101{n:06d}", data_time=f"2024031510{n:02d}00", values={"w01018": f"{n}.0"})


async def until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.05)


async def readyz(running: Running) -> int:
    url = f"http://127.0.0.1:{bound_port(running.http_runner)}/readyz"  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status


async def stored_qns(conn: asyncpg.Connection) -> list[str]:
    return [r["qn"] for r in await conn.fetch("SELECT qn FROM data ORDER BY qn")]


async def test_a_cut_holds_every_ack_and_after_restore_the_pending_ones_arrive(
    running: Running, das: DasClient, proxy: TcpProxy, conn: asyncpg.Connection
) -> None:
    gateway = running.gateway
    await das.send(packet(1))
    assert (await das.reply()).packet.qn == "20240315101000001"

    with capture_logs() as logs:
        proxy.cut()
        for n in range(2, 7):
            await das.send(packet(n))
        assert await das.nothing_within(1.5)
        await until(lambda: not gateway.ready())
        assert not gateway.writer.ready
        assert await readyz(running) == 503
        assert gateway.metrics.registry.get_sample_value("hj212gw_dependency_up", {"name": "postgresql"}) == 0
        assert await stored_qns(conn) == ["20240315101000001"]

        proxy.restore()
        acks = await das.replies(5, timeout_s=15.0)
        await until(gateway.ready)

    assert sorted(a.packet.qn for a in acks) == [f"20240315101{n:06d}" for n in range(2, 7)]
    assert await stored_qns(conn) == [f"20240315101{n:06d}" for n in range(1, 7)]
    assert await readyz(running) == 200
    outage = [(e["event"], e["log_level"]) for e in logs if e["event"] in ("database_down", "database_up")]
    assert outage == [("database_down", "warning"), ("database_up", "info")]


async def test_a_das_that_gives_up_during_the_outage_resends_and_is_stored_once(
    running: Running, das: DasClient, proxy: TcpProxy, conn: asyncpg.Connection
) -> None:
    proxy.cut()
    for n in range(1, 4):
        await das.send(packet(n))
    assert await das.nothing_within(1.0)
    await das.close()  # the DAS keeps the data and will send it again

    proxy.restore()
    assert running.gateway.port is not None
    again = await DasClient.connect(running.gateway.port)
    try:
        for n in range(1, 4):
            await again.send(packet(n))
        acks = await again.replies(3, timeout_s=15.0)
    finally:
        await again.close()

    assert [a.packet.qn for a in acks] == [f"20240315101{n:06d}" for n in range(1, 4)]
    rows = await conn.fetch("SELECT qn, avg, revisions FROM data ORDER BY qn")
    assert [tuple(r) for r in rows] == [(f"20240315101{n:06d}", float(n), 0) for n in range(1, 4)]


async def test_a_sighting_made_during_an_outage_is_written_after_it(
    running: Running, das: DasClient, proxy: TcpProxy, conn: asyncpg.Connection
) -> None:
    # The device's only sighting happens while PostgreSQL is unreachable: a flush then fails and
    # keeps it, and the housekeeping round after the restore writes it. Nothing else sights the
    # device afterwards, so the row can only come from the kept sighting.
    await register(running)
    proxy.cut()
    before = datetime.now(UTC)
    await das.send(packet(1))
    assert await das.nothing_within(0.5)
    with pytest.raises(OUTAGE_ERRORS):
        await running.gateway.side_writes.flush_sightings()
    await das.close()
    assert await conn.fetchval("SELECT last_seen FROM devices WHERE mn = $1", MN) is None
    proxy.restore()

    async def written() -> bool:
        seen = await conn.fetchval("SELECT last_seen FROM devices WHERE mn = $1", MN)
        return seen is not None and seen >= before

    await eventually(written, timeout_s=15.0)


async def test_acks_never_run_ahead_of_the_database_across_repeated_cuts(
    running: Running, das: DasClient, proxy: TcpProxy, conn: asyncpg.Connection
) -> None:
    acked: set[str] = set()

    async def read_acks() -> None:
        while len(acked) < 40:
            acked.add(str((await das.reply(timeout_s=20.0)).packet.qn))

    reader = asyncio.create_task(read_acks())
    for n in range(1, 41):
        await das.send(packet(n))
        if n % 10 == 5:
            proxy.cut()
            await asyncio.sleep(0.3)
            assert acked <= set(await stored_qns(conn))
            proxy.restore()
        await asyncio.sleep(0.02)
    await asyncio.wait_for(reader, 30)
    assert acked == set(await stored_qns(conn)) == {f"20240315101{n:06d}" for n in range(1, 41)}


async def test_a_full_write_queue_pauses_reading_until_the_database_is_back(
    pg_dsn: str, schema: str, proxy: TcpProxy, conn: asyncpg.Connection
) -> None:
    running = await serve.start(settings_for(proxy.dsn_via(pg_dsn), schema, writer={"max_pending_items": 3}))
    assert running.gateway.port is not None
    das = await DasClient.connect(running.gateway.port)
    paused = running.gateway.metrics.registry
    try:
        await register(running)
        proxy.cut()
        for n in range(1, 11):
            await das.send(packet(n))
            await asyncio.sleep(0.05)
        assert paused.get_sample_value("hj212gw_paused_connections") == 1
        assert running.gateway.writer.pending == 3  # the other 7 wait in the socket, not in memory
        assert await das.nothing_within(0.5)

        proxy.restore()
        acks = await das.replies(10, timeout_s=15.0)
        await until(lambda: paused.get_sample_value("hj212gw_paused_connections") == 0)
    finally:
        await das.close()
        await running.stop()
    assert sorted(a.packet.qn for a in acks) == [f"20240315101{n:06d}" for n in range(1, 11)]
    assert await stored_qns(conn) == [f"20240315101{n:06d}" for n in range(1, 11)]

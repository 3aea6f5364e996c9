"""Each connection's share of the write queue (issue #9, fairness): a connection flooding valid
data packets without waiting for their acks holds at most `connections.max_unconfirmed_items` in
the shared write queue; that socket alone stops being read until half of them commit, so the
other DAS units' acks are not pushed behind the flood, and nothing acked is lost.

Real gateway on port 0, real PostgreSQL (through the outage proxy where the queue must not
drain), real sockets.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta

import asyncpg
import pytest

from hj212gw.cli.serve import Running
from hj212gw.server.connection import DasConnection
from tests.conftest import Dial, StartGateway
from tests.integration.das import MN, DasClient, data_packet
from tests.integration.proxy import TcpProxy
from tests.integration.waiting import until

pytestmark = pytest.mark.integration

FLOOD_MN = "FLOOD0000000000000000001"
SHARE = 16
T0 = datetime(2024, 3, 15)


def packet(n: int, mn: str) -> bytes:
    """Data packet number `n` of `mn`: its own QN and DataTime (minute n), so each one is a row."""
    data_time = (T0 + timedelta(minutes=n)).strftime("%Y%m%d%H%M%S")
    return data_packet(f"20240315{n:09d}", mn=mn, data_time=data_time)


def sample(running: Running, name: str, **labels: str) -> float:
    return running.gateway.metrics.registry.get_sample_value(name, labels) or 0.0


def connection_of(running: Running, mn: str) -> DasConnection:
    return next(c for c in running.gateway.connections if c.session.mn == mn)


async def bind(*pairs: tuple[DasClient, str]) -> None:
    """One acked packet per MN: pinned and bound while PostgreSQL is there."""
    for das, mn in pairs:
        await das.send(packet(0, mn))
        assert (await das.reply()).packet.cn == "9014"


async def read_acks(das: DasClient, count: int) -> int:
    for _ in range(count):
        assert (await das.reply(timeout_s=30)).packet.cn == "9014"
    return count


async def stored(conn: asyncpg.Connection, mn: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM data WHERE mn = $1", mn))


async def test_a_flood_holds_only_its_share_of_the_queue_while_the_database_is_away(
    pg_dsn: str, proxy: TcpProxy, start_gateway: StartGateway, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start_gateway(database_url=proxy.dsn_via(pg_dsn), connections={"max_unconfirmed_items": SHARE})
    writer = running.gateway.writer
    flooder, normal = await dial(running), await dial(running)
    await bind((flooder, FLOOD_MN), (normal, MN))
    proxy.cut()
    try:
        await flooder.send(b"".join(packet(n, FLOOD_MN) for n in range(1, 401)))  # never waits for an ack
        await until(lambda: writer.pending == SHARE)
        await asyncio.sleep(0.3)  # time for more reads, if the socket were still read

        assert writer.pending == SHARE  # before: all 400, as fast as the gateway read them
        flooding = connection_of(running, FLOOD_MN)
        assert flooding.transport is not None and not flooding.transport.is_reading()
        assert sample(running, "hj212gw_queue_share_pauses_total", limit="items") == 1
        await normal.send(packet(1, MN))
        await until(lambda: writer.pending == SHARE + 1)  # the other DAS is still read
    finally:
        proxy.restore()

    assert await read_acks(flooder, 400) == 400  # the rest was parsed once its share had room
    assert (await normal.reply(timeout_s=30)).packet.cn == "9014"
    assert await stored(conn, FLOOD_MN) == 401
    assert await stored(conn, MN) == 2


async def test_a_normal_das_is_acked_promptly_while_another_connection_floods(
    start_gateway: StartGateway, dial: Dial, conn: asyncpg.Connection
) -> None:
    running = await start_gateway(connections={"max_unconfirmed_items": SHARE})
    flooder, normal = await dial(running), await dial(running)
    await bind((flooder, FLOOD_MN), (normal, MN))
    flooding = connection_of(running, FLOOD_MN)
    most = [0]

    async def watch_share() -> None:
        while True:
            most[0] = max(most[0], flooding._share.items)
            await asyncio.sleep(0)

    async def flood(total: int, chunk: int) -> None:
        for start in range(1, total + 1, chunk):
            await flooder.send(b"".join(packet(n, FLOOD_MN) for n in range(start, start + chunk)))

    watcher = asyncio.create_task(watch_share())
    acks = asyncio.create_task(read_acks(flooder, 3000))
    flooding_task = asyncio.create_task(flood(3000, 100))
    waits_s = []
    try:
        for n in range(1, 21):
            started = time.perf_counter()
            await normal.send(packet(n, MN))
            assert (await normal.reply()).packet.cn == "9014"
            waits_s.append(time.perf_counter() - started)
            await asyncio.sleep(0.02)
        assert not acks.done()  # the flood was still being worked through the whole time
        await flooding_task
        assert await acks == 3000
    finally:
        watcher.cancel()
        flooding_task.cancel()
        acks.cancel()

    assert max(waits_s) < 1.0  # a generous bound: what matters is that it is not seconds
    assert 0 < most[0] <= SHARE
    assert sample(running, "hj212gw_queue_share_pauses_total", limit="items") > 0
    assert await stored(conn, FLOOD_MN) == 3001  # every ack is a stored row
    assert await stored(conn, MN) == 21

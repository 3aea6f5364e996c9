"""Gaps through a real gateway (issue #12 item 2): skipped periods, resent data, a network cut,
a replayed day of old DataTimes and a restart, with rows checked in PostgreSQL."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from hj212gw.cli.serve import Running
from hj212gw.protocol.packets import encode_packet
from hj212gw.simulator.testing import SteppedDevice
from tests.conftest import Dial
from tests.integration.das import MN, DasClient, data_packet
from tests.integration.serving import start
from tests.integration.waiting import eventually

pytestmark = pytest.mark.integration

SHANGHAI = ZoneInfo("Asia/Shanghai")
DAY0 = datetime.now(SHANGHAI).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
NO_TAIL = {"flush_s": 0.05, "grace_hour_s": 30 * 86400.0, "grace_minute_s": 30 * 86400.0}


def hj_time(moment: datetime) -> str:
    return moment.astimezone(SHANGHAI).strftime("%Y%m%d%H%M%S")


def hours(day: datetime, *numbers: int) -> list[datetime]:
    return [day + timedelta(hours=n) for n in numbers]


async def send_hours(client: DasClient, moments: list[datetime], *, rf: bool = False, qn: int = 0) -> None:
    for n, moment in enumerate(moments):
        await client.send(data_packet(f"2024031510000{qn + n:04d}", cn="2061", data_time=hj_time(moment), rf=rf))
        assert (await client.reply()).packet.cn == "9014"


async def gaps_of(conn: asyncpg.Connection, cn: str = "2061") -> list[tuple[object, ...]]:
    rows = await conn.fetch(
        "SELECT id, start_time, end_time, periods, status FROM gaps WHERE cn = $1 ORDER BY start_time, id", cn
    )
    return [tuple(r.values()) for r in rows]


async def settled(conn: asyncpg.Connection, expected: list[tuple[object, ...]], cn: str = "2061") -> None:
    """Wait until the gaps of `cn`, without their ids, are `expected` (the tracker writes in the background)."""

    async def check() -> bool:
        return [row[1:] for row in await gaps_of(conn, cn)] == expected

    try:
        await eventually(check, timeout_s=10)
    except TimeoutError:
        assert [row[1:] for row in await gaps_of(conn, cn)] == expected


async def test_skipped_hours_open_a_gap_that_resent_data_closes_without_duplicate_rows(
    gateways: list[Running], dial: Dial, pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    running = await start(gateways, pg_dsn, schema, gaps=NO_TAIL)
    client = await dial(running)
    await send_hours(client, hours(DAY0, 0, 1, 4, 5))
    await settled(conn, [(DAY0 + timedelta(hours=2), DAY0 + timedelta(hours=3), 2, "open")])
    [(gap_id, *_)] = await gaps_of(conn)
    await send_hours(client, hours(DAY0, 3, 2, 3), rf=True, qn=10)  # resent (RF=1), one of them twice
    await settled(conn, [(DAY0 + timedelta(hours=2), DAY0 + timedelta(hours=2), 0, "filled")])
    assert (await gaps_of(conn))[0][0] == gap_id
    counts = await conn.fetch("SELECT data_time, count(*) AS n FROM data WHERE mn = $1 GROUP BY data_time", MN)
    assert len(counts) == 6 and {r["n"] for r in counts} == {1}


async def test_a_replayed_day_of_old_data_yields_that_days_gaps(
    gateways: list[Running], dial: Dial, pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    running = await start(gateways, pg_dsn, schema, gaps=NO_TAIL)
    client = await dial(running)
    old_day = DAY0 - timedelta(days=10)  # beyond the 7-day horizon: reported, as dormant
    await send_hours(client, hours(DAY0, 0, 1, 2))  # today's data first, then the capture of an old day
    await send_hours(client, hours(old_day, *(n for n in range(24) if n not in (5, 6, 7, 12))), qn=100)
    await settled(
        conn,
        [
            (old_day + timedelta(hours=5), old_day + timedelta(hours=7), 3, "dormant"),
            (old_day + timedelta(hours=12), old_day + timedelta(hours=12), 1, "dormant"),
            (old_day + timedelta(hours=24), DAY0 - timedelta(hours=1), 9 * 24, "open"),  # straddles the horizon
        ],
    )


async def test_gaps_survive_a_gateway_restart(
    gateways: list[Running], dial: Dial, pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    running = await start(gateways, pg_dsn, schema, gaps=NO_TAIL)
    client = await dial(running)
    await send_hours(client, hours(DAY0, 0, 3))
    await settled(conn, [(DAY0 + timedelta(hours=1), DAY0 + timedelta(hours=2), 2, "open")])
    await client.close()
    await running.stop()
    again = await start(gateways, pg_dsn, schema, gaps=NO_TAIL)
    client = await dial(again)
    await send_hours(client, hours(DAY0, 1), qn=20)  # the gap shrinks in the row it had before the restart
    await settled(conn, [(DAY0 + timedelta(hours=2), DAY0 + timedelta(hours=2), 1, "open")])
    await send_hours(client, hours(DAY0, 2), qn=30)
    await settled(conn, [(DAY0 + timedelta(hours=2), DAY0 + timedelta(hours=2), 0, "filled")])
    assert await conn.fetchval("SELECT count(*) FROM gaps") == 1


def data_time_of(cp: str) -> datetime:
    match = re.search(r"DataTime=(\d{14})", cp)
    assert match is not None
    return datetime.strptime(match[1], "%Y%m%d%H%M%S").replace(tzinfo=SHANGHAI)


async def relay(das: SteppedDevice, client: DasClient, packets: list) -> None:  # type: ignore[type-arg]
    """Send what the simulated DAS wrote, answer it with the gateway's replies, until it is quiet."""
    queue = list(packets)
    while queue:
        packet = queue.pop(0)
        await client.send(encode_packet(packet))
        if packet.ack_requested:
            queue += das.feed((await client.reply()).raw)


async def test_a_network_cut_grows_the_tail_until_the_reupload_fills_it(
    gateways: list[Running], dial: Dial, pg_dsn: str, schema: str, conn: asyncpg.Connection
) -> None:
    running = await start(gateways, pg_dsn, schema, gaps={"flush_s": 0.05})
    das = SteppedDevice(version="2025", start=DAY0, uploads=frozenset({"2061"}), mn=MN)
    running.gateway.gaps.clock = lambda: das.clock.sim_now()  # the tracker's now is the simulation's
    client = await dial(running)
    await relay(das, client, das.connect())
    for _ in range(3):  # hours 0-2 arrive live, each as it ends
        await relay(das, client, das.advance(3600))
    await relay(das, client, das.advance(60))
    das.disconnect()
    await client.close()
    das.advance(4 * 3600)  # the link is cut from 03:01 to 07:01; the DAS keeps hours 3-6
    await settled(conn, [(DAY0 + timedelta(hours=3), DAY0 + timedelta(hours=5), 3, "open")])  # hour 6: in its grace
    client = await dial(running)
    sent = das.connect()
    await relay(das, client, sent)
    assert sorted(data_time_of(p.cp).hour for p in sent if p.cn == "2061") == [3, 4, 5, 6]
    await settled(conn, [(DAY0 + timedelta(hours=5), DAY0 + timedelta(hours=5), 0, "filled")])
